"""A synthesis worker: fetch songs from the broker, render kept chunks, send them within credit.

Protocol (docs/streaming.md): hello -> welcome (source config, seed, songs) -> loop { pick a song at random
(weighted by duration), song_request -> song_data (MIDI bytes), render/chunk/filter with
``pipeline.song_chunks``, send "chunks" messages of at most ``send_batch`` chunks, never more than the
granted credit; a repeated welcome voids it }. A second thread (``heartbeat``) sends a heartbeat every
``heartbeat_s`` on its own socket (also while rendering or blocked on credit) and ends the process when the
main thread hangs in one song. Counters in "chunks" and "heartbeat" headers are cumulative since the
worker's start. "song_request" and "chunks" headers also carry ``songs_done`` (songs whose visit ended
normally) and ``songs_failed`` (``[song_id, reason]`` of songs this worker gave up on) since the previous
such message, so the broker can stop handing out songs that keep failing.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import zmq

from synth_server.config import MAX_MIDI_BYTES, PARSE_TIMEOUT_S
from synth_server.heap import keep_batch_buffers
from synth_server.protocol import BatchSpec, ProtocolError, decode, encode, encode_batch, to_wire
from synth_server.serve.config import WorkerConfig, parse_worker_welcome
from synth_server.serve.heartbeat import Heartbeat, worker_dealer
from synth_server.serve.peers import MAX_REPORTS
from synth_server.synth.midi_io import CallTimeout, MidiError, call_with_timeout, load_midi_bytes
from synth_server.synth.pipeline import song_chunks
from synth_server.synth.render import Renderer, RenderError
from synth_server.synth.soundfont import SoundfontError, resolve_soundfonts, soundfonts_for

log = logging.getLogger(__name__)

STALL_MARGIN_S = 15.0    # beyond the parse/render time limits before the watchdog fires
REPORTED = ("parse", "parse_timeout", "render", "render_timeout")
EXIT_OK, EXIT_CONFIG = 0, 2


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Rehello(Exception):
    """The broker no longer knows this worker (it restarted or timed us out)."""


class _Stop(Exception):
    """SIGTERM/SIGINT, or the broker said shutdown."""


class WorkerSetupError(ValueError):
    """A welcome the worker cannot use, or no song left that renders."""


class Worker:
    """State of one worker process; ``run`` returns an exit code."""

    def __init__(self, ctx: zmq.Context, cfg: WorkerConfig, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.worker_id = cfg.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.sock = worker_dealer(ctx, cfg)
        self.beat = Heartbeat(ctx, cfg, self.worker_id, stop, stall_s=PARSE_TIMEOUT_S + STALL_MARGIN_S)
        self.counters: Counter = Counter()
        self.credit = 0
        self.outbox: list = []
        self.bad: set[str] = set()
        self.cache: OrderedDict = OrderedDict()
        self.renderer: Renderer | None = None
        self._render_key = None
        self._blocked_s = 0.0
        self._start = time.monotonic()
        self._song_reply: tuple[dict, memoryview | None] | None = None
        self._done: list[str] = []                 # outcomes not yet reported to the broker
        self._failed: list[list[str]] = []

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.stop.set()
        if self.beat.is_alive():
            self.beat.join(timeout=2 * self.cfg.heartbeat_s + 1)
        self.sock.close(linger=0)

    def _send(self, frames: list) -> None:
        """Send without ever blocking past a stop request (the broker may be unreachable)."""
        while not self.sock.poll(100, zmq.POLLOUT):
            if self.stop.is_set():
                raise _Stop
        self.sock.send_multipart(frames, copy=False)

    def _publish(self, song: str | None = None) -> None:
        """Hand the heartbeat thread fresh figures; ``song`` while a parse/render step of it runs."""
        now = time.monotonic()
        self.beat.status = {"counters": dict(self.counters), "busy_s": now - self._start - self._blocked_s,
                            "song": song, "t": now}

    def _reports(self) -> dict:
        """Song outcomes since the last report (header fields), then forget them."""
        out = {"songs_done": self._done[-MAX_REPORTS:], "songs_failed": self._failed[-MAX_REPORTS:]}
        self._done, self._failed = [], []
        return out

    def _poll(self, timeout_ms: int) -> None:
        """Handle every message that arrives within ``timeout_ms`` (0: only those queued)."""
        if self.stop.is_set():
            raise _Stop
        if self.beat.rehello.is_set():
            raise _Rehello
        if not self.sock.poll(timeout_ms):
            return
        while self.sock.poll(0):
            try:
                header, payload = decode(self.sock.recv_multipart(copy=False))
            except ProtocolError as exc:
                self.counters["malformed"] += 1
                log.warning("dropped malformed message from the broker: %s", exc)
                continue
            self._handle(header, payload)

    def _handle(self, header: dict, payload) -> None:
        kind = header["type"]
        if kind == "credit":
            if type(n := header.get("n")) is int and 0 <= n <= 1 << 20:
                self.credit += n
        elif kind == "welcome":   # the answer to a repeated hello: the broker re-registered us
            self.credit = 0
        elif kind == "ctl" and header.get("cmd") == "shutdown":
            log.info("broker says shutdown")
            self.stop.set()
            raise _Stop
        elif kind == "song_data" or (kind == "error" and "song_id" in header):
            self._song_reply = (header, payload)
        elif kind == "error" and header.get("code") == "hello_first":
            raise _Rehello
        elif kind == "error":
            self.counters["broker_errors"] += 1
            log.warning("broker refused a message: %s", str(header.get("message"))[:200])

    # -- session ------------------------------------------------------------------------------
    def run(self) -> int:
        self.beat.start()
        while True:
            try:
                t0 = time.monotonic()
                welcome = self._handshake()
                self.beat.rehello.clear()
                self.beat.welcomed.set()
                self._setup(welcome)
                self._blocked_s += time.monotonic() - t0    # not production time
                self._produce()
            except _Rehello:
                log.warning("broker does not know this worker (restarted?); saying hello again")
                self.beat.welcomed.clear()
                self.credit, self.outbox = 0, []
            except _Stop:
                return EXIT_OK

    def _handshake(self) -> dict:
        hello = encode({"type": "hello", "role": "worker", "id": self.worker_id, "pid": os.getpid(),
                        "host": socket.gethostname()})
        while True:
            self._send(hello)
            deadline = time.monotonic() + self.cfg.reply_timeout
            while time.monotonic() < deadline:
                if self.stop.is_set():
                    raise _Stop
                if not self.sock.poll(100):
                    continue
                try:
                    header, _ = decode(self.sock.recv_multipart())
                except ProtocolError as exc:
                    log.warning("dropped malformed message while waiting for welcome: %s", exc)
                    continue
                if header["type"] == "welcome":
                    return header
                if header["type"] == "ctl" and header.get("cmd") == "shutdown":
                    raise _Stop
            log.info("no welcome from %s yet; saying hello again", self.cfg.connect)

    def _setup(self, welcome: dict) -> None:
        """Read the welcome; (re)build the renderer when its settings changed."""
        try:
            source, songs, seed, dtype = parse_worker_welcome(welcome)
        except ValueError as exc:
            raise WorkerSetupError(str(exc)) from None
        self.source, self.rng = source, np.random.default_rng(seed)
        self.song_ids = [song_id for song_id, _ in songs]
        self.weights = np.array([max(duration, 1e-3) for _, duration in songs])
        for i, song_id in enumerate(self.song_ids):
            self.weights[i] *= song_id not in self.bad
        self.spec = BatchSpec(source.audio.sample_rate, source.audio.target, source.audio.context,
                              tuple(c.name for c in source.corpus.classes), dtype)
        self.beat.stall_s = max(source.render.render_timeout, PARSE_TIMEOUT_S) + STALL_MARGIN_S
        if self.renderer is None or self._render_key != self._renderer_settings():
            self._build_renderer()
        log.info("worker %s ready: %d songs, seed %s", self.worker_id, len(songs), seed)

    def _renderer_settings(self) -> tuple:
        return (self.source.render, self.source.audio, self.source.corpus.classes, self.source.augment.enabled)

    def _build_renderer(self) -> None:
        """A fresh FluidSynth renderer for the current source settings (RenderError -> setup error);
        with augmentation on it loads the whole soundfont bank. Logs its soundfonts and the RSS."""
        self.renderer = None
        try:
            soundfonts = soundfonts_for(self.cfg.soundfont, self.source.augment.enabled)
            self.renderer = Renderer(self.source.render, self.source.audio, self.source.corpus.classes, soundfonts)
        except (RenderError, SoundfontError) as exc:
            raise WorkerSetupError(f"cannot build the renderer: {exc}") from None
        self._render_key = self._renderer_settings()
        log.info("worker %s: renderer with %d soundfont(s) (%s), augment %s; RSS %.0f MiB", self.worker_id,
                 len(soundfonts), ", ".join(sf.name for sf in self.renderer.bank), self.source.augment.preset,
                 rss_bytes() / 2**20)

    def _produce(self) -> None:
        while True:
            self._poll(0)
            song_id = self._pick()
            midi = self._get_midi(song_id)
            if midi is not None:
                self._render_song(song_id, midi)
            self._flush(block=False)

    def _pick(self) -> str:
        """A random song, weighted by duration (each second of music equally likely), never a bad one."""
        total = self.weights.sum()
        if total <= 0:
            raise WorkerSetupError(f"all {len(self.song_ids)} songs failed; nothing left to render")
        return self.song_ids[int(self.rng.choice(len(self.song_ids), p=self.weights / total))]

    # -- songs --------------------------------------------------------------------------------
    def _fail(self, song_id: str, reason: str, permanent: bool = True) -> None:
        self.counters["song_failed_" + reason] += 1
        if reason in REPORTED:
            self._failed.append([song_id, reason])
        if permanent:
            self.bad.add(song_id)
            self.cache.pop(song_id, None)
            self.weights[self.song_ids.index(song_id)] = 0.0
        log.warning("skipping song %s: %s", song_id, reason)

    def _get_midi(self, song_id: str):
        if song_id in self.cache:
            self.cache.move_to_end(song_id)
            return self.cache[song_id]
        data = self._fetch(song_id)
        if data is None:
            return None
        self._publish(song_id)
        try:
            midi = call_with_timeout(load_midi_bytes, PARSE_TIMEOUT_S, data, MAX_MIDI_BYTES)
        except MidiError as exc:
            self._fail(song_id, "parse")
            log.warning("song %s does not parse: %s", song_id, exc)
            return None
        except CallTimeout:
            self._fail(song_id, "parse_timeout")
            return None
        finally:
            self._publish()
        self.cache[song_id] = midi
        while len(self.cache) > self.cfg.song_cache:
            self.cache.popitem(last=False)
        return midi

    def _fetch(self, song_id: str) -> bytes | None:
        """MIDI bytes from the broker, or None (counted) on an error reply or a timeout."""
        self._song_reply = None
        self._send(encode({"type": "song_request", "song_id": song_id, **self._reports()}))
        t0 = time.monotonic()
        try:
            while self._song_reply is None and time.monotonic() - t0 < self.cfg.reply_timeout:
                self._publish()
                self._poll(100)
        finally:
            self._blocked_s += time.monotonic() - t0
        if self._song_reply is None:
            self._fail(song_id, "fetch_timeout", permanent=False)
            return None
        header, payload = self._song_reply
        if header["type"] == "error" or header.get("song_id") != song_id or payload is None:
            self._fail(song_id, "fetch")
            log.warning("broker: %s", str(header.get("message", "wrong song"))[:200])
            return None
        return bytes(payload)

    def _render_song(self, song_id: str, midi) -> None:
        """One visit of a song: its kept chunks go to the outbox (sent within credit).

        Each step (up to the next kept chunk) is cut off after ``render_timeout``, which fails
        the song; the whole visit may spend at most that long rendering too (a long song that
        keeps a chunk only now and then): then the visit just ends ("song_visits_cut").
        """
        chunks = song_chunks(midi, song_id, self.renderer, self.source, self.rng, self.counters)
        timeout = self.source.render.render_timeout
        spent = 0.0
        while True:
            if spent > timeout:
                self.counters["song_visits_cut"] += 1
                break
            t0 = time.monotonic()
            self._publish(song_id)
            try:
                chunk = call_with_timeout(next, timeout, chunks, None)
            except CallTimeout:
                self._fail(song_id, "render_timeout")
                self._build_renderer()    # interrupted mid-render: start from a clean synth
                return
            except Exception as exc:  # noqa: BLE001 - a hostile song may raise anything
                self._fail(song_id, "render")
                log.warning("song %s does not render: %s: %s", song_id, type(exc).__name__, exc)
                return
            finally:
                spent += time.monotonic() - t0
                self._publish()
            if chunk is None:
                break
            self.outbox.append(chunk)
            self._poll(0)
            if len(self.outbox) >= self.cfg.send_batch:
                self._flush(block=True)
        self._done.append(song_id)

    # -- sending ------------------------------------------------------------------------------
    def _flush(self, block: bool) -> None:
        """Send the outbox within credit; with ``block``, wait for credit until it is empty."""
        while self.outbox:
            if self.credit <= 0:
                if not block:
                    return
                t0 = time.monotonic()
                self._poll(100)
                self._blocked_s += time.monotonic() - t0
                self._publish()
                continue
            n = min(len(self.outbox), self.credit, self.cfg.send_batch)
            try:
                self._send_chunks(self.outbox[:n])
                self.credit -= n
            except ValueError as exc:     # non-finite audio: never sent, counted
                self.counters["dropped_nonfinite"] += n
                log.warning("dropped %d chunks: %s", n, exc)
            del self.outbox[:n]

    def _send_chunks(self, chunks: list) -> None:
        """One "chunks" message: ``(n, stems, window)`` in the wire dtype + cumulative counters."""
        stems, clipped = to_wire(np.stack([c.stems for c in chunks]), self.spec.dtype)
        self.counters["sent"] += len(chunks)
        self.counters["clipped_samples"] += clipped
        meta = [{"song": c.song_id, "offset": int(c.offset), "uses": 0,
                 **({"augment": c.augment} if c.augment is not None else {})} for c in chunks]
        self._send(encode_batch("chunks", self.spec, stems, meta, counters=dict(self.counters), **self._reports()))
        self._publish()


def _install_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def run_worker(cfg: WorkerConfig) -> int:
    """Run a worker until SIGTERM/SIGINT or the broker's shutdown; returns the exit code
    (0 clean, 2 configuration problem such as no soundfont or no usable song)."""
    stop = threading.Event()
    _install_signals(stop)
    try:
        resolve_soundfonts(cfg.soundfont)   # fail fast; the renderer resolves its bank after the welcome
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    ctx = zmq.Context()
    worker = None
    try:
        try:
            worker = Worker(ctx, cfg, stop)
        except ValueError as exc:     # unreadable CURVE keys
            raise WorkerSetupError(str(exc)) from None
        return worker.run()
    except WorkerSetupError as exc:
        log.error("worker %s: %s", cfg.worker_id or os.getpid(), exc)
        return EXIT_CONFIG
    finally:
        if worker is not None:
            worker.close()
        ctx.destroy(linger=0)


def run_worker_process(cfg: WorkerConfig) -> None:
    """Entry point of a local worker process (multiprocessing target)."""
    keep_batch_buffers()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {cfg.worker_id} %(levelname)s %(message)s")
    sys.exit(run_worker(cfg))
