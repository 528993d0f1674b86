"""Separators: one file per architecture, one contract (``base.Separator``).

``config`` holds the architectures as data (one config dataclass per kind, the presets);
``build_model`` makes the module a config describes. Open-Unmix and Demucs come from optional
packages, imported only when such a model is built.
"""
from __future__ import annotations

from trainer.models.base import ArchConfig, Separator, centre_crop, count_parameters, probe_model
from trainer.models.config import (CONFIGS, KINDS, PRESETS, ModelConfig, apply_overrides, check_context,
                                   config_from_dict, load_model_config, preset, receptive_field,
                                   required_context)
from trainer.models.demucs_models import DemucsConfig, DemucsSeparator
from trainer.models.flatconv import FlatConvConfig, FlatConvSeparator
from trainer.models.resunet import ResUNetConfig, ResUNetSeparator
from trainer.models.specunet import SpecUNetConfig, SpecUNetSeparator
from trainer.models.umx import UMXConfig, UMXSeparator
from trainer.models.waveunet import WaveUNetConfig, WaveUNetSeparator
from trainer.models.wavenet import ResidualBlock, WaveNetConfig, WaveNetSeparator

SEPARATORS: dict[str, type[Separator]] = {
    "wavenet": WaveNetSeparator, "flatconv": FlatConvSeparator, "waveunet": WaveUNetSeparator,
    "resunet": ResUNetSeparator, "specunet": SpecUNetSeparator, "openunmix": UMXSeparator,
    "demucs": DemucsSeparator,
}

__all__ = [
    "ArchConfig", "CONFIGS", "DemucsConfig", "FlatConvConfig", "FlatConvSeparator", "KINDS",
    "ModelConfig", "PRESETS", "ResUNetConfig", "ResidualBlock", "SEPARATORS", "Separator",
    "SpecUNetConfig", "UMXConfig", "WaveNetConfig", "WaveNetSeparator", "WaveUNetConfig",
    "apply_overrides", "build_model", "centre_crop", "check_context", "config_from_dict",
    "count_parameters", "load_model_config", "preset", "probe_model", "receptive_field",
    "required_context",
]


def build_model(cfg: ArchConfig) -> Separator:
    """The separator described by ``cfg`` (randomly initialised, default PyTorch init).

    ValueError with an install hint when the architecture's optional package is missing.
    """
    try:
        return SEPARATORS[cfg.KIND](cfg)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
