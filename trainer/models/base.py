"""The contract every separator shares (valid convolutions, centre-cropped target).

    mixture (batch, 1, context + target + context)  ->  stems (batch, stems, target)

Every output sample is computed from real input samples only: the model's own convolutions
remove ``receptive_field(cfg) - 1`` samples, and ``forward(x, target)`` centre-crops the rest
when the stream sends more context than the model needs (``required_context(cfg)`` per side).
``forward`` has no data-dependent control flow (only shape checks), so it is torch.compile friendly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from trainer.models.config import ModelConfig, receptive_field, required_context


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def centre_crop(x: torch.Tensor, trim: int) -> torch.Tensor:
    """Drop ``trim`` samples from each end of the last axis: (..., n) -> (..., n - 2*trim)."""
    if trim == 0:
        return x
    return x.narrow(-1, trim, x.shape[-1] - 2 * trim)


class Separator(nn.Module, ABC):
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
