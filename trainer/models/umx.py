"""Open-Unmix (Stöter et al. 2019) from the ``openunmix`` package: one ``OpenUnmix`` spectrogram
model per stem (mono), ``openunmix.filtering.wiener`` at inference.

Each stem's model maps the mixture's magnitude STFT to that stem's magnitude (a BiLSTM between
dense layers, as in the package). In training mode the estimates take the mixture's phase and go
back to waveforms by inverse STFT, so the loss is on waveforms like every other model here; in
eval mode with ``wiener_iterations > 0`` the multichannel Wiener filter of the package refines the
complex estimates per item (EM iterations), then the inverse STFT. A padded model: ``context`` (=
``n_fft``) keeps the STFT edges away from the target; the BiLSTM sees the whole input, so long
signals are separated by overlap-add.

The package is an optional extra (``pip install --no-deps openunmix``). Its ``__init__`` and
``transforms`` import torchaudio at module level although the model core and the filter use
only torch, and torchaudio would pull its own torch. ``load_openunmix`` therefore imports
``openunmix.model`` and ``openunmix.filtering`` without running the package ``__init__``, with a
placeholder ``torchaudio`` visible only during that import (``transforms`` never touches it on
the torch STFT path). When torchaudio is installed the package is imported normally.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from trainer.models.base import ArchConfig, PaddedSeparator

INSTALL_HINT = "pip install --no-deps openunmix  (its torchaudio dependency is not needed)"


def load_openunmix() -> tuple[types.ModuleType, types.ModuleType]:
    """``(openunmix.model, openunmix.filtering)``; ImportError with an install hint when missing."""
    if "openunmix.model" in sys.modules and "openunmix.filtering" in sys.modules:
        return sys.modules["openunmix.model"], sys.modules["openunmix.filtering"]
    spec = importlib.util.find_spec("openunmix")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the Open-Unmix model needs the openunmix package: {INSTALL_HINT}")
    if importlib.util.find_spec("torchaudio") is not None:
        return importlib.import_module("openunmix.model"), importlib.import_module("openunmix.filtering")
    if "openunmix" not in sys.modules:
        package = types.ModuleType("openunmix")          # the package without its __init__
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["openunmix"] = package
    placeholder = types.ModuleType("torchaudio")
    placeholder.__getattr__ = _no_torchaudio
    sys.modules["torchaudio"] = placeholder
    try:
        model = importlib.import_module("openunmix.model")
        filtering = importlib.import_module("openunmix.filtering")
    finally:
        del sys.modules["torchaudio"]
    return model, filtering


def _no_torchaudio(name: str):
    raise ImportError(f"torchaudio is not installed (openunmix asked for torchaudio.{name})")


def max_bin(sample_rate: int, n_fft: int, bandwidth: float) -> int:
    """Bins up to ``bandwidth`` Hz (as ``openunmix.utils.bandwidth_to_max_bin``)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0]) + 1)


@dataclass(frozen=True)
class UMXConfig(ArchConfig):
    """STFT ``n_fft`` / ``hop``; per stem an ``OpenUnmix`` with ``hidden`` units and ``layers``
    LSTM layers (bidirectional unless ``unidirectional``) that reads bins up to ``bandwidth`` Hz
    at ``sample_rate`` (set from the stream); ``wiener_iterations`` EM iterations of the Wiener
    filter at inference (0: mixture phase), ``softmask`` its initial estimate (as the package)."""

    KIND = "openunmix"
    n_fft: int = 4096
    hop: int = 1024
    hidden: int = 512
    layers: int = 3
    unidirectional: bool = False
    bandwidth: float = 16000.0
    sample_rate: int = 44100
    wiener_iterations: int = 1
    softmask: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("n_fft", "hop", "hidden", "layers", "sample_rate")
        if self.hidden % 2 and not self.unidirectional:
            raise ValueError(f"openunmix config hidden must be even for a BiLSTM, got {self.hidden}")
        if self.wiener_iterations < 0:
            raise ValueError(f"openunmix config wiener_iterations must be >= 0, got {self.wiener_iterations}")

    def context(self) -> int:
        return self.n_fft

    def for_stream(self, sample_rate: int, window: int, stems: int) -> "UMXConfig":
        return replace(self, stems=stems, sample_rate=sample_rate)


class UMXSeparator(PaddedSeparator):
    """Open-Unmix, one target model per stem (see the module docstring)."""

    def __init__(self, cfg: UMXConfig) -> None:
        super().__init__(cfg)
        model, filtering = load_openunmix()
        self._wiener = filtering.wiener
        bins = cfg.n_fft // 2 + 1
        top = min(bins, max_bin(cfg.sample_rate, cfg.n_fft, cfg.bandwidth))
        self.targets = nn.ModuleList(
            model.OpenUnmix(nb_bins=bins, nb_channels=1, hidden_size=cfg.hidden, nb_layers=cfg.layers,
                            unidirectional=cfg.unidirectional, max_bin=top)
            for _ in range(cfg.stems))
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        cfg: UMXConfig = self.config
        b, _, n = x.shape
        spec = torch.stft(x[:, 0].float(), cfg.n_fft, cfg.hop, window=self.window, center=True,
                          return_complex=True)                            # (batch, bins, frames)
        mag = spec.abs()[:, None]                                         # (batch, 1, bins, frames)
        est = torch.stack([m(mag) for m in self.targets], dim=1)[:, :, 0]  # (batch, stems, bins, frames)
        if self.training or cfg.wiener_iterations == 0:
            stems = est * torch.exp(1j * torch.angle(spec))[:, None]
        else:
            stems = self._filter(est, spec)
        wave = torch.istft(stems.reshape(b * cfg.stems, *stems.shape[-2:]), cfg.n_fft, cfg.hop,
                           window=self.window, center=True, length=n)
        return wave.view(b, cfg.stems, n).to(x.dtype)

    def _filter(self, est: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """Wiener filter per item: magnitudes (batch, stems, bins, frames) and mixture STFT
        (batch, bins, frames) -> complex stems (batch, stems, bins, frames)."""
        cfg: UMXConfig = self.config
        out = []
        for v, mix in zip(est, spec):
            v = v.permute(2, 1, 0)[:, :, None]                            # (frames, bins, 1, stems)
            mix = torch.view_as_real(mix.T)[:, :, None]                   # (frames, bins, 1, 2)
            y = self._wiener(v, mix, cfg.wiener_iterations, softmask=cfg.softmask)
            out.append(torch.view_as_complex(y[:, :, 0].permute(3, 1, 0, 2).contiguous()))
        return torch.stack(out)
