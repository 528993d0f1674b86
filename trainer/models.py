"""Waveform separators: a non-causal WaveNet (the seed model) and a flat-convolution baseline.

Both models use VALID (unpadded) convolutions. The contract is::

    mixture (batch, 1, context + target + context)  ->  stems (batch, stems, target)

Every output sample is computed from real input samples only: the model's own convolutions
remove ``receptive_field(cfg) - 1`` samples, and ``forward(x, target)`` centre-crops the rest
when the stream sends more context than the model needs (``required_context(cfg)`` per side).
Residual and skip paths are centre-cropped to match, which is cheaper than padding. ``forward``
has no data-dependent control flow (only shape checks), so it is torch.compile friendly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

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


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def centre_crop(x: torch.Tensor, trim: int) -> torch.Tensor:
    """Drop ``trim`` samples from each end of the last axis: (..., n) -> (..., n - 2*trim)."""
    if trim == 0:
        return x
    return x.narrow(-1, trim, x.shape[-1] - 2 * trim)


class _Separator(nn.Module, ABC):
    """Shared input/output contract; subclasses implement ``_valid(x)`` (no padding inside)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.receptive_field = receptive_field(cfg)
        self.context = required_context(cfg)

    @abstractmethod
    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, n) -> (batch, stems, n - receptive_field + 1)."""

    def output_length(self, input_length: int) -> int:
        """Length of the valid output for an input of ``input_length`` samples."""
        return input_length - (self.receptive_field - 1)

    def forward(self, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
        """(batch, 1, time) -> (batch, stems, target), centre of the valid output.

        With ``target=None`` the whole valid output (time - receptive_field + 1 samples) is
        returned. The input must hold ``target + 2*context`` samples with context >= the model's.
        """
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected mixture of shape (batch, 1, time), got {tuple(x.shape)}")
        valid = self.output_length(x.shape[-1])
        want = valid if target is None else target
        if want < 1 or want > valid or (valid - want) % 2:
            raise ValueError(
                f"input of {x.shape[-1]} samples gives {valid} valid outputs; cannot centre "
                f"{want} target samples (receptive field {self.receptive_field})"
            )
        trim = (valid - want) // 2
        return self._valid(centre_crop(x, trim))


class ResidualBlock(nn.Module):
    """Dilated conv -> activation -> 1x1 residual conv (+ cropped input) and 1x1 skip conv.

    ``skip_trim`` is how many samples the skip output is cropped per side before its 1x1 conv
    (the later blocks shrink the signal by that much), so no skip work is wasted.
    """

    def __init__(
        self, channels: int, kernel: int, dilation: int, gated: bool, skip_trim: int, residual: bool
    ) -> None:
        super().__init__()
        width = 2 * channels if gated else channels
        self.dilated = nn.Conv1d(channels, width, kernel, dilation=dilation)
        self.residual = nn.Conv1d(channels, channels, 1) if residual else None
        self.skip = nn.Conv1d(channels, channels, 1)
        self.gated = gated
        self.trim = dilation * (kernel - 1) // 2
        self.skip_trim = skip_trim

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.gated:
            a, b = h.chunk(2, dim=1)
            return torch.tanh(a) * torch.sigmoid(b)
        return torch.relu(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, channels, n) -> next input (batch, channels, n - 2*trim) and skip output."""
        h = self._activate(self.dilated(x))
        skip = self.skip(centre_crop(h, self.skip_trim))
        if self.residual is None:
            return h, skip
        return centre_crop(x, self.trim) + self.residual(h), skip


class WaveNetSeparator(_Separator):
    """Non-causal WaveNet: input conv, stacks of dilated residual blocks, summed skips, head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        k = cfg.channels
        self.input = nn.Conv1d(1, k, cfg.input_kernel)
        dilations = [2**b for _ in range(cfg.stacks) for b in range(cfg.blocks)]
        trims = [d * (cfg.kernel - 1) // 2 for d in dilations]
        blocks = []
        for i, d in enumerate(dilations):
            last = i == len(dilations) - 1
            later = sum(trims[i + 1 :])
            blocks.append(ResidualBlock(k, cfg.kernel, d, cfg.gated, later, residual=not last))
        self.blocks = nn.ModuleList(blocks)
        head: list[nn.Module] = []
        width = k
        for hidden in cfg.head:
            head += [nn.ReLU(), nn.Conv1d(width, hidden, cfg.head_kernel)]
            width = hidden
        head += [nn.ReLU(), nn.Conv1d(width, cfg.stems, 1)]
        self.head = nn.Sequential(*head)

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        total = None
        for block in self.blocks:
            h, skip = block(h)
            total = skip if total is None else total + skip
        return self.head(total)


class FlatConvSeparator(_Separator):
    """Baseline: a few wide convs with ReLU; optional x + relu(conv(x)) skips on hidden layers."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        c = cfg.flat_channels
        widths = [1] + [c] * (cfg.flat_layers - 1) + [cfg.stems]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, cfg.flat_kernel) for a, b in zip(widths[:-1], widths[1:])
        )
        n = len(self.convs)
        self.skips = [cfg.flat_skip and 0 < i < n - 1 and widths[i] == widths[i + 1] for i in range(n)]
        self.trim = (cfg.flat_kernel - 1) // 2

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (conv, skip) in enumerate(zip(self.convs, self.skips)):
            y = conv(x)
            if i < last:
                y = torch.relu(y)
            x = centre_crop(x, self.trim) + y if skip else y
        return x


def build_model(cfg: ModelConfig) -> _Separator:
    """The separator described by ``cfg`` (randomly initialised, default PyTorch init)."""
    if cfg.kind == "flatconv":
        return FlatConvSeparator(cfg)
    return WaveNetSeparator(cfg)
