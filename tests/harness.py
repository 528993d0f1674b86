"""Helpers shared by the whole test suite: import them with ``from harness import ...``
(pyproject's pytest ``pythonpath`` puts tests/ on sys.path). The fixtures built on them are in
tests/conftest.py; its docstring lists both.

Names (keep them stable, other branches use them):

- ``ROOT``: the checkout; ``SYNTH_SERVER``: argv prefix of the CLI; ``synth_server_cli(*args)``.
- ``wait_for(condition, timeout=30, every=0.1)``: poll until ``condition()`` is truthy, return it
  (None on timeout). Use it instead of sleeping before an assert.
- ``SMALL_AUDIO`` / ``SMALL_SPEC``: tiny chunk geometry (window 96) and the spec a broker built
  with it announces.
- ``song_files(root, n)``: n tiny MIDI files in ``root`` and their ``SongInfo``; ``song_id(i)``.
- ``BrokerThread``: a real ``Broker`` serving on a thread over loopback.
- ``Peer``: one raw DEALER socket: a fake worker, client or ctl.
- ``ServeProcess``: a real ``synth-server serve`` subprocess; its address from ``--ready-file``.
- ``group_pids(pgid)``, ``alive(pid)``: live processes, from /proc.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pretty_midi
import zmq

from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig
from synth_server.dealer import open_dealer
from synth_server.protocol import BatchSpec, decode, encode, to_wire
from synth_server.serve.broker import Broker
from synth_server.serve.config import BrokerConfig
from synth_server.synth.corpus import SongInfo

ROOT = Path(__file__).resolve().parents[1]
SYNTH_SERVER = [sys.executable, "-m", "synth_server"]
SMALL_AUDIO = AudioConfig(target=64, context=16)       # window 96
SMALL_SPEC = BatchSpec(44100, 64, 16, ("drums", "piano", "strings", "bass"), "float16")


def synth_server_cli(*args, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run ``synth-server ARGS`` in the checkout; output captured as text."""
    return subprocess.run([*SYNTH_SERVER, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Call ``condition`` until it returns something truthy (returned) or ``timeout`` seconds
    pass (None). It is called at least once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(every)


def song_id(i: int) -> str:
    """The id ``song_files`` gives song ``i``."""
    return f"{i:016x}"


def song_files(root: Path, n: int) -> list[SongInfo]:
    """``n`` one-instrument MIDI files ``s{i}.mid`` (8 piano notes, 4 s) in ``root``."""
    out = []
    for i in range(n):
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(0)
        inst.notes = [pretty_midi.Note(90, 60 + (i + k) % 12, k * 0.5, k * 0.5 + 0.4) for k in range(8)]
        pm.instruments.append(inst)
        path = root / f"s{i}.mid"
        pm.write(str(path))
        out.append(SongInfo(path=path.name, size=path.stat().st_size, mtime=0.0, song_id=song_id(i),
                            duration=4.0, class_notes={}, instruments=(), split="train"))
    return out


class BrokerThread:
    """A real ``Broker`` running on a daemon thread, bound to a free loopback port.

    ``songs`` tiny songs are written into ``root`` (``self.songs``). ``prefill`` random chunks go
    into the pool with reuse effectively unbounded, so clients are served without any worker.
    ``config`` overrides ``BrokerConfig`` fields (defaults: pool 64, credit block 32).
    """

    def __init__(self, root: Path, songs: int = 3, audio: AudioConfig = SMALL_AUDIO, prefill: int = 0,
                 **config) -> None:
        defaults = {"port": 0, "pool_size": 64, "credit_block": 32, **({"max_reuse": 10**6} if prefill else {})}
        cfg = BrokerConfig(**{**defaults, **config})
        self.songs = song_files(root, songs)
        self.broker = Broker(cfg, ChunkSourceConfig(corpus=CorpusConfig(root=root), audio=audio), self.songs, root)
        if prefill:
            self.broker.pool.set_reuse(10**6)
            noise = np.random.default_rng(0).uniform(-0.5, 0.5, (prefill, 4, audio.window))
            self.broker.pool.add(to_wire(noise, cfg.dtype)[0], [{"song": "x", "offset": i} for i in range(prefill)])
        self.address = self.broker.address
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.broker.run, args=(self._stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the loop and close the broker (idempotent)."""
        if not self._stop.is_set():
            self._stop.set()
            self.thread.join(5)
            self.broker.close()


class Peer:
    """One DEALER socket speaking the wire protocol: a fake worker, client or ctl.

    ``recv``/``recv_type`` return ``(header, payload)`` or None on timeout; ``hello``, ``ctl`` and
    ``stats`` expect their reply and fail the test without one. ``sock`` is there for raw frames.
    """

    def __init__(self, ctx: zmq.Context, address: str, curve: tuple | None = None) -> None:
        self.sock = open_dealer(ctx, address, curve)

    def send(self, header: dict, payload=None) -> None:
        self.sock.send_multipart(encode(header, payload))

    def recv(self, timeout: float = 3.0):
        if not self.sock.poll(max(1, int(timeout * 1000))):
            return None
        return decode(self.sock.recv_multipart())

    def recv_type(self, kind: str, timeout: float = 3.0):
        """Next message of ``kind`` (others are skipped); None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and msg[0]["type"] == kind:
                return msg
        return None

    def expect(self, kind: str, timeout: float = 3.0) -> tuple[dict, Any]:
        """Like ``recv_type``, but a missing reply fails the test."""
        msg = self.recv_type(kind, timeout)
        assert msg is not None, f"no {kind!r} message within {timeout} s"
        return msg

    def credit(self, settle: float = 0.3) -> int:
        """Sum of every credit grant that arrives within ``settle`` seconds of the previous one."""
        total = 0
        while (msg := self.recv_type("credit", settle)) is not None:
            total += msg[0]["n"]
        return total

    def hello(self, role: str, peer_id: str) -> dict:
        """Register as ``role``; the welcome header."""
        self.send({"type": "hello", "role": role, "id": peer_id, "pid": 1, "host": "test"})
        return self.expect("welcome")[0]

    def ctl(self, **header) -> dict:
        """A ctl command; the reply header (``ctl_reply`` or ``error``)."""
        self.send({"type": "ctl", **header})
        reply = self.recv()
        assert reply is not None, f"no reply to ctl {header}"
        return reply[0]

    def stats(self, timeout: float = 3.0) -> dict:
        self.send({"type": "ctl", "cmd": "stats"})
        return self.expect("stats", timeout)[0]["stats"]


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ServeProcess:
    """`synth-server serve ARGS --port 0` in its own process group, logging to ``log_path``.

    Waits (up to ``timeout`` s) for the ``--ready-file`` it passes (``ready_file``), so ``address``
    is set once the broker is bound and the local workers are started; fails the test if `serve`
    exits first.
    """

    def __init__(self, args: list, log_path: Path, timeout: float = 60) -> None:
        import pytest

        self.log_path = Path(log_path)
        self.ready_file = ready = self.log_path.with_suffix(".ready")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*SYNTH_SERVER, "serve", *map(str, args), "--port", "0", "--ready-file", ready],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(lambda: ready.exists() or self.proc.poll() is not None, timeout, every=0.05) \
                or not ready.exists():
            self.kill()
            pytest.fail(f"serve did not start in {timeout} s:\n{self.output()}")
        self.address = ready.read_text().strip()

    def output(self) -> str:
        """Everything `serve` logged so far."""
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, signal_name: str = "SIGTERM", timeout: float = 15) -> int:
        """Signal the process group; SIGKILL it after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, getattr(signal, signal_name))
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL whatever is left of the group (workers may outlive `serve`) and reap `serve`."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()
