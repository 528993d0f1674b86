"""Flat-convolution baseline separator: a few wide valid convs with ReLU."""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import Separator, centre_crop
from trainer.models.config import ModelConfig


class FlatConvSeparator(Separator):
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
