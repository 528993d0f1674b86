"""Wave-U-Net (Stoller, Ewert and Dixon 2018), the valid-convolution variant that reads real context.

Down level i: conv (``down_kernel``, ``growth * i`` channels) + LeakyReLU, kept as a skip, then
decimation by 2 (every other sample). Bottleneck conv. Up level i: linear-interpolation
up-sampling (2L - 1 samples from L, no new parameters), concatenation with the centre of skip i,
conv (``up_kernel``) + LeakyReLU. Finally the centre of the input is concatenated and a 1x1 conv
gives ``stems`` waveforms (linear output).

Every length stays odd and every operation is centred, so output sample j sits on input sample
``shrink + j`` (``shrink``: samples the valid convolutions remove per side). Decimation and
interpolation make the span an output sample sees depend on its phase modulo ``2**levels``: up
to ``2**levels - 1`` samples further on either side (measured in the tests), so the receptive
field is ``2 * (shrink + 2**levels - 1) + 1``. Not every output length is possible: valid
lengths form one residue class modulo ``2**levels``, so the model computes the next valid length
>= target and drops the extra samples at the right. The context it asks for,
``shrink + 2**levels - 1``, covers both.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.base import ArchConfig, Separator, centre_crop


@dataclass(frozen=True)
class WaveUNetConfig(ArchConfig):
    """``levels`` down/up levels with ``growth * i`` channels at level i (the paper: 12, 24,
    kernels 15 down and 5 up); ``slope`` of the LeakyReLU."""

    KIND = "waveunet"
    levels: int = 12
    growth: int = 24
    down_kernel: int = 15
    up_kernel: int = 5
    slope: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("levels", "growth")
        self._odd("down_kernel", "up_kernel")

    def shrink(self) -> int:
        """Samples lost per side by the valid convolutions (a constant: (input - output) / 2)."""
        d, u, s = (self.down_kernel - 1) // 2, (self.up_kernel - 1) // 2, 2**self.levels
        return d * (s - 1) + d * s + u * (s - 1)

    def receptive_field(self) -> int:
        return 2 * self.context() + 1

    def context(self) -> int:
        return self.shrink() + self.stride() - 1

    def stride(self) -> int:
        return 2**self.levels

    def input_length(self, output: int) -> int | None:
        """Input samples that give exactly ``output`` valid samples; None when ``output`` is not
        a valid length (some level would have an even length)."""
        return _input_length(self.levels, self.down_kernel, self.up_kernel, output)

    def valid_output(self, target: int) -> int:
        """The smallest valid output length >= ``target``."""
        for out in range(target, target + self.stride() + 1):
            if self.input_length(out) is not None:
                return out
        raise AssertionError("valid output lengths repeat every 2**levels samples")


@lru_cache(maxsize=256)
def _input_length(levels: int, down_kernel: int, up_kernel: int, output: int) -> int | None:
    length = output
    for _ in range(levels):              # decoder, top to bottom
        upsampled = length + up_kernel - 1
        if upsampled % 2 == 0:
            return None
        length = (upsampled + 1) // 2
    length += down_kernel - 1            # bottleneck conv
    for _ in range(levels):              # encoder, bottom to top: undo decimation, then the conv
        length = 2 * length - 1 + down_kernel - 1
    return length


def upsample_linear(x: torch.Tensor) -> torch.Tensor:
    """(..., L) -> (..., 2L - 1): the samples, with the mean of each neighbour pair between them."""
    mid = 0.5 * (x[..., :-1] + x[..., 1:])
    inner = torch.stack([x[..., :-1], mid], dim=-1).flatten(-2)
    return torch.cat([inner, x[..., -1:]], dim=-1)


class WaveUNetSeparator(Separator):
    """Wave-U-Net with valid convolutions (see the module docstring)."""

    def __init__(self, cfg: WaveUNetConfig) -> None:
        super().__init__(cfg)
        g, levels = cfg.growth, cfg.levels
        widths = [1] + [g * i for i in range(1, levels + 1)]
        self.down = nn.ModuleList(nn.Conv1d(widths[i], widths[i + 1], cfg.down_kernel) for i in range(levels))
        self.bottleneck = nn.Conv1d(widths[-1], g * (levels + 1), cfg.down_kernel)
        below = [g * (i + 1) for i in range(1, levels + 1)]            # channels arriving from below
        self.up = nn.ModuleList(nn.Conv1d(below[i] + widths[i + 1], widths[i + 1], cfg.up_kernel)
                                for i in range(levels))
        self.out = nn.Conv1d(g + 1, cfg.stems, 1)
        self.slope = cfg.slope

    def _separate(self, x: torch.Tensor, target: int) -> torch.Tensor:
        cfg: WaveUNetConfig = self.config
        out_len = cfg.valid_output(target)
        start = (x.shape[-1] - target) // 2 - cfg.shrink()
        h = x[..., start:start + cfg.input_length(out_len)]   # output j <-> input shrink + j
        return self._unet(h)[..., :target]

    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for conv in self.down:
            h = F.leaky_relu(conv(h), self.slope)
            skips.append(h)
            h = h[..., ::2]
        h = F.leaky_relu(self.bottleneck(h), self.slope)
        for conv, skip in zip(reversed(self.up), reversed(skips)):
            h = upsample_linear(h)
            h = torch.cat([h, centre_crop(skip, (skip.shape[-1] - h.shape[-1]) // 2)], dim=1)
            h = F.leaky_relu(conv(h), self.slope)
        return self.out(torch.cat([h, centre_crop(x, (x.shape[-1] - h.shape[-1]) // 2)], dim=1))
