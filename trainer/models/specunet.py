"""Spectrogram U-Net mask separator (after Jansson et al. 2017 and the related project's notes).

STFT of the mixture (Hann window ``n_fft``, hop ``hop``, centred frames) -> log magnitude ->
2-D U-Net over (frequency, time) -> one soft mask per stem (sigmoid) -> masks times the mixture
STFT -> inverse STFT with the mixture's phase -> waveforms, so the training loss is on waveforms
like every other model here.

U-Net: ``levels`` encoder convs (5x5, stride 2 on both axes, BatchNorm, LeakyReLU 0.2) with
``channels * 2**i`` channels; decoder transposed convs (5x5, stride 2, BatchNorm, ReLU) each
followed by concatenation with the encoder output of the same scale; a last transposed conv gives
the masks. The top ``n_fft // 2`` bins go through the U-Net (a multiple of ``2**levels``); the
Nyquist bin takes the mask of the bin below it. Frames are zero-padded to a multiple of
``2**levels``. A padded model: ``context`` (= ``n_fft``) keeps the padded STFT edges away from
the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.base import ArchConfig, PaddedSeparator


@dataclass(frozen=True)
class SpecUNetConfig(ArchConfig):
    """STFT ``n_fft`` / ``hop``; U-Net ``levels`` with ``channels`` at the top; ``dropout`` in
    the three deepest decoder levels (as in Jansson et al.)."""

    KIND = "specunet"
    n_fft: int = 1024
    hop: int = 256
    levels: int = 5
    channels: int = 16
    dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_fft", "hop", "levels", "channels")
        if self.n_fft % 2 or (self.n_fft // 2) % 2**self.levels:
            raise ValueError(f"specunet config n_fft // 2 ({self.n_fft // 2}) must be a multiple of "
                             f"2**levels ({2**self.levels})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"specunet config dropout must be in [0, 1), got {self.dropout}")

    def context(self) -> int:
        return self.n_fft


def _up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)


class SpecUNetSeparator(PaddedSeparator):
    """Spectrogram U-Net mask model (see the module docstring)."""

    def __init__(self, cfg: SpecUNetConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        w = [1] + [cfg.channels * 2**i for i in range(cfg.levels)]
        self.norm = nn.BatchNorm2d(1)
        self.enc = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w[i], w[i + 1], 5, stride=2, padding=2), nn.BatchNorm2d(w[i + 1]),
                          nn.LeakyReLU(0.2))
            for i in range(cfg.levels))
        dec = []
        for i in reversed(range(1, cfg.levels)):          # from the bottom up to the top-but-one
            c_in = w[i + 1] if i == cfg.levels - 1 else 2 * w[i + 1]
            drop = nn.Dropout(cfg.dropout) if i >= cfg.levels - 3 else nn.Identity()
            dec.append(nn.Sequential(_up(c_in, w[i]), nn.BatchNorm2d(w[i]), nn.ReLU(), drop))
        self.dec = nn.ModuleList(dec)
        self.last = _up(2 * w[1] if cfg.levels > 1 else w[1], cfg.stems)

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        cfg: SpecUNetConfig = self.config
        return torch.stft(x, cfg.n_fft, cfg.hop, window=self.window, center=True, return_complex=True)

    def masks(self, spec: torch.Tensor) -> torch.Tensor:
        """Mixture STFT (batch, bins, frames) -> soft masks (batch, stems, bins, frames) in [0, 1]."""
        bins, frames = spec.shape[-2:]
        scale = 2**self.config.levels
        h = torch.log(spec.abs()[:, None, : bins - 1] + 1e-6)          # (batch, 1, bins - 1, frames)
        h = self.norm(F.pad(h, (0, -frames % scale)))
        skips = []
        for enc in self.enc:
            h = enc(h)
            skips.append(h)
        skips.pop()                                                    # the bottom is h itself
        for dec in self.dec:
            h = torch.cat([dec(h), skips.pop()], dim=1)
        m = torch.sigmoid(self.last(h))[..., :frames]                  # (batch, stems, bins - 1, frames)
        return torch.cat([m, m[:, :, -1:]], dim=2)

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        cfg: SpecUNetConfig = self.config
        b, _, n = x.shape
        spec = self._stft(x[:, 0].float())                             # (batch, bins, frames)
        est = self.masks(spec) * spec[:, None]
        flat = est.reshape(b * cfg.stems, *est.shape[-2:])
        wave = torch.istft(flat, cfg.n_fft, cfg.hop, window=self.window, center=True, length=n)
        return wave.view(b, cfg.stems, n).to(x.dtype)
