"""Validation during training on a fixed set served by the broker (``synth_server.fixed_set``).

The trainer has no FluidSynth: at start it asks the broker for a fixed set of excerpts of the
valid split (the same audio every time), and every ``--valid-every`` steps scores the model on it:
each excerpt's mixture is separated like a file with the run's gain staging (``gain.apply_separator``),
the estimate is scored on the excerpt minus the model's context on each side, and SI-SDR is measured
there against the stems and against the mixture itself. Item-stem pairs whose reference is below
``SILENT_DBFS`` are left out (SI-SDR against silence is meaningless). Figures (dB):
``valid_sisdri_<stem>`` (mean SI-SDRi over that stem's sounding items), ``valid_sisdri`` (mean of
the per-stem figures, every stem counting once), ``valid_sisdr`` likewise for the model's SI-SDR.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch
import zmq
from torch import nn

from synth_server.fixed_set import FixedSet, fetch_fixed_set

from .gain import GainStaging
from .metrics import si_sdr
from .separate import separate_waveform

SILENT_DBFS = -60.0


def excerpt_scores(model: nn.Module, stems: torch.Tensor, gain: GainStaging, device: torch.device,
                   amp_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Per item-stem figures of excerpts ``stems`` (n, stems, samples): ``model`` and ``mixture``
    SI-SDR (dB) and ``active`` (bool), each (n, stems), on the centre ``samples - 2 * context``.

    Each excerpt's mixture is separated like a file (``separate.separate_waveform``: windows the
    model accepts, gain staging per window, zeros beyond the ends), so every architecture is
    scored the same way; the centre region is where every output had real context.
    """
    ctx = int(model.context)
    target = stems.shape[-1] - 2 * ctx
    if target < 1:
        raise ValueError(f"excerpts of {stems.shape[-1]} samples are too short for a model needing "
                         f"{ctx} samples of context per side")
    estimates = []
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            for item in stems:
                mono = item.sum(dim=0).numpy()
                estimates.append(torch.from_numpy(separate_waveform(model, mono, stems.shape[-1], device, gain=gain)))
    finally:
        model.train(was_training)
    reference = stems[..., ctx:ctx + target]
    estimate = torch.stack(estimates)[..., ctx:ctx + target]
    mixture = reference.sum(dim=1, keepdim=True).expand_as(reference)
    power = reference.double().pow(2).mean(dim=-1)
    return {"model": si_sdr(estimate, reference), "mixture": si_sdr(mixture, reference),
            "active": 10 * torch.log10(power.clamp_min(1e-30)) >= SILENT_DBFS}


def summarise_scores(scores: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, float]:
    """``valid_sisdri``, ``valid_sisdr`` and ``valid_sisdri_<stem>`` (see the module docstring);
    stems silent in every item are left out of the means (NaN per stem)."""
    out: dict[str, float] = {}
    per_i, per_m = [], []
    for i, name in enumerate(names):
        active = scores["active"][:, i]
        if not active.any():
            out[f"valid_sisdri_{name}"] = float("nan")
            continue
        improvement = (scores["model"][:, i] - scores["mixture"][:, i])[active].mean().item()
        out[f"valid_sisdri_{name}"] = round(improvement, 3)
        per_i.append(improvement)
        per_m.append(scores["model"][:, i][active].mean().item())
    out["valid_sisdri"] = round(float(np.mean(per_i)), 3) if per_i else float("nan")
    out["valid_sisdr"] = round(float(np.mean(per_m)), 3) if per_m else float("nan")
    return out


class Validator:
    """Scores a model on one fixed set; ``best`` is the highest ``valid_sisdri`` seen so far."""

    def __init__(self, fixed: FixedSet, stem_names: tuple[str, ...], best: float | None = None) -> None:
        if tuple(fixed.stem_names) != tuple(stem_names):
            raise ValueError(f"fixed set stems {fixed.stem_names} != stream stems {stem_names}")
        self.fixed, self.names, self.best = fixed, tuple(stem_names), best
        self.stems = torch.from_numpy(fixed.stems)

    def __call__(self, model: nn.Module, gain: GainStaging, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> tuple[dict[str, float], bool]:
        """-> (figures, whether they are the best so far)."""
        figures = summarise_scores(excerpt_scores(model, self.stems, gain, device, amp_dtype), self.names)
        value = figures["valid_sisdri"]
        improved = bool(np.isfinite(value)) and (self.best is None or value > self.best)
        if improved:
            self.best = value
        return figures, improved


class PendingFixedSet:
    """``fetch_fixed_set`` in a daemon thread, so training starts while the broker renders it.

    ``take()`` -> the FixedSet once it arrived (then None again), else None; ``error`` holds the
    reason when the fetch failed (an old broker, no valid songs, a timeout).
    """

    def __init__(self, address: str, split: str, n: int, seconds: float, seed: int, *,
                 timeout: float, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.result: FixedSet | None = None
        self.error: str | None = None
        self.done = threading.Event()
        args = (address, split, n, seconds, seed)
        self._thread = threading.Thread(target=self._run, args=(args, timeout, curve), name="fixed-set",
                                        daemon=True)
        self._thread.start()

    def _run(self, args: tuple, timeout: float, curve) -> None:
        try:
            self.result = fetch_fixed_set(*args, timeout=timeout, curve=curve)
        except (TimeoutError, ValueError, zmq.ZMQError) as exc:
            self.error = str(exc)
        finally:
            self.done.set()


class PeriodicValidation:
    """Validation during training: the fixed set arrives in the background (``PendingFixedSet``);
    each call scores the model once it is there -> (figures, best so far) or None (not yet, or
    the fetch failed: said once through ``notify``). ``wait`` seconds: how long a call may wait
    for the set (the last validation of a run waits, so a short run still gets its figure)."""

    def __init__(self, pending: PendingFixedSet, stem_names: tuple[str, ...], best: float | None,
                 notify: Callable[[str], None]) -> None:
        self.pending, self.names, self.notify = pending, tuple(stem_names), notify
        self.validator: Validator | None = None
        self.initial_best, self.warned = best, False

    @property
    def best(self) -> float | None:
        return self.validator.best if self.validator is not None else self.initial_best

    def __call__(self, model: nn.Module, gain: GainStaging, device: torch.device,
                 amp_dtype: torch.dtype | None = None, wait: float = 0.0) -> tuple[dict[str, float], bool] | None:
        if wait > 0:
            self.pending.done.wait(wait)
        if self.validator is None and self.pending.result is not None:
            fs = self.pending.result
            self.validator = Validator(fs, self.names, best=self.initial_best)
            self.notify(f"validation set: {fs.key.n} excerpts x {fs.key.seconds:g} s of split {fs.key.split} "
                        f"from {len({e['song'] for e in fs.excerpts})} songs (digest {fs.digest})")
        if self.validator is None:
            if self.pending.error is not None and not self.warned:
                self.warned = True
                self.notify(f"note: no validation ({self.pending.error})")
            elif self.pending.error is None:
                self.notify("note: the validation set is still being rendered; validation skipped this time")
            return None
        return self.validator(model, gain, device, amp_dtype)
