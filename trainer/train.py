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

import numpy as np
import torch
from torch import nn

from synth_server.client import StreamClient
from synth_server.protocol import BatchSpec

from .checkpoint import CheckpointManager, LoadedCheckpoint, check_resume, load_checkpoint, make_checkpoint
from .config import DistConfig, TrainConfig, resolve_amp, resolve_compile, resolve_device
from .data import stems_to_torch
from .gain import GainStaging
from .logging_utils import RunLogger, git_commit, write_run_files
from .losses import get_loss
from .models import build_model, check_context, count_parameters, probe_model, receptive_field, required_context
from .step import StepOutput, StepRunner, lr_factor, remix_stems  # noqa: F401 - remix_stems re-exported
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


class _Run:
    """State of one training run: device, model, optimizer, step, checkpoints (``_loop`` steps it)."""

    def __init__(self, cfg: TrainConfig, dist: DistConfig, notify: Callable[[str], None]) -> None:
        self.cfg, self.dist, self.notify = cfg, dist, notify
        self.device = resolve_device(cfg.device, dist.local_rank)
        threads = cfg.torch_threads or (1 if self.device.type == "cpu" else None)
        if threads is not None:
            torch.set_num_threads(threads)
        self.amp = resolve_amp(cfg.amp, self.device)
        self.compile = resolve_compile(cfg.compile, self.device)
        self.manager = CheckpointManager(cfg.run_dir, cfg.keep_checkpoints)
        self.resume = self._resume_checkpoint()
        self.commit = git_commit()
        self.last_saved: Path | None = None
        self.saved_step = -1
        self.wait_total = 0.0
        self.last_loss: float | None = None
        self.gain = GainStaging(cfg.gain) if self.resume is None else self.resume.gain
        self.best: float | None = None if self.resume is None else self.resume.data.get("best_valid")
        self.skipped_total = 0
        self.streak: torch.Tensor | None = None      # skipped steps in a row, on the device

    def _resume_checkpoint(self) -> LoadedCheckpoint | None:
        last = self.manager.last
        if self.cfg.resume:
            if not last.is_file():   # the same command starts a run and continues it after a restart
                self.notify(f"--resume: {last} does not exist yet, starting a new run")
                return None
            return load_checkpoint(last)
        if last.exists():
            raise ValueError(f"{self.cfg.run_dir} already holds {last.name}; pass --resume to continue "
                             "that run or choose a new --run-dir")
        return None

    def build(self, spec: BatchSpec) -> None:
        """Model (stems from the spec), optimizer, resume state, wrappers, step runner."""
        cfg = self.cfg
        self.spec = spec
        model_cfg = cfg.architecture().for_stream(spec.sample_rate, spec.window, len(spec.stems))
        check_context(model_cfg, spec.context, model_name=self.model_name, flag="--context")
        if cfg.stem_weights is not None and len(cfg.stem_weights) != len(spec.stems):
            raise ValueError(f"--stem-weights has {len(cfg.stem_weights)} values; the stream has "
                             f"{len(spec.stems)} stems {list(spec.stems)}")
        if self.resume is not None:
            check_resume(self.resume, model_cfg, self.model_name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = build_model(model_cfg).to(self.device)
        probe_model(self.model, spec.window, spec.target, self.model_name)
        self.model_cfg = model_cfg
        # fused Adam (CPU and CUDA) skips a non-finite update on the device (StepRunner)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=True)
        self.step = self._restore()
        self.start_step = self.step
        self.streak = torch.zeros((), device=self.device)
        self.runner = StepRunner(
            self._wrap(self.model), self.optimizer, get_loss(cfg.loss, balance=cfg.balance),
            context=spec.context, target=spec.target, weights=self._weights(),
            amp_dtype=self.amp, remix_gain=cfg.remix_gain if cfg.remix else None,
            remix_across=cfg.remix_across, generator=self._generator(), gain=self.gain,
            clip_grad=cfg.clip_grad)

    def set_lr(self) -> None:
        """The schedule's learning rate for the coming step (a Python float: no sync)."""
        cfg = self.cfg
        lr = cfg.lr * lr_factor(self.step, cfg.steps, cfg.lr_schedule, cfg.warmup_steps,
                                cfg.lr_step_every, cfg.lr_gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _restore(self) -> int:
        if self.resume is None:
            return 0
        self.model.load_state_dict(self.resume.data["model"])
        if self.resume.data.get("optimizer"):
            self.optimizer.load_state_dict(self.resume.data["optimizer"])
        for group in self.optimizer.param_groups:    # a checkpoint of an older run may say unfused
            group.update(lr=self.cfg.lr, fused=True, foreach=None)
        if self.resume.loss != self.cfg.loss:
            self.notify(f"note: resuming a run trained with loss {self.resume.loss!r} using {self.cfg.loss!r}")
        return self.resume.step

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.compile else model

    def _weights(self) -> torch.Tensor | None:
        if self.cfg.stem_weights is None:
            return None
        return torch.tensor(self.cfg.stem_weights, dtype=torch.float32, device=self.device)

    def _generator(self) -> torch.Generator | None:
        if not (self.cfg.remix or self.cfg.remix_across):
            return None
        seed = np.random.SeedSequence([self.cfg.seed, self.dist.rank, self.step]).generate_state(1)[0]
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @property
    def model_name(self) -> str:
        """The preset name, or ``<kind>+config`` when --model-config set the architecture."""
        custom = self.cfg.model_config
        return self.cfg.model if custom is None else f"{custom.KIND}+config"

    def describe(self) -> str:
        rf, sr = receptive_field(self.model_cfg), self.spec.sample_rate
        seen = (f"receptive field {rf} samples ({rf / sr * 1000:.1f} ms)" if rf is not None
                else f"sees the whole {self.spec.window}-sample window ({self.spec.window / sr:.2f} s)")
        return (f"model {self.model_name} ({self.model_cfg.KIND}): {count_parameters(self.model):,} parameters, "
                f"{seen}, context {required_context(self.model_cfg)}"
                f" per side; stream sends {self.spec.context}); stems {list(self.spec.stems)}; device "
                f"{self.device}, amp {self.amp or 'off'}, compile {'on' if self.compile else 'off'}, "
                f"{torch.get_num_threads()} CPU threads, {self.dist.world_size} process(es); gain staging "
                f"{self.gain.mode}, loss {self.cfg.loss}{' (level-balanced)' if self.cfg.balance else ''}")

    def checkpoint(self, valid: dict | None = None) -> dict:
        return make_checkpoint(self.model, self.optimizer, step=self.step, model_config=self.model_cfg,
                               model_name=self.model_name, loss=self.cfg.loss, spec=self.spec,
                               train_config=self.cfg.to_dict(), commit=self.commit, gain=self.gain,
                               extra={"best_valid": self.best, "valid": valid})

    def save(self) -> Path:
        """Checkpoint of the current step (rank 0 only; no-op when already saved)."""
        if self.dist.is_main and self.saved_step != self.step:
            self.last_saved = self.manager.save(self.checkpoint())
            self.saved_step = self.step
        return self.last_saved

    def run_config(self) -> dict:
        return {**self.cfg.to_dict(), "model_config": self.model_cfg.to_dict(), "stream": self.spec.to_header(),
                "device": str(self.device), "amp": str(self.amp or "off"), "compiled": self.compile,
                "torch_threads": torch.get_num_threads(), "world_size": self.dist.world_size,
                "start_step": self.start_step}


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


def _stop_agreed(run: _Run, stop: threading.Event) -> bool:
    """Whether to stop after this step; across DDP ranks only at log steps, all ranks agreeing."""
    if not run.dist.distributed:
        return stop.is_set()
    if run.step % run.cfg.log_every:
        return False
    flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _window_row(run: _Run, window: _Window, client: StreamClient) -> dict:
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


def _check_streak(run: _Run) -> None:
    """FloatingPointError once the last ``--max-bad-steps`` updates were all skipped (one sync)."""
    streak = int(run.streak.item())
    if streak >= run.cfg.max_bad_steps:
        raise FloatingPointError(
            f"{streak} steps in a row had a non-finite loss or gradient (updates skipped) up to step "
            f"{run.step}; weights are those of the last good step (last checkpoint: step {run.saved_step}); "
            "lower --lr, try --clip-grad, or check the stream")


def _validate(run: _Run, validation: PeriodicValidation, logger: RunLogger) -> None:
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


def _loop(run: _Run, client: StreamClient, logger: RunLogger, stop: threading.Event,
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
    run = _Run(cfg, dist, notify if dist.is_main else (lambda _msg: None))
    owns_group = _init_distributed(dist, run.device)
    client = StreamClient(cfg.connect, cfg.batch_size, prefetch=cfg.prefetch, timeout=cfg.timeout,
                          client_id=f"rank{dist.rank}" if dist.distributed else None, curve=curve)
    try:
        return _train(run, client, stop, curve)
    finally:
        client.close()
        if owns_group:
            torch.distributed.destroy_process_group()


def _train(run: _Run, client: StreamClient, stop: threading.Event, curve) -> TrainSummary:
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
