"""Run logs of the trainer: JSONL metrics, optional TensorBoard, server stats, run files.

* ``MetricsLog``: one JSON object per line in ``run_dir/metrics.jsonl`` (appended on resume).
* ``TensorBoardLog``: scalars and audio through ``torch.utils.tensorboard`` when the
  ``tensorboard`` package is installed; otherwise one notice and nothing else.
* the broker's stats through ``synth_server.dealer.ControlClient`` without ever blocking the
  training loop; the latest answer gives the current reuse R and pool figures.
* ``RunLogger``: all of the above plus a tqdm bar, for rank 0 of a training run.
* ``git_commit`` / ``write_run_files``: ``config.json`` and ``git.txt`` in the run dir.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from synth_server.dealer import ControlClient

log = logging.getLogger(__name__)

TB_MISSING = ("TensorBoard logging is off: the 'tensorboard' package is not installed "
              "(pip install 'stemstream[tensorboard]'); metrics.jsonl is still written")


def _json_ready(value):
    """Floats that JSON can hold (NaN/inf -> None), recursively through dicts."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per call to ``path`` and flushes it at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(_json_ready(row), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLog:
    """TensorBoard scalars and audio in ``log_dir``; inert (``enabled`` False) without tensorboard.

    ``notify`` receives the one-line notice when the package is missing.
    """

    def __init__(self, log_dir: Path, notify: Callable[[str], None] = log.info) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            notify(TB_MISSING)
            self._writer = None
        else:
            self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Each finite number in ``values`` as scalar ``key`` at ``step``."""
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)

    def audio(self, step: int, clips: dict[str, torch.Tensor], sample_rate: int) -> None:
        """Each ``(time,)`` clip (clipped to [-1, 1]) as audio ``key`` at ``step``."""
        if self._writer is None:
            return
        for key, clip in clips.items():
            wave = clip.detach().float().clamp(-1.0, 1.0).cpu()
            self._writer.add_audio(key, wave, step, sample_rate=sample_rate)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def server_figures(stats: dict | None) -> dict:
    """Flat figures of a broker stats object: reuse R, pool fill, server rates (chunks/s)."""
    if not stats:
        return {}
    out: dict = {}
    reuse = stats.get("reuse")
    if isinstance(reuse, dict) and isinstance(reuse.get("value"), (int, float)):
        out["reuse"] = reuse["value"]
    pool = stats.get("pool")
    if isinstance(pool, dict) and pool.get("capacity"):
        out["pool_fill"] = round(float(pool.get("size", 0)) / float(pool["capacity"]), 4)
    rates = stats.get("rates")
    if isinstance(rates, dict):
        for key in ("kept", "served"):
            if isinstance(rates.get(key), (int, float)):
                out[f"server_{key}_per_s"] = round(float(rates[key]), 2)
    return out


class RunLogger:
    """Rank-0 outputs of a training run; on other ranks (``main`` False) every method is inert.

    ``run_dir/metrics.jsonl`` rows, TensorBoard scalars and audio under ``run_dir/tb`` (when
    installed), a tqdm bar from ``initial_step`` to ``total_steps``, and a ``ControlClient`` probe
    of ``connect`` asked every ``stats_every`` steps (0 or no ``connect``: none). Audio is
    wanted every ``audio_every`` steps (0: never).
    """

    def __init__(self, run_dir: Path, *, total_steps: int, initial_step: int, main: bool = True,
                 connect: str | None = None, curve: tuple[bytes, bytes, bytes] | None = None,
                 stats_every: int = 0, audio_every: int = 0, notify: Callable[[str], None] = log.info) -> None:
        from tqdm import tqdm

        run_dir = Path(run_dir)
        self.main, self.stats_every, self.audio_every = main, stats_every, audio_every
        self.metrics = MetricsLog(run_dir / "metrics.jsonl") if main else None
        self.tb = TensorBoardLog(run_dir / "tb", notify) if main else None
        probe = main and connect is not None and stats_every > 0
        self.stats = ControlClient(connect, curve) if probe else None
        if self.stats is not None:
            self.stats.request_stats()    # so the first row already has R
        # a bar on a terminal; in logs (docker, CI) one plain line per logged row instead
        self.plain = main and not sys.stderr.isatty()
        quiet = {} if main and not self.plain else {"disable": True}   # TQDM_DISABLE=1 silences it too
        self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, unit="step",
                        desc="train", **quiet)
        self.notify = notify

    def on_step(self, step: int) -> None:
        """Advance the bar; ask the server for stats when due."""
        self.bar.update(1)
        if self.stats is not None and step % self.stats_every == 0:
            self.stats.request_stats()

    def wants_audio(self, step: int) -> bool:
        return self.tb is not None and self.tb.enabled and self.audio_every > 0 and step % self.audio_every == 0

    def audio(self, step: int, clips: dict[str, torch.Tensor], sample_rate: int) -> None:
        if self.tb is not None:
            self.tb.audio(step, clips, sample_rate)

    def write(self, row: dict) -> dict:
        """Add the latest server figures to ``row``, write it everywhere; returns the row."""
        if self.stats is not None:
            row = {**row, **server_figures(self.stats.latest_stats())}
        if not self.main:
            return row
        self.metrics.write(row)
        if self.plain:
            self.notify("step {step} loss {loss:.5f} steps/s {sps:.2f} data-wait {wait:.1%}".format(
                step=row["step"], loss=row["loss"], sps=row.get("steps_per_s") or 0.0,
                wait=row.get("wait_share") or 0.0))
        scalars = {"loss/total": row["loss"], "speed/steps_per_s": row.get("steps_per_s"),
                   "speed/chunks_per_s": row.get("chunks_per_s"), "data/wait_share": row.get("wait_share")}
        scalars.update({f"loss/{k[5:]}": v for k, v in row.items() if k.startswith("loss_")})
        scalars.update({f"server/{k}": row[k] for k in ("reuse", "pool_fill") if k in row})
        self.tb.scalars(row["step"], scalars)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", wait=f"{row.get('wait_share', 0):.0%}",
                             R=row.get("reuse", "?"))
        return row

    def write_valid(self, step: int, figures: dict, best: float | None) -> None:
        """A validation row (``step``, ``time``, the ``valid_*`` figures, ``valid_best``) to
        metrics.jsonl, TensorBoard (``valid/sisdri``, ``valid/sisdri_<stem>``, ``valid/sisdr``)
        and one line."""
        if not self.main:
            return
        self.metrics.write({"step": step, "time": round(time.time(), 3), **figures, "valid_best": best})
        self.tb.scalars(step, {f"valid/{k[6:]}": v for k, v in figures.items()})
        stems = "  ".join(f"{k[13:]} {v:+.2f}" for k, v in figures.items() if k.startswith("valid_sisdri_"))
        self.notify(f"step {step} validation SI-SDRi {figures['valid_sisdri']:+.2f} dB ({stems}); "
                    f"best {best if best is None else f'{best:+.2f}'}")

    def close(self) -> None:
        self.bar.close()
        for part in (self.metrics, self.tb, self.stats):
            if part is not None:
                part.close()


def git_commit(folder: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``folder`` (default: this package), or
    "unknown" when git or the repository is unavailable."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else "unknown"


def write_run_files(run_dir: Path, config: dict, commit: str) -> None:
    """``config.json`` (the resolved config, with ``commit`` and the host) and ``git.txt``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    body = {**config, "commit": commit, "host": socket.gethostname(), "pid": os.getpid(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = run_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "config.json")
    (run_dir / "git.txt").write_text(commit + "\n", encoding="utf-8")
