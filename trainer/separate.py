"""``trainer separate``: split an audio file into one WAV per stem with a trained checkpoint.

The file is read with soundfile (WAV, FLAC, OGG, ...), downmixed to mono and resampled to the
model's rate when needed (a notice is logged), then cut into windows of ``window`` target
samples. Each window is fed with the model's ``context`` real samples on each side (zeros only
beyond the ends of the file) and the model returns exactly its target region, so the windows
concatenate with no overlap, gap or seam. The stems are resampled back to the file's rate and
written as ``OUT/<stem>.wav`` (float WAV, the input's length).
"""
from __future__ import annotations

import logging
from math import ceil, gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, load_separator
from .config import SeparateConfig, resolve_device

log = logging.getLogger(__name__)

RESAMPLE_ZERO_CROSSINGS = 32   # sinc half-width, in zero crossings of the lower-rate side
RESAMPLE_ROLLOFF = 0.945       # cutoff as a fraction of the lower Nyquist frequency
RESAMPLE_BETA = 9.0            # Kaiser window shape (about -90 dB stopband)
INFER_BATCH = 4                # windows per forward pass


def resample(x: np.ndarray, src: int, dst: int, length: int | None = None,
             block: int = 16384) -> np.ndarray:
    """Band-limited resampling of ``x`` (time,) from ``src`` Hz to ``dst`` Hz -> (length,) float64.

    Polyphase Kaiser-windowed sinc: with ``dst/src = up/down`` in lowest terms, output sample m
    sits at input time ``m*down/up`` and is a weighted sum of the ``2*w`` nearest input samples;
    the ``up`` distinct weight rows are tabulated once and each row is normalised to unit sum
    (DC gain exactly 1). The cutoff is ``RESAMPLE_ROLLOFF`` times the lower of the two Nyquist
    frequencies, so downsampling removes what would alias. Samples beyond the ends count as
    zero. ``length`` defaults to ``ceil(len(x) * dst / src)``.
    """
    if src <= 0 or dst <= 0:
        raise ValueError(f"sample rates must be positive, got {src} -> {dst}")
    g = gcd(src, dst)
    up, down = dst // g, src // g
    n_out = ceil(len(x) * up / down) if length is None else int(length)
    if n_out <= 0:
        return np.zeros(0)
    fc = min(1.0, up / down) * RESAMPLE_ROLLOFF            # cutoff in cycles per 2 input samples
    w = int(ceil(RESAMPLE_ZERO_CROSSINGS / fc))             # half-width in input samples
    taps = np.arange(-w + 1, w + 1)                         # (2w,) input offsets from floor(time)
    t = np.arange(up)[:, None] / up - taps[None, :]         # (up, 2w) distance to each tap
    window = np.i0(RESAMPLE_BETA * np.sqrt(np.clip(1.0 - (t / w) ** 2, 0.0, None))) / np.i0(RESAMPLE_BETA)
    table = fc * np.sinc(fc * t) * window
    table /= table.sum(axis=1, keepdims=True)
    last = ((n_out - 1) * down) // up                       # floor of the last output's input time
    padded = np.concatenate([np.zeros(w), np.asarray(x, np.float64),
                             np.zeros(w + max(0, last + 1 - len(x)))])
    out = np.empty(n_out)
    for a in range(0, n_out, block):
        m = np.arange(a, min(a + block, n_out))
        base, phase = np.divmod(m * down, up)
        gathered = padded[base[:, None] + taps[None, :] + w]   # (block, 2w)
        out[a:a + len(m)] = np.einsum("ij,ij->i", gathered, table[phase])
    return out


def stem_names(model: nn.Module, ckpt: LoadedCheckpoint) -> list[str]:
    """The checkpoint's stem names; ValueError when the model outputs a different count."""
    names = list(ckpt.spec.stems)
    if len(names) != model.config.stems:
        raise ValueError(f"{ckpt.path}: spec names {len(names)} stems, the model outputs {model.config.stems}")
    return names


def read_mono(path: Path) -> tuple[np.ndarray, int, int]:
    """Audio file -> (mono float64 (time,), sample rate, channel count); channels are averaged."""
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)   # (time, channels)
    except (RuntimeError, OSError) as exc:     # soundfile's LibsndfileError is a RuntimeError
        raise ValueError(f"cannot read {path} as audio (WAV, FLAC, OGG, ...): {exc}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path} holds no samples")
    return data.mean(axis=1), int(rate), data.shape[1]


def separate_waveform(model: nn.Module, mono: np.ndarray, window: int, device: torch.device,
                      batch: int = INFER_BATCH) -> np.ndarray:
    """Separate a whole signal: mono (time,) -> stems (stems, time) float32.

    Windows of ``min(window, time)`` target samples tile the signal (the last one runs past the
    end into zeros and is cropped); each is fed ``model.context`` samples of real signal on both
    sides, zeros only beyond the signal's ends. ``model(x, target)`` must map
    (batch, 1, target + 2*context) -> (batch, stems, target).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 target sample, got {window}")
    n, ctx = len(mono), int(model.context)
    win = min(window, n)
    count = ceil(n / win)
    padded = torch.zeros(ctx + count * win + ctx, dtype=torch.float32)
    padded[ctx:ctx + n] = torch.from_numpy(np.asarray(mono, np.float32))
    frames = padded.unfold(0, win + 2 * ctx, win)           # (count, win + 2*ctx), stride win
    outs = []
    with torch.no_grad():
        for a in range(0, count, batch):
            x = frames[a:a + batch].unsqueeze(1).to(device)  # (b, 1, win + 2*ctx)
            outs.append(model(x, win).float().cpu())         # (b, stems, win)
    est = torch.cat(outs)                                    # (count, stems, win)
    stems = est.permute(1, 0, 2).reshape(est.shape[1], count * win)[:, :n]
    return stems.numpy()


def write_stems(out: Path, stems: np.ndarray, names: list[str], rate: int) -> list[Path]:
    """Write ``stems`` (stems, time) as ``out/<name>.wav`` (32-bit float); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, wave in zip(names, stems):
        path = out / f"{name}.wav"
        sf.write(str(path), np.asarray(wave, np.float32), rate, subtype="FLOAT")
        paths.append(path)
    return paths


def run_separate(cfg: SeparateConfig) -> list[Path]:
    """Separate ``cfg.input`` with ``cfg.checkpoint``; one WAV per stem in ``cfg.out``, each the
    input's length at the input's rate. Returns the written paths."""
    device = resolve_device(cfg.device)
    model, ckpt = load_separator(cfg.checkpoint, device)
    names = stem_names(model, ckpt)
    mono, rate, channels = read_mono(cfg.input)
    model_rate = ckpt.spec.sample_rate
    if channels > 1:
        log.warning("%s: downmixing %d channels to mono", cfg.input, channels)
    if rate != model_rate:
        log.warning("%s: resampling %d Hz -> %d Hz for the model (and back for the stems)",
                    cfg.input, rate, model_rate)
        signal = resample(mono, rate, model_rate)
    else:
        signal = mono
    stems = separate_waveform(model, signal, cfg.window, device)
    if rate != model_rate:
        stems = np.stack([resample(s, model_rate, rate, length=len(mono)) for s in stems])
    assert stems.shape == (len(names), len(mono)), stems.shape
    return write_stems(Path(cfg.out), stems, names, rate)
