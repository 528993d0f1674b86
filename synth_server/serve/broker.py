"""The broker: one ZeroMQ ROUTER socket, a single-threaded poll loop, the reuse pool.

It registers peers ("hello"), grants workers credit (pool free slots minus credit already
outstanding, so the pool can never overflow: back-pressure), stores their chunks, serves client
batches within client credit, answers ctl/stats, sends song MIDI bytes, and runs the auto rules
(``autoscale``, applied in ``broker_control``). Every received message is validated; bad ones are
dropped, counted by reason and, where the peer can act on it, answered with an "error". No frame
above ``max_frame`` bytes (derived from the config) is even received (``broker_socket``), each
client may hold at most ``peers.MAX_CLIENT_INFLIGHT_BYTES`` of credit, and silent clients are
forgotten after ``CLIENT_TIMEOUT_S`` (their chunks go back to the pool). Songs that keep failing
or killing workers are banned (``broker_songs``). See docs/streaming.md.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

from synth_server.serve import control as broker_control
from synth_server.serve.autoscale import ReuseController, WorkerScaler
from synth_server.serve.broker_socket import bind_router
from synth_server.serve.songbook import SongBook
from synth_server.config import ChunkSourceConfig
from synth_server.serve.peers import (MAX_COUNT, MAX_ID_CHARS, ClientPeer, Registry, WorkerPeer, check_hello, check_request,
                    check_song_reports)
from synth_server.serve.pool import ReusePool
from synth_server.protocol import MAX_HEADER_BYTES, BatchSpec, ProtocolError, decode, decode_batch, encode, encode_batch
from synth_server.serve.config import BrokerConfig, source_to_json
from synth_server.serve.metrics import MetricsServer
from synth_server.serve.rates import RateMeter
from synth_server.serve.fixed_sets import FixedSets
from synth_server.serve.stats import RATE_STAGES, broker_snapshot

log = logging.getLogger(__name__)

MAX_WELCOME_SONGS = 20_000       # a welcome lists at most this many songs (random subset)
TICK_S = 0.25                    # housekeeping period of the loop
MAX_PEERS = 512                  # workers + clients registered at once
CLIENT_TIMEOUT_S = 30.0          # a client silent this long is gone (StreamClient beats every 2 s)


class Broker:
    """``songs``: eligible ``corpus.SongInfo``; their ``path`` is relative to ``corpus_root``.

    ``supervisor`` (optional) owns the local worker processes; ``metrics`` (optional) gets a
    snapshot every second.
    """

    def __init__(self, cfg: BrokerConfig, source: ChunkSourceConfig, songs: list, corpus_root: Path,
                 supervisor=None, metrics: MetricsServer | None = None) -> None:
        if not songs:
            raise ValueError("no eligible songs to serve")
        self.cfg, self.source, self.supervisor, self.metrics = cfg, source, supervisor, metrics
        self.book = SongBook(songs, corpus_root, cfg.max_song_bytes)
        audio = source.audio
        self.spec = BatchSpec(audio.sample_rate, audio.target, audio.context,
                              tuple(c.name for c in source.corpus.classes), cfg.dtype)
        self.chunk_bytes = len(self.spec.stems) * self.spec.window * self.spec.np_dtype.itemsize
        self.max_frame = max(MAX_HEADER_BYTES, cfg.credit_block * self.chunk_bytes)
        self.pool = ReusePool(cfg.pool_size, len(self.spec.stems), self.spec.window, cfg.dtype,
                              cfg.reuse, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
        self.reuse = ReuseController(cfg.reuse, cfg.max_reuse, auto=cfg.reuse_auto)
        self.scaler = WorkerScaler(cfg.min_workers, cfg.max_workers) if cfg.workers_auto else None
        self.peers = Registry()
        self.fixed = FixedSets(source, self.send)
        self.totals: Counter = Counter()      # rendered, kept, received, served, batches, rejected_* ...
        self.errors: Counter = Counter()      # malformed / refused messages by reason
        self.meters = {k: RateMeter() for k in (*RATE_STAGES, "starved")}
        self.paused = False
        self.started = time.monotonic()
        self._last_tick = self._last_publish = self.started
        self._starved_s = 0.0
        self._welcomes = 0
        self.ctx = zmq.Context()
        try:
            self.sock, self._auth = bind_router(self.ctx, cfg, self.max_frame)
        except Exception:
            self.ctx.destroy(linger=0)
            raise
        self.address = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    # -- socket -------------------------------------------------------------------------------
    def connect_address(self) -> str:
        """Where local processes connect (a wildcard bind is reached over loopback)."""
        return self.address.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")

    def budget_bytes(self) -> int:
        """Pool payload budget: capacity x stems x window x itemsize."""
        return self.cfg.pool_size * self.chunk_bytes

    def close(self) -> None:
        """Tell every worker to shut down, then release the socket and the authenticator."""
        sock = getattr(self, "sock", None)
        if sock is not None and not sock.closed:
            bye = encode({"type": "ctl", "cmd": "shutdown"})
            for w in self.peers.workers.values():
                try:
                    sock.send_multipart([w.ident, *bye], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass    # already gone
            sock.close(linger=200)
        if self._auth is not None:
            self._auth.stop()
        self.fixed.close()
        self.ctx.term()

    def send(self, ident: bytes, frames: list) -> bool:
        """Send without blocking; False (counted) when the peer's queue is full or it is gone."""
        try:
            self.sock.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.errors["send_queue_full"] += 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._drop_peer(ident, "unreachable")
        return False

    def _error(self, ident: bytes, reason: str, message: str, code: str | None = None, **extra) -> None:
        """Count a refused message by reason and tell the peer why (``extra``: e.g. song_id)."""
        self.errors[reason] += 1
        header = {"type": "error", "message": message[:500], **extra}
        if code is not None:
            header["code"] = code
        self.send(ident, encode(header))

    # -- loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        while not stop.is_set():
            if self.sock.poll(int(TICK_S * 1000)):
                for _ in range(1000):      # bounded, so housekeeping always gets its turn
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(frames)
            now = time.monotonic()
            if now - self._last_tick >= TICK_S and not stop.is_set():
                self.tick(now)

    def handle(self, frames: list) -> None:
        """One ROUTER message: ``[identity, header, (payload)]``."""
        ident = frames[0].bytes
        try:
            header, payload = decode(frames[1:])
        except ProtocolError as exc:
            self._error(ident, "protocol", str(exc))
            return
        handler = getattr(self, "_on_" + header["type"], None)
        if handler is None:
            self._error(ident, "unexpected_type", f"brokers do not accept {header['type']!r} messages")
            return
        try:
            handler(ident, header, payload)
        except ProtocolError as exc:
            self._error(ident, "bad_" + header["type"], str(exc))
        except Exception:  # noqa: BLE001 - one bad message must never stop the broker
            log.exception("internal error handling a %s message", header["type"])
            self._error(ident, "internal_error", f"internal error handling {header['type']!r}")

    # -- registration -------------------------------------------------------------------------
    def _on_hello(self, ident: bytes, header: dict, payload) -> None:
        role, peer_id, pid, host = check_hello(header)
        known = ident in self.peers.workers or ident in self.peers.clients
        if role != "ctl" and not known and len(self.peers.workers) + len(self.peers.clients) >= MAX_PEERS:
            self._error(ident, "too_many_peers", f"this broker serves at most {MAX_PEERS} workers and clients")
            return
        if role == "worker":
            local = self.supervisor is not None and self.supervisor.owns(peer_id)
            self.peers.add_worker(WorkerPeer(ident, peer_id, pid, host, local, time.monotonic()))
            self.send(ident, encode(self._worker_welcome()))
            log.info("worker %s joined (%s, pid %s)", peer_id, host, pid)
            self.grant_credit()
        elif role == "client":
            now = time.monotonic()
            gone = self.peers.add_client(ClientPeer(ident, peer_id, pid, host, now, last_seen=now))
            if gone is not None:
                self.pool.release_client(gone.id)
            self.send(ident, encode({"type": "welcome", **self.spec.to_header()}))
            log.info("client %s joined (%s, pid %s)", peer_id, host, pid)
        else:
            self.send(ident, encode({"type": "ctl_reply", "ok": True, "message": "hello"}))

    def _worker_welcome(self) -> dict:
        self._welcomes += 1
        seed = int(np.random.SeedSequence([self.cfg.seed, self._welcomes]).generate_state(1)[0])
        return {"type": "welcome", "source": source_to_json(self.source), "seed": seed,
                "dtype": self.cfg.dtype, "songs": self.book.welcome_list(seed, MAX_WELCOME_SONGS)}

    def _drop_peer(self, ident: bytes, why: str, blame: str | None = None) -> None:
        """Forget a peer; with ``blame`` (e.g. "died"), the worker's current song takes a strike."""
        worker = self.peers.workers.pop(ident, None)
        if worker is not None:
            log.warning("forgetting worker %s (%s); %d credit reclaimed%s", worker.id, why, worker.credit,
                        f"; it was on song {worker.song}" if worker.song else "")
            if blame is not None and worker.song is not None:
                self.book.died(worker.song, blame)
            if worker.local and self.supervisor is not None:
                self.supervisor.replace_worker(worker.id)
        client = self.peers.clients.pop(ident, None)
        if client is not None:
            log.info("client %s gone (%s)", client.id, why)
            self.pool.release_client(client.id)

    # -- workers ------------------------------------------------------------------------------
    def _on_heartbeat(self, ident: bytes, header: dict, payload) -> None:
        worker = self.peers.worker_by_id(header.get("id"))
        if worker is None:
            self._error(ident, "unknown_peer", "unknown worker; say hello first", code="hello_first")
            return
        worker.last_seen = now = time.monotonic()
        rate = header.get("rate")
        if isinstance(rate, (int, float)) and 0 <= rate < 1e9:
            worker.rate = float(rate)
        self._apply_counters(worker, header.get("counters"))
        worker.working_on(header.get("song"), now)
        stalled = header.get("stalled")
        if isinstance(stalled, (int, float)) and worker.song is not None:
            self.book.failed(worker.song, "stalled")
            self._drop_peer(worker.ident, f"stuck in song {worker.song} for {stalled:.0f} s")

    def _apply_counters(self, worker: WorkerPeer, counters) -> None:
        """Add the growth of a worker's cumulative counters to the broker totals."""
        for key, delta in worker.counter_deltas(counters).items():
            self.totals[key] += delta

    def _known_worker(self, ident: bytes) -> WorkerPeer | None:
        worker = self.peers.workers.get(ident)
        if worker is None:
            self._error(ident, "unknown_peer", "unknown worker; say hello first", code="hello_first")
        return worker

    def _apply_song_reports(self, header: dict) -> None:
        """A worker's ``songs_done`` / ``songs_failed`` (validated first; ProtocolError)."""
        done, failed = check_song_reports(header)
        for song_id in done:
            self.book.done(song_id)
        for song_id, reason in failed:
            self.book.failed(song_id, reason)

    def _on_song_request(self, ident: bytes, header: dict, payload) -> None:
        worker = self._known_worker(ident)
        if worker is None:
            return
        self._apply_song_reports(header)
        song_id = header.get("song_id")
        song = self.book.get(song_id)
        if song is None:
            self._error(ident, "bad_song_request", f"unknown song_id {str(song_id)[:40]!r}",
                        code="song_unknown", song_id=str(song_id)[:MAX_ID_CHARS])
            return
        if song_id in self.book.banned:
            self._error(ident, "song_banned", f"song {song_id} is banned: {self.book.banned[song_id]}",
                        code="song_banned", song_id=song_id)
            return
        worker.working_on(song_id, time.monotonic(), claim=True)
        try:
            data = self.book.read(song)
        except OSError as exc:
            self._error(ident, "song_unreadable", f"song {song_id}: cannot read {song.path}: {exc}",
                        code="song_unreadable", song_id=song_id)
            return
        self.totals["songs_sent"] += 1
        self.send(ident, encode({"type": "song_data", "song_id": song_id}, data))

    def _on_chunks(self, ident: bytes, header: dict, payload) -> None:
        worker = self._known_worker(ident)
        if worker is None:
            return
        worker.last_seen = time.monotonic()
        _, stems, meta = decode_batch(header, payload, expect=self.spec, max_bytes=self.max_frame)
        if not all(len(m["song"]) <= MAX_ID_CHARS and m["offset"] < MAX_COUNT for m in meta):
            raise ProtocolError(f"chunk song ids are at most {MAX_ID_CHARS} characters, offsets < 2^53")
        self._apply_song_reports(header)
        self._apply_counters(worker, header.get("counters"))
        n = stems.shape[0]
        k = min(n, worker.credit)
        if k < n:
            self.errors["over_credit"] += n - k
        stored = self.pool.add(stems[:k], meta[:k])
        worker.credit -= k
        worker.received += stored
        self.totals["received"] += stored
        self.serve_clients()
        self.grant_credit()

    def grant_credit(self) -> None:
        """Give workers credit from the pool's free slots not yet promised (none while paused)."""
        if self.paused:
            return
        budget = self.pool.free() - sum(w.credit for w in self.peers.workers.values())
        block = self.cfg.credit_block
        for worker in sorted(self.peers.workers.values(), key=lambda w: w.credit):
            give = min(block - worker.credit, budget)
            if give <= 0 or worker.credit > block // 2:
                continue
            if self.send(worker.ident, encode({"type": "credit", "n": give})):
                worker.credit += give
                budget -= give

    # -- clients ------------------------------------------------------------------------------
    def _on_request(self, ident: bytes, header: dict, payload) -> None:
        client = self.peers.clients.get(ident)
        if client is None:
            self._error(ident, "unknown_peer", "unknown client; say hello first", code="hello_first")
            return
        client.last_seen = time.monotonic()
        credit, batch_size, wait_share = check_request(header, self.cfg.max_batch_size, self.chunk_bytes,
                                                       client.credit, self.cfg.max_client_credit)
        client.credit += credit
        client.batch_size = batch_size
        if wait_share is not None:
            client.wait_share = wait_share
        self.serve_clients()

    def serve_clients(self) -> None:
        """Send clients what their credit allows, one batch per client per round (fair when
        the pool runs low); mark clients left waiting on the pool."""
        pending = [c for c in self.peers.clients_round_robin() if c.credit > 0 and c.batch_size > 0]
        for client in self.peers.clients.values():
            client.waiting = False
        while pending:
            for client in list(pending):
                if self.pool.available(client.id) < client.batch_size:
                    client.waiting = True
                    pending.remove(client)
                elif not self._send_batch(client) or client.credit == 0:
                    pending.remove(client)
        self.grant_credit()

    def _send_batch(self, client: ClientPeer) -> bool:
        drawn = self.pool.pick(client.batch_size, client.id)
        if not self.send(client.ident, encode_batch("batch", self.spec, drawn.stems, drawn.meta)):
            return False
        self.pool.commit(drawn)
        client.credit -= 1
        client.batches += 1
        client.chunks += len(drawn.meta)
        self.totals["served"] += len(drawn.meta)
        self.totals["batches"] += 1
        return True

    _on_ctl = broker_control.handle_ctl     # steering lives in ``control``; it runs on this thread

    def _on_fixed_set_request(self, ident: bytes, header: dict, payload) -> None:
        self.fixed.request(ident, header)       # fixed sets live in ``fixed_sets``

    # -- housekeeping -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Heartbeat timeouts, local restarts, rates, starvation share, auto rules, metrics."""
        dt, self._last_tick = now - self._last_tick, now
        self._timeouts(now)
        for client in self.peers.clients.values():
            client.starved_s += dt if client.waiting else 0.0
            client.meter.update(now, client.chunks)
            client.starve_meter.update(now, client.starved_s)
        self._starved_s += dt if any(c.waiting for c in self.peers.clients.values()) else 0.0
        for worker in self.peers.workers.values():
            worker.meter.update(now, worker.received)
        for key in RATE_STAGES:
            self.meters[key].update(now, self.totals[key])
        self.meters["starved"].update(now, self._starved_s)
        if self.supervisor is not None:
            self.supervisor.check()
            for worker_id, code in self.supervisor.take_exited():
                worker = self.peers.worker_by_id(worker_id)
                if worker is not None:
                    self._drop_peer(worker.ident, f"process exited with code {code}",
                                    blame=None if code in (0, 2) else "died")
        broker_control.run_auto_rules(self, now)
        self.fixed.poll()
        self.grant_credit()
        if self.metrics is not None and now - self._last_publish >= 1.0:
            self._last_publish = now
            self.metrics.publish(self.snapshot())

    def _timeouts(self, now: float) -> None:
        """Forget workers without heartbeat (their song takes a strike) and silent clients."""
        for worker in list(self.peers.workers.values()):
            if now - worker.last_seen > self.cfg.heartbeat_timeout:
                self._drop_peer(worker.ident, f"no heartbeat for {now - worker.last_seen:.1f} s", blame="lost")
        for client in list(self.peers.clients.values()):
            if now - client.last_seen > CLIENT_TIMEOUT_S:
                self._drop_peer(client.ident, f"silent for {now - client.last_seen:.0f} s")

    def snapshot(self) -> dict:
        """The stats object (JSON-ready; its layout is described in ``stats``)."""
        return broker_snapshot(self)
