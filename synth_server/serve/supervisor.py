"""Local worker processes of `serve`: start ("spawn"), restart the dead, scale, stop without orphans.

Each local worker runs ``worker.run_worker`` in a fresh interpreter (start method "spawn":
FluidSynth and ZeroMQ are not fork-safe) against the broker's own address. Worker ids are
``local-<slot>.<generation>``, so the broker can tell a restarted worker from its predecessor.
Methods are called from the broker's thread only; none blocks longer than the shutdown grace.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass, replace

from synth_server.serve.config import WorkerConfig
from synth_server.serve.worker import run_worker_process

log = logging.getLogger(__name__)

FAST_FAIL_S = 10.0      # a worker that dies sooner than this after its start failed fast
MAX_BACKOFF_S = 30.0    # restart delay after repeated fast failures: 1, 2, 4, ... 30 s


@dataclass
class _Slot:
    index: int
    generation: int = 0
    process: multiprocessing.process.BaseProcess | None = None
    started: float = 0.0
    fast_fails: int = 0
    restart_at: float = 0.0
    stopping_since: float | None = None   # set while being retired (scale down)

    @property
    def worker_id(self) -> str:
        return f"local-{self.index}.{self.generation}"


class Supervisor:
    """Owns N local worker processes; ``template`` is copied per worker with its own id."""

    def __init__(self, template: WorkerConfig, grace_s: float = 5.0) -> None:
        self.template = template
        self.grace_s = grace_s
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._retiring: list[_Slot] = []
        self._exited: list[tuple[str, int | None]] = []

    # -- queries ------------------------------------------------------------------------------
    @property
    def target(self) -> int:
        return len(self._slots)

    def alive(self) -> int:
        return sum(1 for s in self._slots if s.process is not None and s.process.is_alive())

    def owns(self, worker_id: str) -> bool:
        return any(s.worker_id == worker_id for s in self._slots)

    def take_exited(self) -> list[tuple[str, int | None]]:
        """``(worker_id, exit code)`` of active workers found dead since the last call (a negative
        code is the signal that killed it); retired workers are not listed."""
        out, self._exited = self._exited, []
        return out

    def pids(self) -> list[int]:
        """Pids of every child still running (active and retiring)."""
        return [s.process.pid for s in self._slots + self._retiring
                if s.process is not None and s.process.is_alive() and s.process.pid is not None]

    # -- changes ------------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        slot.generation += 1
        cfg = replace(self.template, worker_id=slot.worker_id)
        slot.process = self._ctx.Process(target=run_worker_process, args=(cfg,), name=slot.worker_id)
        slot.process.start()
        slot.started = time.monotonic()
        log.info("started local worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def scale_to(self, n: int) -> None:
        """Start or retire workers until ``n`` are wanted (retired ones get SIGTERM, then SIGKILL)."""
        n = max(0, n)
        while len(self._slots) < n:
            slot = _Slot(index=len(self._slots))
            self._slots.append(slot)
            self._start(slot)
        while len(self._slots) > n:
            slot = self._slots.pop()
            self._retire(slot)

    def _retire(self, slot: _Slot) -> None:
        if slot.process is not None and slot.process.is_alive():
            slot.process.terminate()
            slot.stopping_since = time.monotonic()
            self._retiring.append(slot)
            log.info("retiring local worker %s", slot.worker_id)
        elif slot.process is not None:
            slot.process.join(timeout=0)

    def replace_worker(self, worker_id: str) -> bool:
        """Kill a worker the broker gave up on (no heartbeat); ``check`` restarts it."""
        for slot in self._slots:
            if slot.worker_id == worker_id and slot.process is not None and slot.process.is_alive():
                log.warning("local worker %s stopped sending heartbeats; killing it", worker_id)
                slot.process.kill()
                return True
        return False

    def check(self) -> list[str]:
        """Restart dead workers (with backoff after fast failures), reap retired ones.

        Returns the ids of the workers started now.
        """
        now = time.monotonic()
        started = []
        for slot in self._slots:
            proc = slot.process
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:
                started.extend(self._schedule_restart(slot, proc, now))
            elif now >= slot.restart_at:
                self._start(slot)
                self.restarts += 1
                started.append(slot.worker_id)
        self._reap(now)
        return started

    def _schedule_restart(self, slot: _Slot, proc, now: float) -> list[str]:
        proc.join(timeout=0)
        self._exited.append((slot.worker_id, proc.exitcode))
        lived = now - slot.started
        slot.fast_fails = slot.fast_fails + 1 if lived < FAST_FAIL_S else 0
        delay = min(MAX_BACKOFF_S, 2.0 ** (slot.fast_fails - 1)) if slot.fast_fails else 0.0
        log.warning("local worker %s exited with code %s after %.1f s; restart in %.0f s",
                    slot.worker_id, proc.exitcode, lived, delay)
        slot.process, slot.restart_at = None, now + delay
        if delay > 0:
            return []
        self._start(slot)
        self.restarts += 1
        return [slot.worker_id]

    def _reap(self, now: float) -> None:
        keep = []
        for slot in self._retiring:
            proc = slot.process
            if not proc.is_alive():
                proc.join(timeout=0)
                continue
            if now - slot.stopping_since > self.grace_s:
                proc.kill()
            keep.append(slot)
        self._retiring = keep

    def shutdown(self) -> None:
        """SIGTERM every child, SIGKILL what is left after the grace period, join all."""
        everyone = self._slots + self._retiring
        self._slots, self._retiring = [], []
        procs = [s.process for s in everyone if s.process is not None]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + self.grace_s
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                log.warning("local worker %s ignored SIGTERM; killing it", proc.name)
                proc.kill()
                proc.join(timeout=5)
