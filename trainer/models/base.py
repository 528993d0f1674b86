"""The contract every separator shares, and the config base class.

    mixture (batch, 1, context + target + context)  ->  stems (batch, stems, target)

Output sample ``j`` belongs to input sample ``context + j``. Each model says how much
context it needs per side (``ArchConfig.context()``) and how it uses it:

* ``exact`` models (WaveNet, FlatConv, Wave-U-Net, Res-U-Net) compute every target sample from
  real input only (valid convolutions, or padding that stays outside the receptive field).
  Their context is a hard requirement, and windows of a long signal concatenate with no seam
  when the window is a multiple of ``stride`` (the model's total down-sampling factor).
* padded models (spectrogram U-Net, Open-Unmix, Demucs) transform the whole input and pad at
  its edges themselves; their context is the margin that keeps those edges out of the target.
  Long signals are separated by overlap-add (``trainer/separate.py``).

``forward`` has no data-dependent control flow besides shape checks (torch.compile friendly).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def centre_crop(x: torch.Tensor, trim: int) -> torch.Tensor:
    """Drop ``trim`` samples from each end of the last axis: (..., n) -> (..., n - 2*trim)."""
    if trim == 0:
        return x
    return x.narrow(-1, trim, x.shape[-1] - 2 * trim)


@dataclass(frozen=True)
class ArchConfig:
    """Fields every architecture has; each architecture's file subclasses it with its own.

    ``to_dict`` adds ``kind`` (the registry key) so a checkpoint names its architecture.
    """

    KIND: ClassVar[str] = ""
    stems: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):      # TOML and JSON give lists; configs hold tuples (hashable, frozen)
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self._positive("stems")

    def _positive(self, *names: str) -> None:
        for name in names:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{self.KIND} config {name} must be >= 1, got {getattr(self, name)}")

    def _odd(self, *names: str) -> None:
        for name in names:
            k = int(getattr(self, name))
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{self.KIND} config {name} must be a positive odd number, got {k}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict: ``kind`` plus every field (tuples as lists)."""
        out = {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}
        return {"kind": self.KIND, **out}

    def context(self) -> int:
        """Input samples the model needs on each side of the target."""
        raise NotImplementedError

    def receptive_field(self) -> int | None:
        """Input samples one output sample sees; None when it sees the whole input (padded models)."""
        return None

    def stride(self) -> int:
        """Window lengths that are multiples of this give seamless windows (exact models)."""
        return 1

    def for_stream(self, sample_rate: int, window: int, stems: int) -> "ArchConfig":
        """This config adapted to a stream (its stem count; models with a rate or segment set them)."""
        return replace(self, stems=stems)


class Separator(nn.Module, ABC):
    """Shared input/output contract; subclasses implement ``_separate(x, target)``.

    Attributes: ``config``, ``context`` (per side), ``receptive_field`` (None: whole input),
    ``stride``, ``exact`` (see the module docstring) and ``max_input`` (longest input the model
    accepts, None: any).
    """

    exact: ClassVar[bool] = True

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.context = cfg.context()
        self.receptive_field = cfg.receptive_field()
        self.stride = cfg.stride()
        self.max_input: int | None = None

    @abstractmethod
    def _separate(self, x: torch.Tensor, target: int) -> torch.Tensor:
        """(batch, 1, n) -> (batch, stems, target): output j belongs to input (n - target)//2 + j."""

    def forward(self, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
        """(batch, 1, time) -> (batch, stems, target), the centre of the input.

        ``time - target`` must be even and at least ``2 * context``; ``target=None`` means
        ``time - 2 * context`` samples.
        """
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected mixture of shape (batch, 1, time), got {tuple(x.shape)}")
        n = x.shape[-1]
        want = n - 2 * self.context if target is None else target
        if want < 1 or n - want < 2 * self.context or (n - want) % 2:
            raise ValueError(f"input of {n} samples cannot centre {want} target samples with "
                             f"{self.context} samples of context per side")
        if self.max_input is not None and n > self.max_input:
            raise ValueError(f"input of {n} samples is longer than this model's {self.max_input} "
                             "(its training segment)")
        return self._separate(x, want)


class ValidConvSeparator(Separator):
    """Base of plain valid-convolution models: ``_valid`` maps (batch, 1, n) to
    (batch, stems, n - receptive_field + 1); the input is centre-cropped to what it needs."""

    @abstractmethod
    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, n) -> (batch, stems, n - receptive_field + 1)."""

    def _separate(self, x: torch.Tensor, target: int) -> torch.Tensor:
        trim = (x.shape[-1] - target) // 2 - self.context
        return self._valid(centre_crop(x, trim))


class PaddedSeparator(Separator):
    """Base of models that transform the whole input: ``_full`` maps (batch, 1, n) to
    (batch, stems, n); the target is its centre."""

    exact = False

    @abstractmethod
    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, n) -> (batch, stems, n)."""

    def _separate(self, x: torch.Tensor, target: int) -> torch.Tensor:
        return centre_crop(self._full(x), (x.shape[-1] - target) // 2)


def probe_model(model: Separator, window: int, target: int, name: str) -> None:
    """One no-grad eval-mode forward of a silent-ish (1, 1, window) input; ValueError naming the
    model when it cannot map the stream's window to (1, stems, target) (a start-up check)."""
    device = next(model.parameters()).device
    x = torch.zeros(1, 1, window, device=device)
    x[..., ::97] = 1e-3                          # models that normalise by the std need a non-zero input
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x, target)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ValueError(f"model {name!r} cannot take the stream's window of {window} samples "
                         f"(target {target}): {str(exc)[:300]}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, model.config.stems, target):
        raise ValueError(f"model {name!r} gave {tuple(out.shape)} for the stream's window, "
                         f"expected (1, {model.config.stems}, {target})")
