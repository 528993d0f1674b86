"""Spectrogram and waveform pictures on one shared dB scale (dump, and the trainer's listening report).

Every picture of a group (a chunk's stems, an excerpt's references and estimates) uses the same
colour range: the loudest bin of the group is ``top``, ``top - range_db`` is black. A silent
stem is therefore drawn black, not as an auto-scaled noise floor; quiet stems look quiet.
Levels are dB relative to a full-scale sine (a 0 dBFS sine peaks at about 0 dB).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

N_FFT, HOP = 1024, 256
RANGE_DB = 80.0
FLOOR_DB = -200.0


def spectrogram_db(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Magnitude STFT in dB (Hann window, frames from sample 0, the last one zero-padded):
    x (time,) -> (n_fft // 2 + 1, frames) float32, exact silence at ``FLOOR_DB``."""
    x = np.asarray(x, np.float64)
    frames = max(1, -(-max(len(x) - n_fft, 0) // hop) + 1)
    padded = np.zeros((frames - 1) * hop + n_fft)
    padded[:len(x)] = x
    window = np.hanning(n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    mag = np.abs(np.fft.rfft(padded[idx] * window, axis=1)).T / (window.sum() / 2)
    return (20 * np.log10(np.maximum(mag, 10 ** (FLOOR_DB / 20)))).astype(np.float32)


def shared_range(signals: list[np.ndarray], range_db: float = RANGE_DB) -> tuple[float, float]:
    """(vmin, vmax) of a group: vmax the loudest bin over ``signals``, vmin ``range_db`` below
    (a group of silent signals gets (FLOOR_DB, FLOOR_DB + range_db))."""
    top = max((float(spectrogram_db(s).max()) for s in signals if len(s)), default=FLOOR_DB)
    return top - range_db, top


def draw_spectrogram(ax, x: np.ndarray, sample_rate: int, vrange: tuple[float, float],
                     max_hz: float | None = None) -> None:
    """Draw ``x``'s spectrogram on ``ax`` with the colour range ``vrange`` (dB)."""
    db = spectrogram_db(x)
    seconds = len(x) / sample_rate
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=vrange[0], vmax=vrange[1],
              extent=(0, seconds, 0, sample_rate / 2), interpolation="nearest")
    ax.set_ylim(0, min(max_hz or sample_rate / 2, sample_rate / 2))


def draw_waveform(ax, x: np.ndarray, sample_rate: int, peak: float, columns: int = 800) -> None:
    """Min/max envelope of ``x`` in ``columns`` bins, y axis +-``peak`` (shared by a group)."""
    x = np.asarray(x, np.float32)
    n = max(1, len(x) // columns)
    usable = x[:len(x) // n * n].reshape(-1, n)
    t = (np.arange(len(usable)) + 0.5) * n / sample_rate
    ax.fill_between(t, usable.min(1), usable.max(1), color="#2a6f97", lw=0)
    ax.set_xlim(0, len(x) / sample_rate)
    ax.set_ylim(-peak, peak)


def save_picture(path, x: np.ndarray, sample_rate: int, vrange: tuple[float, float], peak: float,
                 max_hz: float | None = 8000, size: tuple[float, float] = (3.6, 1.9), dpi: int = 70) -> None:
    """One PNG: waveform (top) over spectrogram (bottom), both on a group's shared scales."""
    fig, (wave_ax, spec_ax) = plt.subplots(2, 1, figsize=size, sharex=True,
                                           gridspec_kw={"height_ratios": (1, 2), "hspace": 0.05})
    draw_waveform(wave_ax, x, sample_rate, peak)
    draw_spectrogram(spec_ax, x, sample_rate, vrange, max_hz)
    for ax in (wave_ax, spec_ax):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
