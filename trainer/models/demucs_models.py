"""HTDemucs and HDemucs (Défossez 2021, Rouard et al. 2023) from the ``demucs`` package, mono.

Both are hybrid models (a waveform U-Net and a spectrogram U-Net, joined at the bottom by a cross
transformer in HTDemucs) that normalise and pad their input themselves. Trained from the stream,
each chunk is one training segment of ``context + target + context`` samples; ask the server for
segments of seconds (the paper trained on about 8 s: ``--target 343980 --context 0``).

What each needs, and what the trainer checks at start (``for_stream`` and the probe forward
in ``trainer/train.py``):

* the training segment: HTDemucs pads an evaluation input up to its training segment and
  cannot take a longer one, so ``segment`` (samples) and ``sample_rate`` are set from the
  stream, and inference windows are never longer than the segment (``max_input``);
* HDemucs: ``depth`` must bring the frequency axis to 1 (nfft 4096 -> depth 6, 1024 -> 5);
* a window the STFT and the strided convs can take: a probe forward on the stream's window.

``context`` is 0 (the model pads its own edges; the loss covers the whole segment when the
stream sends no context); at inference, overlap-add with cross-faded windows, as Demucs' own
``apply_model`` does. The package is an optional extra: ``pip install --no-deps demucs`` plus the
two packages these models import, einops and julius (its other dependencies serve pretrained
models and its own training).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from fractions import Fraction

import torch

from trainer.models.base import ArchConfig, PaddedSeparator

VARIANTS = {"htdemucs": ("demucs.htdemucs", "HTDemucs"), "hdemucs": ("demucs.hdemucs", "HDemucs")}
INSTALL_HINT = "pip install --no-deps demucs && pip install einops julius"


@dataclass(frozen=True)
class DemucsConfig(ArchConfig):
    """``variant`` htdemucs|hdemucs; ``channels`` of the first layer, ``growth`` per layer,
    ``depth`` layers, STFT ``nfft``; HTDemucs' transformer: ``t_layers`` layers of ``t_heads``
    heads (``t_layers`` 0: none). ``segment`` (training segment, samples) and ``sample_rate`` are
    set from the stream."""

    KIND = "demucs"
    variant: str = "htdemucs"
    channels: int = 48
    growth: int = 2
    depth: int = 4
    nfft: int = 4096
    t_layers: int = 5
    t_heads: int = 8
    segment: int = 441000
    sample_rate: int = 44100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"demucs config variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        self._positive("channels", "growth", "depth", "nfft", "t_heads", "segment", "sample_rate")
        if self.t_layers < 0:
            raise ValueError(f"demucs config t_layers must be >= 0, got {self.t_layers}")

    def context(self) -> int:
        return 0

    def for_stream(self, sample_rate: int, window: int, stems: int) -> "DemucsConfig":
        return replace(self, stems=stems, sample_rate=sample_rate, segment=window)

    def kwargs(self) -> dict:
        """Constructor arguments of the package's class."""
        out = dict(audio_channels=1, channels=self.channels, growth=self.growth, depth=self.depth,
                   nfft=self.nfft, samplerate=self.sample_rate,
                   segment=Fraction(self.segment, self.sample_rate))
        if self.variant == "htdemucs":
            out.update(t_layers=self.t_layers, t_heads=self.t_heads)
        return out


def load_demucs_class(variant: str) -> type:
    """The package's model class; ImportError with an install hint when the package is missing."""
    module, name = VARIANTS[variant]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise ImportError(f"the {name} model needs the demucs package (missing module {exc.name!r}): "
                          f"{INSTALL_HINT}") from None


class DemucsSeparator(PaddedSeparator):
    """HTDemucs / HDemucs on mono input: (batch, 1, n) -> (batch, stems, n)."""

    def __init__(self, cfg: DemucsConfig) -> None:
        super().__init__(cfg)
        cls = load_demucs_class(cfg.variant)
        self.net = cls([f"stem{i}" for i in range(cfg.stems)], **cfg.kwargs())
        self.max_input = cfg.segment if cfg.variant == "htdemucs" else None

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :, 0]
