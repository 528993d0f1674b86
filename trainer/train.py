"""Training from the synthesis stream: the training loop around ``step.StepRunner``.

Data path per step: the wire batch ``(batch, stems, window)`` (float16/int16/float32) goes to
the device as is (pinned memory, non-blocking on CUDA) and is cast there; the step (``step.py``)
remixes, stages the gain, runs the model and updates on the device. The loop reads device values
back only at log steps and every ``--max-bad-steps`` steps (the run of skipped non-finite steps),
validates on the broker's fixed set every ``--valid-every`` steps and keeps ``best.pt``.
See docs/training.md.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from synth_server.client import StreamClient
from synth_server.protocol import BatchSpec

from .config import DistConfig, TrainConfig
from .data import stems_to_torch
from .logging_utils import RunLogger, write_run_files
from .run_state import TrainingRun
from .step import StepOutput
from .validate import PendingFixedSet, PeriodicValidation

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """How a run ended: steps ``start_step`` -> ``step``, last logged ``loss``, last
    ``checkpoint`` written, whether it was ``interrupted``, overall data-wait share."""

    start_step: int
    step: int
    loss: float | None
    checkpoint: Path | None
    interrupted: bool
    wait_share: float


def wait_for_spec(client: StreamClient, seconds: float, stop: threading.Event) -> BatchSpec | None:
    """The stream's spec once the broker's welcome arrived; None when ``stop`` is set first."""
    deadline = time.monotonic() + seconds
    while client.spec is None:
        if stop.is_set():
            return None
        if time.monotonic() > deadline:
            raise TimeoutError(f"no welcome from {client.address} within {seconds:g} s "
                               "(is `synth-server serve` running there? does it need --curve-keys?)")
        time.sleep(0.05)
    return client.spec


class _Window:
    """Sums since the last log, on the device (no sync per step): loss, per-stem losses and
    gradient norm of the steps that updated, counts of updated and skipped steps; data wait."""

    def __init__(self, stems: int, device: torch.device) -> None:
        self.sums = torch.zeros(4 + stems, device=device)   # loss, grad norm, updated, skipped, stems
        self.steps, self.wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, out: StepOutput, wait: float) -> None:
        ok = out.skipped == 0
        zero = torch.zeros((), device=out.loss.device)
        self.sums[0] += torch.where(ok, out.loss, zero)
        self.sums[1] += torch.where(ok, out.grad_norm, zero)
        self.sums[2] += ok.float()
        self.sums[3] += out.skipped
        self.sums[4:] += torch.where(ok, out.per_stem, zero)
        self.steps += 1
        self.wait += wait


def _next_batch(client: StreamClient, stop: threading.Event | None, give_up: float):
    """The next batch, or None once ``stop`` is set; TimeoutError after ``give_up`` seconds."""
    start = time.monotonic()
    while stop is None or not stop.is_set():
        try:
            return client.get(timeout=0.5)
        except TimeoutError:
            if time.monotonic() - start > give_up:
                raise TimeoutError(f"no batch from {client.address} for {give_up:g} s (--give-up)") from None
    return None


def _stop_agreed(run: TrainingRun, stop: threading.Event) -> bool:
    """Whether to stop after this step; across DDP ranks only at log steps, all ranks agreeing."""
    if not run.dist.distributed:
        return stop.is_set()
    if run.step % run.cfg.log_every:
        return False
    flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _window_row(run: TrainingRun, window: _Window, client: StreamClient) -> dict:
    """Reduce the window's losses over ranks, check them, and make one metrics row."""
    sums = window.sums.clone()
    if run.dist.distributed:
        torch.distributed.all_reduce(sums)
        sums /= run.dist.world_size
    values = sums.tolist()
    updated, skipped = values[2], int(round(values[3]))
    mean = [v / updated if updated else float("nan") for v in values]
    run.skipped_total += skipped
    wall = max(time.perf_counter() - window.start, 1e-9)
    return {"step": run.step, "time": round(time.time(), 3), "loss": mean[0],
            **{f"loss_{name}": v for name, v in zip(run.spec.stems, mean[4:])},
            "grad_norm": mean[1], "skipped_steps": skipped, "skipped_total": run.skipped_total,
            "lr": run.optimizer.param_groups[0]["lr"], "steps_per_s": window.steps / wall,
            "chunks_per_s": window.steps * run.cfg.batch_size * run.dist.world_size / wall,
            "wait_share": min(1.0, window.wait / wall), "malformed": client.malformed,
            "reconnects": client.reconnects}


def _audio_clips(spec: BatchSpec, out: StepOutput) -> dict[str, torch.Tensor]:
    """Mixture, estimates and targets (target region) of the batch's first item, ``(target,)`` each."""
    c, t = spec.context, spec.target
    clips = {"audio/mixture": out.mixture[0, 0, c:c + t]}
    for i, name in enumerate(spec.stems):
        clips[f"audio/{name}_estimate"] = out.estimate[0, i]
        clips[f"audio/{name}_target"] = out.target[0, i]
    return clips


def _check_streak(run: TrainingRun) -> None:
    """FloatingPointError once the last ``--max-bad-steps`` updates were all skipped (one sync)."""
    streak = int(run.streak.item())
    if streak >= run.cfg.max_bad_steps:
        raise FloatingPointError(
            f"{streak} steps in a row had a non-finite loss or gradient (updates skipped) up to step "
            f"{run.step}; weights are those of the last good step (last checkpoint: step {run.saved_step}); "
            "lower --lr, try --clip-grad, or check the stream")


