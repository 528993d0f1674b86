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
from math import ceil
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, load_separator
from .config import SeparateConfig, resolve_device

log = logging.getLogger(__name__)

INFER_BATCH = 4                # windows per forward pass


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
