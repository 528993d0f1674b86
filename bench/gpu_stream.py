"""The server and the trainer of the GPU benchmark, as the user runs them: `synth-server serve` and
`trainer train` subprocesses, steered with `synth-server ctl`, read through metrics.jsonl.

``phase_figures`` reduces the trainer's log rows of one time span (one reuse setting) to
steps/s, chunks/s and the time-weighted data-wait share.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream import PY, ROOT, Server

NEVER = str(10**9)          # --steps / --checkpoint-every: the benchmark stops the run itself


class StreamSession:
    """`serve` with ``workers`` local workers on ``corpus`` (train split), then `trainer train` fed
    by it. Logs go to ``logs`` (serve.log, train.log); the run to ``run_dir``."""

    def __init__(self, corpus: Path, workers: int, pool_size: int, soundfont: Path, logs: Path,
                 run_dir: Path, index_cache: Path) -> None:
        self.logs, self.run_dir = logs, run_dir
        self.server = Server(corpus, workers, pool_size, logs / "serve.log", "--reuse", "1", "--split", "train",
                             "--soundfont", str(soundfont), "--index-cache", str(index_cache))
        self.trainer: subprocess.Popen | None = None
        self._train_log = None

    @property
    def address(self) -> str:
        return self.server.address

    def start_trainer(self, model: str, batch: int, device: str, log_every: int) -> None:
        cmd = [sys.executable, "-m", "trainer", "train", "--connect", self.address, "--run-dir", str(self.run_dir),
               "--model", model, "--batch-size", str(batch), "--device", device, "--steps", NEVER,
               "--checkpoint-every", NEVER, "--log-every", str(log_every), "--stats-every", str(log_every),
               "--audio-every", "0", "--timeout", "60", "--give-up", "120"]
        self._train_log = open(self.logs / "train.log", "w")
        self.trainer = subprocess.Popen(cmd, cwd=ROOT, stdout=self._train_log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def trainer_alive(self) -> bool:
        return self.trainer is not None and self.trainer.poll() is None

    def alive(self) -> bool:
        return self.server.proc.poll() is None and self.trainer_alive()

    def rows(self) -> list[dict]:
        """The trainer's metrics rows so far (a half-written last line is left for later)."""
        path = self.run_dir / "metrics.jsonl"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def wait_rows(self, count: int, until: float) -> bool:
        """True once the trainer logged ``count`` rows; False when it died or ``until`` passed."""
        while time.monotonic() < until and self.trainer_alive():
            if len(self.rows()) >= count:
                return True
            time.sleep(0.2)
        return len(self.rows()) >= count

    def ctl(self, key: str, value: str) -> None:
        subprocess.run([*PY, "ctl", "--connect", self.address, "set", key, value], cwd=ROOT, check=True,
                       capture_output=True, timeout=30)

    def stop_trainer(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the trainer saves last.pt and exits 130); SIGKILL after ``timeout``."""
        if self.trainer is None:
            return None
        if self.trainer.poll() is None:
            self.trainer.send_signal(signal.SIGTERM)
            try:
                self.trainer.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.trainer.pid, signal.SIGKILL)
                self.trainer.wait()
        if self._train_log is not None:
            self._train_log.close()
            self._train_log = None
        return self.trainer.returncode

    def close(self) -> None:
        self.stop_trainer()
        self.server.close()


def phase_figures(rows: list[dict], start: float, end: float, batch: int) -> dict:
    """Figures of the log rows written in ``(start, end]`` (epoch seconds).

    steps/s from the first to the last row's step and time; data-wait share weighted by each
    row's window duration (rows cover equal step counts, not equal times).
    """
    inside = [r for r in rows if start < r["time"] <= end]
    out: dict = {"rows": len(inside)}
    if len(inside) < 2:
        return out | {"note": "fewer than 2 log rows in this span"}
    first, last = inside[0], inside[-1]
    steps_per_s = (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)
    later = inside[1:]
    durations = [1.0 / max(r["steps_per_s"], 1e-9) for r in later]
    wait = sum(r["wait_share"] * d for r, d in zip(later, durations)) / sum(durations)
    kept = [r["server_kept_per_s"] for r in later if isinstance(r.get("server_kept_per_s"), (int, float))]
    return out | {"steps_per_s": steps_per_s, "chunks_per_s": steps_per_s * batch, "wait_share": wait,
                  "reuse_seen": sorted({r["reuse"] for r in inside if r.get("reuse") is not None}),
                  "server_kept_per_s": sum(kept) / len(kept) if kept else None,
                  "seconds": last["time"] - first["time"]}
