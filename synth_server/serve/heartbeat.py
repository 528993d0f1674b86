"""A worker's heartbeat thread and its hang watchdog.

The thread owns a second DEALER socket and sends ``{"type": "heartbeat", "id", "counters",
"rate", "song"}`` every ``heartbeat_s`` while the main thread renders, waits for song data or is
blocked on credit. ``song`` is the song the main thread is parsing or rendering right now (None
otherwise), so the broker can blame the song when the worker dies.

FluidSynth calls release the GIL and cannot be interrupted by SIGALRM, so a render that hangs in
C would leave this thread beating for ever. The watchdog catches that: when the main thread has
been inside one parse/render step of a song for more than ``stall_s`` seconds, the thread sends a
last heartbeat with ``"stalled": seconds``, stops beating and calls ``on_stuck`` (by default: the
process exits with ``EXIT_STUCK`` after ``STUCK_GRACE_S``, so a local worker is restarted by the
supervisor and a remote one by whatever started it).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import zmq

from synth_server.dealer import open_dealer
from synth_server.protocol import ProtocolError, decode, encode
from synth_server.serve.config import WorkerConfig, load_client_curve
from synth_server.serve.rates import RateMeter

log = logging.getLogger(__name__)

EXIT_STUCK = 4          # a worker exits with this code when its main thread hung in a song
STUCK_GRACE_S = 2.0     # time for the "stalled" heartbeat to leave before the process exits
ORPHAN_GRACE_S = 3.0    # parent gone and the main thread still busy (e.g. loading soundfonts): exit


def worker_dealer(ctx: zmq.Context, cfg: WorkerConfig) -> zmq.Socket:
    """A worker's DEALER socket to its broker (CURVE client when ``cfg.curve_keys``)."""
    return open_dealer(ctx, cfg.connect, load_client_curve(cfg.curve_keys) if cfg.curve_keys else None)


def exit_stuck(song: str, seconds: float) -> None:
    """Default ``on_stuck``: the main thread cannot be interrupted, so end the process."""
    log.error("main thread stuck in song %s for %.0f s; exiting with code %d", song, seconds, EXIT_STUCK)
    time.sleep(STUCK_GRACE_S)
    os._exit(EXIT_STUCK)


class Heartbeat(threading.Thread):
    """Beats for one worker; see the module docstring.

    The main thread replaces ``status`` whole (never mutates it): ``counters`` (cumulative),
    ``busy_s`` (seconds not blocked on credit or song data), ``song`` (str or None) and ``t``
    (``time.monotonic()`` when the current step began or the last progress was made).
    ``stall_s`` may be changed by the main thread (it depends on the welcome's render timeout).
    Sets ``rehello`` when the broker answers that it does not know us, and ``stop`` when the
    parent process (local workers) is gone.
    """

    def __init__(self, ctx: zmq.Context, cfg: WorkerConfig, worker_id: str, stop: threading.Event,
                 stall_s: float = 120.0, on_stuck: Callable[[str, float], None] = exit_stuck):
        super().__init__(name="heartbeat", daemon=True)
        self.sock = worker_dealer(ctx, cfg)
        self.cfg, self.worker_id, self.stop = cfg, worker_id, stop
        self.stall_s, self.on_stuck = stall_s, on_stuck
        self.rehello = threading.Event()
        self.welcomed = threading.Event()     # beats start once the broker knows us
        self.status: dict = {"counters": {}, "busy_s": 0.0, "song": None, "t": time.monotonic()}
        self._meter = RateMeter(window_s=10.0)
        self._meter.update(0.0, 0)
        self._busy = 0.0

    def run(self) -> None:
        orphaned = None
        try:
            while not self.stop.wait(self.cfg.heartbeat_s) or orphaned is not None:
                if orphaned is not None:
                    if time.monotonic() - orphaned > ORPHAN_GRACE_S:   # main thread deaf in a C call
                        os._exit(0)
                    time.sleep(0.2)
                    continue
                if self.cfg.parent_pid is not None and os.getppid() != self.cfg.parent_pid:
                    log.warning("parent process %s is gone; stopping", self.cfg.parent_pid)
                    self.stop.set()
                    orphaned = time.monotonic()
                    continue
                stalled = self.stalled(time.monotonic())
                if self.welcomed.is_set():
                    self._beat(stalled)
                self._read_replies()
                if stalled is not None:
                    self.on_stuck(self.status["song"], stalled)
                    return
        finally:
            self.sock.close(linger=0)

    def stalled(self, now: float) -> float | None:
        """Seconds the main thread has spent in the current song step, when beyond ``stall_s``."""
        status = self.status
        if status.get("song") is None:
            return None
        spent = now - status["t"]
        return spent if spent > self.stall_s else None

    def _beat(self, stalled: float | None) -> None:
        status = self.status
        if status["busy_s"] > self._busy:      # blocked the whole beat: keep the last rate
            self._busy = status["busy_s"]
            self._meter.update(self._busy, status["counters"].get("kept", 0))
        header = {"type": "heartbeat", "id": self.worker_id, "counters": status["counters"],
                  "rate": round(self._meter.rate(), 3), "song": status.get("song")}
        if stalled is not None:
            header["stalled"] = round(stalled, 1)
        try:
            self.sock.send_multipart(encode(header), zmq.NOBLOCK)
        except zmq.Again:
            pass    # broker unreachable; queue full; try again next beat

    def _read_replies(self) -> None:
        while self.sock.poll(0):
            try:
                header, _ = decode(self.sock.recv_multipart())
            except ProtocolError:
                continue
            if header.get("type") == "error" and header.get("code") == "hello_first":
                self.rehello.set()
