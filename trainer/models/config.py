"""Separator architectures as data: ``ModelConfig``, the presets, receptive field and context.

Checkpoints carry a ``ModelConfig`` (``to_dict``); ``build_model`` turns one into a module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

KINDS = ("wavenet", "flatconv")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a separator; checkpoints carry it as ``to_dict()``.

    WaveNet fields: ``stacks`` x ``blocks`` residual blocks of ``channels`` channels, dilated
    convs of width ``kernel`` with dilations 1, 2, ..., 2**(blocks-1) in each stack; ``gated``
    selects tanh*sigmoid units instead of ReLU; ``input_kernel`` is the width of the 1 -> channels
    input conv; ``head`` are the hidden widths of the output head (convs of width ``head_kernel``),
    followed by a 1x1 conv to ``stems`` waveforms.
    FlatConv fields: ``flat_layers`` convs of width ``flat_kernel`` with ``flat_channels``
    channels, ReLU between them (the last layer is linear, ``stems`` outputs); ``flat_skip``
    adds the (cropped) layer input to the hidden layers whose shapes match.
    """

    kind: str = "wavenet"
    stems: int = 4
    stacks: int = 4
    blocks: int = 10
    channels: int = 128
    kernel: int = 3
    head: tuple[int, ...] = (512, 256)
    gated: bool = False
    input_kernel: int = 3
    head_kernel: int = 3
    flat_layers: int = 4
    flat_kernel: int = 65
    flat_channels: int = 64
    flat_skip: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "head", tuple(int(h) for h in self.head))
        positive = ("stems", "stacks", "blocks", "channels", "flat_layers", "flat_channels")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model config {name} must be >= 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.head):
            raise ValueError(f"model config head widths must be >= 1, got {self.head}")
        for name in ("kernel", "input_kernel", "head_kernel", "flat_kernel"):
            k = int(getattr(self, name))
            if k < 1 or k % 2 == 0:
                raise ValueError(f"model config {name} must be a positive odd number, got {k}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (``head`` as a list)."""
        out = asdict(self)
        out["head"] = list(self.head)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    "seed": ModelConfig(),
    "tiny": ModelConfig(stacks=2, blocks=4, channels=16, head=(32, 32)),
    "flatconv": ModelConfig(kind="flatconv"),
}


def preset(name: str) -> ModelConfig:
    """The named preset config; ValueError listing the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def receptive_field(cfg: ModelConfig) -> int:
    """Input samples that one output sample sees (odd, centred on the output sample).

    WaveNet: 1 + (input_kernel-1) + (kernel-1)*stacks*(2**blocks - 1) + (head_kernel-1)*len(head)
    (= 8191 for the seed preset). FlatConv: 1 + flat_layers*(flat_kernel-1).
    """
    if cfg.kind == "flatconv":
        return 1 + cfg.flat_layers * (cfg.flat_kernel - 1)
    dilated = (cfg.kernel - 1) * cfg.stacks * (2**cfg.blocks - 1)
    return 1 + (cfg.input_kernel - 1) + dilated + (cfg.head_kernel - 1) * len(cfg.head)


def required_context(cfg: ModelConfig) -> int:
    """Real input samples the model needs on each side of the target (= (receptive_field-1)//2)."""
    return (receptive_field(cfg) - 1) // 2


def check_context(
    cfg: ModelConfig, context: int, *, model_name: str | None = None, flag: str = "--context"
) -> None:
    """Raise ValueError when a stream's per-side ``context`` is too short for the model.

    ``flag`` is the server option the user must change; ``model_name`` (e.g. the preset name)
    is shown in the message, defaulting to the model kind.
    """
    need = required_context(cfg)
    if context < need:
        name = model_name or cfg.kind
        raise ValueError(
            f"stream context {context} < {need} needed by model {name!r}: restart the server with "
            f"{flag} {need} or more, or use a smaller model"
        )
