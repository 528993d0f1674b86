"""Non-causal WaveNet separator (the seed model): dilated residual blocks with valid
convolutions; residual and skip paths are centre-cropped to match, which is cheaper than padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.base import ArchConfig, ValidConvSeparator, centre_crop


@dataclass(frozen=True)
class WaveNetConfig(ArchConfig):
    """``stacks`` x ``blocks`` residual blocks of ``channels`` channels, dilated convs of width
    ``kernel`` with dilations 1, 2, ..., 2**(blocks-1) in each stack; ``gated`` selects
    tanh*sigmoid units instead of ReLU; ``input_kernel`` is the width of the 1 -> channels input
    conv; ``head`` are the hidden widths of the output head (convs of width ``head_kernel``),
    followed by a 1x1 conv to ``stems`` waveforms.
    """

    KIND = "wavenet"
    stacks: int = 4
    blocks: int = 10
    channels: int = 128
    kernel: int = 3
    head: tuple[int, ...] = (512, 256)
    gated: bool = False
    input_kernel: int = 3
    head_kernel: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "head", tuple(int(h) for h in self.head))
        self._positive("stacks", "blocks", "channels")
        if any(h < 1 for h in self.head):
            raise ValueError(f"wavenet config head widths must be >= 1, got {self.head}")
        self._odd("kernel", "input_kernel", "head_kernel")

    def receptive_field(self) -> int:
        """1 + (input_kernel-1) + (kernel-1)*stacks*(2**blocks - 1) + (head_kernel-1)*len(head)
        (= 8191 for the seed preset)."""
        dilated = (self.kernel - 1) * self.stacks * (2**self.blocks - 1)
        return 1 + (self.input_kernel - 1) + dilated + (self.head_kernel - 1) * len(self.head)

    def context(self) -> int:
        return (self.receptive_field() - 1) // 2


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


class WaveNetSeparator(ValidConvSeparator):
    """Non-causal WaveNet: input conv, stacks of dilated residual blocks, summed skips, head."""

    def __init__(self, cfg: WaveNetConfig) -> None:
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
