"""One training step on device tensors: remix, gain staging, loss, guarded update; LR schedule.

Per step, all on the device: (optionally) re-pair stems across the batch (``shuffle_stems``),
(optionally) a random gain and sign per stem (``remix_stems``), the mixture as the sum of the
stems, per-item gain staging (``trainer.gain``: the model sees a unit-RMS mixture; the loss
compares its output with the targets divided by the same scale), the loss in float32, the
gradient norm (``--clip-grad`` clips to it), and an optimizer update that is skipped on the
device when the loss or the gradient norm is not finite (fused Adam's ``found_inf``: no host
sync). The caller counts skipped steps from ``StepOutput.skipped``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .gain import GainStaging
from .losses import LossFn

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class StepOutput:
    """Detached results of one step: ``loss`` (), ``per_stem`` (stems,), ``mixture``
    (batch, 1, window), ``estimate`` and ``target`` (batch, stems, target) at the stream's level,
    ``skipped`` () 1.0 when the update was skipped (non-finite), ``grad_norm`` () before clipping."""

    loss: torch.Tensor
    per_stem: torch.Tensor
    mixture: torch.Tensor
    estimate: torch.Tensor
    target: torch.Tensor
    skipped: torch.Tensor
    grad_norm: torch.Tensor


def remix_stems(stems: torch.Tensor, gain: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """``(batch, stems, window)`` -> same shape, each stem of each chunk times a uniform gain in
    ``gain`` and a random sign (drawn on the stems' device)."""
    shape = (stems.shape[0], stems.shape[1], 1)
    gains = torch.empty(shape, device=stems.device).uniform_(gain[0], gain[1], generator=generator)
    signs = torch.randint(0, 2, shape, device=stems.device, generator=generator) * 2 - 1
    return stems * (gains * signs)


def shuffle_stems(stems: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Re-pair stems across the batch (Demucs-style): ``(batch, stems, window)`` -> same shape,
    where stem s of item i is stem s of item ``perm_s[i]``, one random permutation per stem
    (drawn on the device). Every stem of the batch is used exactly once."""
    batch, count, _ = stems.shape
    keys = torch.rand(count, batch, device=stems.device, generator=generator)
    source = keys.argsort(dim=1).T                                  # (batch, stems): source item
    return stems[source, torch.arange(count, device=stems.device)[None, :]]


def lr_factor(step: int, total: int, schedule: str, warmup: int = 0, step_every: int = 10_000,
              gamma: float = 0.5) -> float:
    """LR multiplier for optimizer step ``step`` (0-based) of ``total``: linear warm-up from
    1/warmup to 1 over ``warmup`` steps, then "constant" 1, "cosine" from 1 to 0 at ``total``,
    or "step" ``gamma ** (steps after warm-up // step_every)``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    after = step - warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(after, span) / span))
    if schedule == "step":
        return gamma ** (after // step_every)
    return 1.0


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


class StepRunner:
    """One optimizer step on a batch of stems ``(batch, stems, window)`` already on the device.

    ``model`` may be compiled or DDP-wrapped; ``weights`` (stems,) weigh the loss per stem;
    ``amp_dtype`` enables autocast for the forward pass (the loss is computed in float32);
    ``remix_gain`` (gain/sign remix) and ``remix_across`` (re-pairing) need ``generator``;
    ``gain`` is the gain staging; ``clip_grad`` the max gradient norm (None: no clipping). With
    a fused optimizer a non-finite step is skipped on the device; any other optimizer needs one
    host sync per step for that.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                 context: int, target: int, weights: torch.Tensor | None = None,
                 amp_dtype: torch.dtype | None = None, remix_gain: tuple[float, float] | None = None,
                 remix_across: bool = False, generator: torch.Generator | None = None,
                 gain: GainStaging = GainStaging(), clip_grad: float | None = None) -> None:
        if (remix_gain is not None or remix_across) and generator is None:
            raise ValueError("remixing needs a torch.Generator")
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0, got {clip_grad}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.context, self.target, self.weights = context, target, weights
        self.amp_dtype, self.remix_gain, self.generator = amp_dtype, remix_gain, generator
        self.remix_across, self.gain, self.clip_grad = remix_across, gain, clip_grad
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, stems: torch.Tensor) -> StepOutput:
        if stems.dim() != 3 or stems.shape[-1] != 2 * self.context + self.target:
            raise ValueError(f"stems must be (batch, stems, {2 * self.context + self.target}), "
                             f"got {tuple(stems.shape)}")
        if self.remix_across:
            stems = shuffle_stems(stems, self.generator)
        if self.remix_gain is not None:
            stems = remix_stems(stems, self.remix_gain, self.generator)
        mixture = stems.sum(dim=1, keepdim=True)
        target = stems[:, :, self.context:self.context + self.target]
        scale = self.gain.scale(mixture)
        with torch.autocast(stems.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            estimate = self.model(mixture / scale, self.target)
        loss, per_stem = self.loss_fn(estimate.float(), target / scale, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        skipped, norm = self._update(loss)
        return StepOutput(loss.detach(), per_stem.detach(), mixture, estimate.detach().float() * scale,
                          target, skipped, norm)

    def _update(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, then step unless the loss or the gradient norm is non-finite -> (skipped, norm)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        bad = (~(torch.isfinite(loss.detach()) & torch.isfinite(norm))).float()
        if self.clip_grad is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_grad, norm)
        if _is_fused(self.optimizer):
            self.optimizer.found_inf = bad          # fused Adam skips the update (and its step count)
            self.optimizer.step()
        elif not bad.item():
            self.optimizer.step()
        return bad, norm.detach()