def _validate(run: TrainingRun, validation: PeriodicValidation, logger: RunLogger) -> None:
    """Score the bare model on the fixed set when it is there (the last step waits for it up to
    ``--give-up``); log; keep best.pt when it improved."""
    wait = run.cfg.give_up if run.step == run.cfg.steps else 0.0
    result = validation(run.model, run.gain, run.device, run.amp, wait=wait)
    if result is None:
        return
    figures, improved = result
    run.best = validation.best
    logger.write_valid(run.step, figures, best=run.best)
    if improved:
        run.manager.save_best(run.checkpoint(valid=figures))


def _loop(run: TrainingRun, client: StreamClient, logger: RunLogger, stop: threading.Event,
          validation: PeriodicValidation | None = None) -> bool:
    """Steps up to ``cfg.steps``; returns True when stopped early by ``stop``."""
    cfg = run.cfg
    window = _Window(len(run.spec.stems), run.device)
    while run.step < cfg.steps:
        t0 = time.perf_counter()
        # DDP ranks only stop together, at log steps (``_stop_agreed``)
        batch = _next_batch(client, None if run.dist.distributed else stop, cfg.give_up)
        wait = time.perf_counter() - t0
        if batch is None:
            return True
        run.set_lr()
        out = run.runner(stems_to_torch(batch.stems, run.device))
        run.step += 1
        run.wait_total += wait
        window.add(out, wait)
        run.streak = (run.streak + 1) * out.skipped
        if run.step % cfg.max_bad_steps == 0:
            _check_streak(run)
        logger.on_step(run.step)
        if logger.wants_audio(run.step):
            logger.audio(run.step, _audio_clips(run.spec, out), run.spec.sample_rate)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            row = logger.write(_window_row(run, window, client))
            run.last_loss = row["loss"]
            window = _Window(len(run.spec.stems), run.device)
        if validation is not None and (run.step % cfg.valid_every == 0 or run.step == cfg.steps):
            _validate(run, validation, logger)
        if run.step % cfg.checkpoint_every == 0:
            run.save()
        if _stop_agreed(run, stop):
            return True
    return False


def _init_distributed(dist: DistConfig, device: torch.device) -> bool:
    """Join the default process group (nccl on CUDA, gloo on CPU); True when this call made it.

    Rendezvous uses torch's env:// method (MASTER_ADDR/MASTER_PORT, set by torchrun).
    """
    if not dist.distributed or torch.distributed.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world_size)
    return True


def run_train(cfg: TrainConfig, dist: DistConfig = DistConfig(), *, stop: threading.Event | None = None,
              curve: tuple[bytes, bytes, bytes] | None = None,
              notify: Callable[[str], None] = log.info) -> TrainSummary:
    """Train ``cfg.model`` on the stream at ``cfg.connect`` up to step ``cfg.steps``.

    ``stop`` (e.g. set by a signal handler) ends the run cleanly after the current step with a
    checkpoint; a KeyboardInterrupt does the same. ``curve``: client CURVE keys. Under
    ``dist.distributed`` the process group is joined here (and left at the end) and the model
    is wrapped in DDP; only rank 0 writes files. Raises ValueError for a bad setup (context too
    short, config mismatch on resume), TimeoutError when the stream stays silent (after saving a
    checkpoint), FloatingPointError when the loss stops being finite.
    """
    stop = stop or threading.Event()
    run = TrainingRun(cfg, dist, notify if dist.is_main else (lambda _msg: None))
    owns_group = _init_distributed(dist, run.device)
    client = StreamClient(cfg.connect, cfg.batch_size, prefetch=cfg.prefetch, timeout=cfg.timeout,
                          client_id=f"rank{dist.rank}" if dist.distributed else None, curve=curve)
    try:
        return _train(run, client, stop, curve)
    finally:
        client.close()
        if owns_group:
            torch.distributed.destroy_process_group()


def _train(run: TrainingRun, client: StreamClient, stop: threading.Event, curve) -> TrainSummary:
    cfg = run.cfg
    run.notify(f"waiting for the stream at {cfg.connect} ...")
    spec = wait_for_spec(client, cfg.give_up, stop)   # the server may still be scanning its corpus
    if spec is None:
        return TrainSummary(0, 0, None, None, True, 0.0)
    run.build(spec)
    run.notify(run.describe())
    if run.dist.is_main:
        write_run_files(cfg.run_dir, run.run_config(), run.commit)
    if run.step >= cfg.steps:
        run.notify(f"checkpoint is at step {run.step} >= --steps {cfg.steps}: nothing to do")
        return TrainSummary(run.step, run.step, None, run.manager.last, False, 0.0)
    main = run.dist.is_main
    logger = RunLogger(cfg.run_dir, total_steps=cfg.steps, initial_step=run.step, main=main,
                       connect=cfg.connect if cfg.stats_every else None, curve=curve,
                       stats_every=cfg.stats_every, audio_every=cfg.audio_every, notify=run.notify)
    validation = None
    if main and cfg.valid_every:
        pending = PendingFixedSet(cfg.connect, cfg.valid_split, cfg.valid_n, cfg.valid_seconds, cfg.valid_seed,
                                  timeout=max(cfg.give_up, 60.0), curve=curve)
        validation = PeriodicValidation(pending, run.spec.stems, run.best, run.notify)
    started = time.perf_counter()
    try:
        interrupted = _loop(run, client, logger, stop, validation)
    except KeyboardInterrupt:
        interrupted = True
    except TimeoutError:
        run.save()
        raise
    finally:
        logger.close()
    if interrupted:
        run.notify(f"stopped at step {run.step}: saving a checkpoint")
    run.save()
    share = min(1.0, run.wait_total / max(time.perf_counter() - started, 1e-9))
    return TrainSummary(run.start_step, run.step, run.last_loss, run.last_saved, interrupted, share)
