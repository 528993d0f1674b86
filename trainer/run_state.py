"""State of one training run: device, model, optimizer, step runner, resume, checkpoints.

``train._loop`` steps it; this file builds it from the config and the stream's spec.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from synth_server.protocol import BatchSpec

from .checkpoint import (
    CheckpointManager,
    LoadedCheckpoint,
    check_resume,
    load_checkpoint,
    make_checkpoint,
)
from .config import (
    DistConfig,
    TrainConfig,
    resolve_amp,
    resolve_compile,
    resolve_device,
)
from .gain import GainStaging
from .logging_utils import git_commit
from .losses import get_loss
from .models import (
    build_model,
    check_context,
    count_parameters,
    probe_model,
    receptive_field,
    required_context,
)
from .step import StepRunner, lr_factor


class TrainingRun:
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
