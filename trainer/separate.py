"""``trainer separate``: split an audio file into one WAV per stem with a trained checkpoint.

The file is read with soundfile (WAV, FLAC, OGG, ...), downmixed to mono and resampled to the
model's rate when needed (a notice is logged), then cut into windows of ``window`` target
samples. Each window is fed with the model's ``context`` real samples on each side (zeros only
beyond the ends of the file) and the model returns exactly its target region. For exact models
(valid convolutions) the windows concatenate with no overlap, gap or seam; padded models (STFT,
LSTM, Demucs) get overlapping windows cross-faded (overlap-add). ``separate_waveform`` is the one
inference function; eval uses it too. The stems are resampled back to the file's rate and
written as ``OUT/<stem>.wav`` (float WAV, the input's length).
"""
from __future__ import annotations

import logging
from math import ceil
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, load_separator
from .config import SeparateConfig, resolve_device
from .gain import GainStaging, apply_separator

log = logging.getLogger(__name__)

INFER_BATCH = 4                # windows per forward pass
OVERLAP = 0.25                 # overlap-add share of a window (padded models), as Demucs' apply_model


def resample(x: np.ndarray, src: int, dst: int, length: int | None = None) -> np.ndarray:
    """Band-limited resampling of ``x`` (time,) from ``src`` Hz to ``dst`` Hz -> (length,) float64.

    soxr at its very-high quality (linear phase, passband to 0.91 of the lower Nyquist frequency,
    about -175 dB stopband); its delay is compensated, so the output is time-aligned with the
    input. ``length`` defaults to ``ceil(len(x) * dst / src)``; the output is trimmed or
    zero-padded to it.
    """
    if src <= 0 or dst <= 0:
        raise ValueError(f"sample rates must be positive, got {src} -> {dst}")
    n_out = ceil(len(x) * dst / src) if length is None else int(length)
    if n_out <= 0:
        return np.zeros(0)
    y = soxr.resample(np.asarray(x, np.float64), src, dst, quality="VHQ")
    return np.pad(y[:n_out], (0, max(0, n_out - len(y))))


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


def inference_window(model: nn.Module, window: int) -> int:
    """Target samples per model call: ``window`` rounded down to a multiple of the model's
    ``stride`` (seamless windows for exact models) and capped by its ``max_input``."""
    ctx, stride = int(model.context), int(getattr(model, "stride", 1))
    limit = getattr(model, "max_input", None)
    if limit is not None:
        window = min(window, limit - 2 * ctx)
    return max(stride, window - window % stride)


def separate_waveform(model: nn.Module, mono: np.ndarray, window: int, device: torch.device,
                      batch: int = INFER_BATCH, gain: GainStaging = GainStaging(mode="none")) -> np.ndarray:
    """Separate a whole signal: mono (time,) -> stems (stems, time) float32.

    Windows of ``win = min(inference_window(model, window), time)`` target samples tile the
    signal; each is fed ``model.context`` samples of real signal on both sides (zeros only
    beyond the signal's ends); ``model(x, target)`` must map (batch, 1, target + 2*context) ->
    (batch, stems, target). Exact models (``model.exact``, the default) get disjoint windows
    that concatenate with no seam. Padded models get windows overlapping by ``OVERLAP`` of
    their length, cross-faded with linear ramps (overlap-add, weights normalised to sum 1).
    Each window goes through ``gain.apply_separator`` with the checkpoint's ``gain`` (staged by
    its own level, scaled back).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 target sample, got {window}")
    n, ctx = len(mono), int(model.context)
    win = min(inference_window(model, window), n)
    overlap = 0 if getattr(model, "exact", True) else int(win * OVERLAP)
    hop = win - overlap
    count = max(1, ceil((n - overlap) / hop))
    total = (count - 1) * hop + win                         # >= n
    padded = torch.zeros(ctx + total + ctx, dtype=torch.float32)
    padded[ctx:ctx + n] = torch.from_numpy(np.asarray(mono, np.float32))
    frames = padded.unfold(0, win + 2 * ctx, hop)           # (count, win + 2*ctx), stride hop
    weight = torch.ones(win)
    if overlap:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        weight[:overlap], weight[-overlap:] = ramp, ramp.flip(0)
    out, norm = None, torch.zeros(total)
    with torch.no_grad():
        for a in range(0, count, batch):
            x = frames[a:a + batch].unsqueeze(1).to(device)  # (b, 1, win + 2*ctx)
            est = apply_separator(model, x, win, gain).float().cpu()   # (b, stems, win)
            if out is None:
                out = torch.zeros(est.shape[1], total)
            for k, item in enumerate(est, start=a):
                out[:, k * hop:k * hop + win] += item * weight
                norm[k * hop:k * hop + win] += weight
    return (out / norm)[:, :n].numpy()


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
    stems = separate_waveform(model, signal, cfg.window, device, gain=ckpt.gain)
    if rate != model_rate:
        stems = np.stack([resample(s, model_rate, rate, length=len(mono)) for s in stems])
    assert stems.shape == (len(names), len(mono)), stems.shape
    return write_stems(Path(cfg.out), stems, names, rate)
