"""Flat-convolution baseline separator (the related project's FlatConv): a few wide valid convs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.base import ArchConfig, ValidConvSeparator, centre_crop


@dataclass(frozen=True)
class FlatConvConfig(ArchConfig):
    """``layers`` convs of width ``kernel`` with ``channels`` channels, ReLU between them (the
    last layer is linear, ``stems`` outputs); ``skip`` adds the (cropped) layer input to the
    hidden layers whose shapes match."""

    KIND = "flatconv"
    layers: int = 4
    kernel: int = 65
    channels: int = 64
    skip: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("layers", "channels")
        self._odd("kernel")

    def receptive_field(self) -> int:
        """1 + layers*(kernel-1)."""
        return 1 + self.layers * (self.kernel - 1)

    def context(self) -> int:
        return (self.receptive_field() - 1) // 2


class FlatConvSeparator(ValidConvSeparator):
    """Baseline: a few wide convs with ReLU; optional x + relu(conv(x)) skips on hidden layers."""

    def __init__(self, cfg: FlatConvConfig) -> None:
        super().__init__(cfg)
        c = cfg.channels
        widths = [1] + [c] * (cfg.layers - 1) + [cfg.stems]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, cfg.kernel) for a, b in zip(widths[:-1], widths[1:])
        )
        n = len(self.convs)
        self.skips = [cfg.skip and 0 < i < n - 1 and widths[i] == widths[i + 1] for i in range(n)]
        self.trim = (cfg.kernel - 1) // 2

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (conv, skip) in enumerate(zip(self.convs, self.skips)):
            y = conv(x)
            if i < last:
                y = torch.relu(y)
            x = centre_crop(x, self.trim) + y if skip else y
        return x
