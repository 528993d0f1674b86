"""Separator architectures as data: one config dataclass per kind, the presets, and the context rule.

A model config is one of the ``*Config`` dataclasses (each in its architecture's file, each with
``stems``); ``to_dict()`` adds its ``kind``. Checkpoints carry that dict; ``config_from_dict``
reads it back, including the flat ``ModelConfig`` dicts of version-1 checkpoints (wavenet and
flatconv fields side by side). ``--model NAME`` picks a preset, ``--model-config FILE.toml``
sets fields on top of it (``apply_overrides``).
"""
from __future__ import annotations

import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Union

from trainer.models.base import ArchConfig
from trainer.models.demucs_models import DemucsConfig
from trainer.models.flatconv import FlatConvConfig
from trainer.models.resunet import ResUNetConfig
from trainer.models.specunet import SpecUNetConfig
from trainer.models.umx import UMXConfig
from trainer.models.waveunet import WaveUNetConfig
from trainer.models.wavenet import WaveNetConfig

ModelConfig = Union[WaveNetConfig, FlatConvConfig, WaveUNetConfig, ResUNetConfig, SpecUNetConfig,
                    UMXConfig, DemucsConfig]
CONFIGS: dict[str, type[ArchConfig]] = {c.KIND: c for c in (
    WaveNetConfig, FlatConvConfig, WaveUNetConfig, ResUNetConfig, SpecUNetConfig, UMXConfig, DemucsConfig)}
KINDS = tuple(CONFIGS)

PRESETS: dict[str, ArchConfig] = {
    # WaveNet (the seed model) and the FlatConv baseline
    "seed": WaveNetConfig(),
    "tiny": WaveNetConfig(stacks=2, blocks=4, channels=16, head=(32, 32)),
    # a 2-core CPU trains it in minutes: 62 k parameters, receptive field 4097 samples (93 ms at 44.1 kHz)
    "small": WaveNetConfig(stacks=2, blocks=10, channels=24, head=(48,)),
    "flatconv": FlatConvConfig(),
    "flatconv-tiny": FlatConvConfig(kernel=33, channels=16),
    # Wave-U-Net: the paper's 12 levels need --context 69622; 7 levels fit the default stream
    "waveunet": WaveUNetConfig(),
    "waveunet-7": WaveUNetConfig(levels=7),
    "waveunet-tiny": WaveUNetConfig(levels=4, growth=8),
    # Res-U-Net: x2 down-sampling, x1.5 channels per level
    "resunet": ResUNetConfig(),
    "resunet-tiny": ResUNetConfig(levels=4, channels=8, kernel=5),
    # spectrogram U-Net predicting one soft mask per stem
    "specunet": SpecUNetConfig(),
    "specunet-tiny": SpecUNetConfig(levels=3, channels=8, dropout=0.0),
    # Open-Unmix (the package's model; UMX's published size)
    "openunmix": UMXConfig(),
    "openunmix-tiny": UMXConfig(n_fft=1024, hop=256, hidden=64, layers=1),
    # the CPU quality recipe's model (docs/benchmarks.md): 1.4 M parameters, 0.22 s per step on 2 cores
    "openunmix-small": UMXConfig(n_fft=1024, hop=256, hidden=128, layers=2),
    # Demucs (the package's models); the segment comes from the stream
    "htdemucs": DemucsConfig(),
    "htdemucs-tiny": DemucsConfig(channels=8, depth=4, nfft=1024, t_layers=1, t_heads=2),
    "hdemucs": DemucsConfig(variant="hdemucs", depth=6),
    "hdemucs-tiny": DemucsConfig(variant="hdemucs", channels=8, depth=5, nfft=1024),
}


def preset(name: str) -> ArchConfig:
    """The named preset config; ValueError listing the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# version-1 checkpoints: one flat dataclass for both kinds; flatconv fields had a flat_ prefix
_LEGACY_FLAT = {"flat_layers": "layers", "flat_kernel": "kernel", "flat_channels": "channels", "flat_skip": "skip"}


def _from_legacy(data: dict) -> dict:
    kind = data.get("kind", "wavenet")
    if kind == "flatconv":
        return {"kind": kind, "stems": data.get("stems", 4),
                **{new: data[old] for old, new in _LEGACY_FLAT.items() if old in data}}
    return {key: value for key, value in data.items() if key not in _LEGACY_FLAT}


def config_from_dict(data: dict) -> ArchConfig:
    """Inverse of ``to_dict`` (also reads version-1 flat dicts); ValueError naming unknown kinds
    or keys."""
    data = dict(data)
    if any(key in data for key in _LEGACY_FLAT):
        data = _from_legacy(data)
    kind = data.pop("kind", "wavenet")
    if kind not in CONFIGS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}")
    cls = CONFIGS[kind]
    _check_keys(cls, data)
    return cls(**data)


def _check_keys(cls: type[ArchConfig], data: dict) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.KIND} config keys {unknown}; known: {sorted(known)}")


def apply_overrides(base: ArchConfig, overrides: dict) -> ArchConfig:
    """``base`` with the fields in ``overrides`` set. ``overrides["preset"]`` replaces ``base``
    by that preset first; a different ``overrides["kind"]`` starts from that kind's defaults."""
    overrides = dict(overrides)
    if "preset" in overrides:
        base = preset(str(overrides.pop("preset")))
    kind = overrides.pop("kind", base.KIND)
    if kind != base.KIND:
        if kind not in CONFIGS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}")
        base = CONFIGS[kind]()
    _check_keys(type(base), overrides)
    return replace(base, **overrides)


def load_model_config(name: str, path: Path | None) -> ArchConfig:
    """Preset ``name`` with the fields of the TOML file ``path`` (when given) set on top.

    The file holds top-level ``key = value`` lines: any field of the kind, and optionally
    ``kind`` or ``preset`` to start elsewhere. ValueError for unreadable files or unknown keys.
    """
    cfg = preset(name)
    if path is None:
        return cfg
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read model config {path}: {exc}") from None
    try:
        return apply_overrides(cfg, data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model config {path}: {exc}") from None


def receptive_field(cfg: ArchConfig) -> int | None:
    """Input samples one output sample sees (odd, centred); None for models that see the whole input."""
    return cfg.receptive_field()


def required_context(cfg: ArchConfig) -> int:
    """Real input samples the model needs on each side of the target."""
    return cfg.context()


def check_context(cfg: ArchConfig, context: int, *, model_name: str | None = None,
                  flag: str = "--context") -> None:
    """Raise ValueError when a stream's per-side ``context`` is too short for the model.

    ``flag`` is the server option the user must change; ``model_name`` (e.g. the preset name)
    is shown in the message, defaulting to the model kind.
    """
    need = required_context(cfg)
    if context < need:
        name = model_name or cfg.KIND
        raise ValueError(
            f"stream context {context} < {need} needed by model {name!r}: restart the server with "
            f"{flag} {need} or more, or use a smaller model"
        )
