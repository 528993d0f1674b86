"""Gain staging: the model sees a level-normalised mixture, its estimates are scaled back.

Wire levels are accidental (a synth gain of 0.3 puts mixtures near -30 dBFS). The separator is
fed ``mixture / scale`` with ``scale`` the RMS of each item's mixture window (floored at
``floor``), so every input has unit RMS whatever the stream's level; it returns stems at that
normalised level and ``restore`` multiplies them back. Training computes its loss in the
normalised domain (targets divided by the same scale), so loud items do not outweigh quiet ones.

Checkpoints record the staging (``GainStaging.to_dict()`` under ``"gain"``); ``trainer eval``,
``trainer separate`` and the validation during training call ``apply_separator`` with it, so they
feed the model exactly what it was trained on. Checkpoints written before gain staging existed
load as ``mode="none"`` (raw levels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

GAIN_MODES = ("rms", "none")


@dataclass(frozen=True)
class GainStaging:
    """``mode`` "rms": divide each item by its mixture RMS (at least ``floor``); "none": raw."""

    mode: str = "rms"
    floor: float = 1e-4

    def __post_init__(self) -> None:
        if self.mode not in GAIN_MODES:
            raise ValueError(f"gain mode must be one of {GAIN_MODES}, got {self.mode!r}")
        if not self.floor > 0:
            raise ValueError(f"gain floor must be > 0, got {self.floor}")

    def scale(self, mixture: torch.Tensor) -> torch.Tensor:
        """Per-item scale of a mixture ``(batch, 1, time)`` -> ``(batch, 1, 1)`` (no gradient)."""
        if self.mode == "none":
            return torch.ones(mixture.shape[0], 1, 1, device=mixture.device, dtype=mixture.dtype)
        rms = mixture.detach().float().pow(2).mean(dim=-1, keepdim=True).sqrt()
        return rms.clamp_min(self.floor).to(mixture.dtype)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> GainStaging:
        """Inverse of ``to_dict``; None (a checkpoint without the key) -> ``mode="none"``."""
        if data is None:
            return cls(mode="none")
        if not isinstance(data, dict) or set(data) - {"mode", "floor"}:
            raise ValueError(f"bad gain staging record {data!r}")
        return cls(**data)


def apply_separator(model: nn.Module, mixture: torch.Tensor, target: int | None,
                    gain: GainStaging) -> torch.Tensor:
    """Run ``model`` on a mixture ``(batch, 1, time)`` with gain staging -> stems ``(batch, stems,
    target)`` at the mixture's own level (the model's call convention, scaled in and back)."""
    scale = gain.scale(mixture)
    return model(mixture / scale, target) * scale.to(torch.float32)
