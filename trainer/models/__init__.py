"""Waveform separators: one file per architecture, one contract (``base.Separator``).

``config`` holds the architectures as data (``ModelConfig``, presets); ``build_model`` makes the
module a config describes.
"""
from __future__ import annotations

from trainer.models.base import Separator, centre_crop, count_parameters
from trainer.models.config import (KINDS, PRESETS, ModelConfig, check_context, preset, receptive_field,
                                   required_context)
from trainer.models.flatconv import FlatConvSeparator
from trainer.models.wavenet import ResidualBlock, WaveNetSeparator

__all__ = ["KINDS", "PRESETS", "FlatConvSeparator", "ModelConfig", "ResidualBlock", "Separator", "WaveNetSeparator",
           "build_model", "centre_crop", "check_context", "count_parameters", "preset", "receptive_field",
           "required_context"]


def build_model(cfg: ModelConfig) -> Separator:
    """The separator described by ``cfg`` (randomly initialised, default PyTorch init)."""
    if cfg.kind == "flatconv":
        return FlatConvSeparator(cfg)
    return WaveNetSeparator(cfg)
