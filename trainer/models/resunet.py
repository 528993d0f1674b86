"""Res-U-Net in the time domain (the related project's notes): x2 down-sampling per level with
x1.5 channels, residual conv blocks.

Input conv, then per level a residual block (kept as the skip) and a stride-2 conv to
``round(channels * 1.5**level)`` channels; a residual block at the bottom; per level back up a
stride-2 transposed conv, concatenation with the skip, a 1x1 conv and a residual block; a 1x1 conv
to ``stems`` waveforms. Residual block: ``x + conv(act(bn(conv(act(bn(x))))))``, convs of width
``kernel`` with "same" zero padding.

The padding never reaches the target: the context the model asks for is an upper bound of half
its receptive field, so with that much real context every target sample is computed from real
input (exact). The input is zero-padded at the right end to a multiple of ``2**levels``, past
the right context. Windows whose length is a multiple of ``2**levels`` see the same
down-sampling grid, so they concatenate with no seam.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.base import ArchConfig, Separator, centre_crop


@dataclass(frozen=True)
class ResUNetConfig(ArchConfig):
    """``levels`` x2 down-sampling levels, ``channels`` at the top growing by ``growth`` per
    level, residual blocks with convs of width ``kernel``."""

    KIND = "resunet"
    levels: int = 7
    channels: int = 16
    growth: float = 1.5
    kernel: int = 7

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("levels", "channels")
        self._odd("kernel")
        if not self.growth >= 1:
            raise ValueError(f"resunet config growth must be >= 1, got {self.growth}")

    def widths(self) -> list[int]:
        """Channels per level, top to bottom (levels + 1 values)."""
        return [max(1, round(self.channels * self.growth**i)) for i in range(self.levels + 1)]

    def context(self) -> int:
        """Upper bound of half the receptive field: the input conv, two convs per residual block
        per level on the way down and up plus the bottom block, one sample per scale for each
        stride-2 conv and transposed conv (their kernels of 2 are not centred)."""
        h, s = (self.kernel - 1) // 2, 2**self.levels
        return h + (4 * h + 2) * (s - 1) + 2 * h * s

    def receptive_field(self) -> int:
        return 2 * self.context() + 1

    def stride(self) -> int:
        return 2**self.levels


class ResBlock(nn.Module):
    """Pre-activation residual block: (batch, c, n) -> (batch, c, n)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm1d(channels), nn.BatchNorm1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.bn1(x), 0.2))
        return x + self.conv2(F.leaky_relu(self.bn2(h), 0.2))


class ResUNetSeparator(Separator):
    """Res-U-Net (see the module docstring)."""

    def __init__(self, cfg: ResUNetConfig) -> None:
        super().__init__(cfg)
        w, k = cfg.widths(), cfg.kernel
        self.input = nn.Conv1d(1, w[0], k, padding=k // 2)
        self.enc = nn.ModuleList(ResBlock(w[i], k) for i in range(cfg.levels))
        self.down = nn.ModuleList(nn.Conv1d(w[i], w[i + 1], 2, stride=2) for i in range(cfg.levels))
        self.bottom = ResBlock(w[-1], k)
        self.up = nn.ModuleList(nn.ConvTranspose1d(w[i + 1], w[i], 2, stride=2) for i in range(cfg.levels))
        self.merge = nn.ModuleList(nn.Conv1d(2 * w[i], w[i], 1) for i in range(cfg.levels))
        self.dec = nn.ModuleList(ResBlock(w[i], k) for i in range(cfg.levels))
        self.out = nn.Conv1d(w[0], cfg.stems, 1)

    def _separate(self, x: torch.Tensor, target: int) -> torch.Tensor:
        trim = (x.shape[-1] - target) // 2 - self.context
        x = centre_crop(x, trim)
        n = x.shape[-1]
        h = F.pad(x, (0, -n % self.stride))
        skips = []
        h = self.input(h)
        for enc, down in zip(self.enc, self.down):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        for i in reversed(range(len(self.up))):
            h = self.merge[i](torch.cat([self.up[i](h), skips[i]], dim=1))
            h = self.dec[i](h)
        return self.out(h)[..., self.context:self.context + target]
