"""The broker: one ZeroMQ ROUTER socket, a single-threaded poll loop, the reuse pool.

It registers peers ("hello"), grants workers credit (pool free slots minus credit already
outstanding, so the pool can never overflow: back-pressure), stores their chunks, serves client
batches within client credit, answers ctl/stats, sends song MIDI bytes, and runs the auto rules
(``autoscale``). Every received message is validated; bad ones are dropped, counted by reason
and, where the peer can act on it, answered with an "error". See docs/streaming.md.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

from .autoscale import ReuseController, WorkerScaler
from .config import ChunkSourceConfig
from .peers import ClientPeer, Registry, WorkerPeer, check_hello, check_request, parse_ctl
from .pool import ReusePool
from .protocol import BatchSpec, ProtocolError, decode, decode_batch, encode, encode_batch
from .serve_config import BrokerConfig, load_server_curve, source_to_json
from .stats import MetricsServer, RateMeter, broker_snapshot

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20     # largest frame accepted from any peer
MAX_WELCOME_SONGS = 20_000       # a welcome lists at most this many songs (random subset)
TICK_S = 0.25                    # housekeeping period of the loop


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
        self.songs = {s.song_id: s for s in songs}
        self.corpus_root = Path(corpus_root)
        audio = source.audio
        self.spec = BatchSpec(audio.sample_rate, audio.target, audio.context,
                              tuple(c.name for c in source.corpus.classes), cfg.dtype)
        self.pool = ReusePool(cfg.pool_size, len(self.spec.stems), self.spec.window, cfg.dtype,
                              cfg.reuse, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
        self.reuse = ReuseController(cfg.reuse, cfg.max_reuse, auto=cfg.reuse_auto)
        self.scaler = WorkerScaler(cfg.min_workers, cfg.max_workers) if cfg.workers_auto else None
        self.peers = Registry()
        self.totals: Counter = Counter()      # rendered, kept, received, served, batches, rejected_* ...
        self.errors: Counter = Counter()      # malformed / refused messages by reason
        self.meters = {k: RateMeter() for k in ("rendered", "kept", "received", "served", "starved")}
        self.paused = False
        self.started = time.monotonic()
        self._last_tick = self._last_publish = self.started
        self._starved_s = 0.0
        self._welcomes = 0
        self.ctx = zmq.Context()
        self._auth = None
        try:
            self.sock = self._bind()
        except Exception:
            if self._auth is not None:
                self._auth.stop()
            self.ctx.destroy(linger=0)
            raise
        self.address = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    # -- socket -------------------------------------------------------------------------------
    def _bind(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self.cfg.curve_keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = load_server_curve(self.cfg.curve_keys)
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self.cfg.curve_keys))
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        port = "*" if self.cfg.port == 0 else str(self.cfg.port)
        try:
            sock.bind(f"tcp://{self.cfg.bind}:{port}")
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot bind tcp://{self.cfg.bind}:{port}: {exc}") from None
        return sock

    def connect_address(self) -> str:
        """Where local processes connect (a wildcard bind is reached over loopback)."""
        return self.address.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")

    def budget_bytes(self) -> int:
        """Pool payload budget: capacity x stems x window x itemsize."""
        return self.cfg.pool_size * len(self.spec.stems) * self.spec.window * self.spec.np_dtype.itemsize

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
        self.ctx.term()

    def _send(self, ident: bytes, frames: list) -> bool:
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

    def _error(self, ident: bytes, reason: str, message: str, code: str | None = None) -> None:
        """Count a refused message by reason and tell the peer why."""
        self.errors[reason] += 1
        header = {"type": "error", "message": message[:500]}
        if code is not None:
            header["code"] = code
        self._send(ident, encode(header))

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
        if role == "worker":
            local = self.supervisor is not None and self.supervisor.owns(peer_id)
            self.peers.add_worker(WorkerPeer(ident, peer_id, pid, host, local, time.monotonic()))
            self._send(ident, encode(self._worker_welcome()))
            log.info("worker %s joined (%s, pid %s)", peer_id, host, pid)
            self._grant()
        elif role == "client":
            gone = self.peers.add_client(ClientPeer(ident, peer_id, pid, host, time.monotonic()))
            if gone is not None:
                self.pool.release_client(gone.id)
            self._send(ident, encode({"type": "welcome", **self.spec.to_header()}))
            log.info("client %s joined (%s, pid %s)", peer_id, host, pid)
        else:
            self._send(ident, encode({"type": "ctl_reply", "ok": True, "message": "hello"}))

    def _worker_welcome(self) -> dict:
        self._welcomes += 1
        seed = int(np.random.SeedSequence([self.cfg.seed, self._welcomes]).generate_state(1)[0])
        songs = list(self.songs.values())
        if len(songs) > MAX_WELCOME_SONGS:
            pick = np.random.default_rng(seed).choice(len(songs), MAX_WELCOME_SONGS, replace=False)
            songs = [songs[i] for i in pick]
        return {"type": "welcome", "source": source_to_json(self.source), "seed": seed,
                "dtype": self.cfg.dtype, "songs": [[s.song_id, round(s.duration, 3)] for s in songs]}

    def _drop_peer(self, ident: bytes, why: str) -> None:
        worker = self.peers.workers.pop(ident, None)
        if worker is not None:
            log.warning("forgetting worker %s (%s); %d credit reclaimed", worker.id, why, worker.credit)
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
        worker.last_seen = time.monotonic()
        rate = header.get("rate")
        if isinstance(rate, (int, float)) and 0 <= rate < 1e9:
            worker.rate = float(rate)
        self._apply_counters(worker, header.get("counters"))

    def _apply_counters(self, worker: WorkerPeer, counters) -> None:
        """Add the growth of a worker's cumulative counters to the broker totals."""
        for key, delta in worker.counter_deltas(counters).items():
            self.totals[key] += delta

    def _known_worker(self, ident: bytes) -> WorkerPeer | None:
        worker = self.peers.workers.get(ident)
        if worker is None:
            self._error(ident, "unknown_peer", "unknown worker; say hello first", code="hello_first")
        return worker

    def _on_song_request(self, ident: bytes, header: dict, payload) -> None:
        if self._known_worker(ident) is None:
            return
        song = self.songs.get(header.get("song_id")) if isinstance(header.get("song_id"), str) else None
        if song is None:
            raise ProtocolError(f"unknown song_id {str(header.get('song_id'))[:40]!r}")
        path = self.corpus_root / song.path
        try:
            if path.stat().st_size > self.cfg.max_song_bytes:
                raise OSError(f"larger than {self.cfg.max_song_bytes} bytes")
            data = path.read_bytes()
        except OSError as exc:
            self._error(ident, "song_unreadable", f"song {song.song_id}: cannot read {song.path}: {exc}")
            return
        self.totals["songs_sent"] += 1
        self._send(ident, encode({"type": "song_data", "song_id": song.song_id}, data))

    def _on_chunks(self, ident: bytes, header: dict, payload) -> None:
        worker = self._known_worker(ident)
        if worker is None:
            return
        worker.last_seen = time.monotonic()
        _, stems, meta = decode_batch(header, payload, expect=self.spec, max_bytes=MAX_MESSAGE_BYTES)
        self._apply_counters(worker, header.get("counters"))
        n = stems.shape[0]
        k = min(n, worker.credit)
        if k < n:
            self.errors["over_credit"] += n - k
        stored = self.pool.add(stems[:k], meta[:k])
        worker.credit -= k
        worker.received += stored
        self.totals["received"] += stored
        self._serve()
        self._grant()

    def _grant(self) -> None:
        """Give workers credit from the pool's free slots not yet promised (none while paused)."""
        if self.paused:
            return
        budget = self.pool.free() - sum(w.credit for w in self.peers.workers.values())
        block = self.cfg.credit_block
        for worker in sorted(self.peers.workers.values(), key=lambda w: w.credit):
            give = min(block - worker.credit, budget)
            if give <= 0 or worker.credit > block // 2:
                continue
            if self._send(worker.ident, encode({"type": "credit", "n": give})):
                worker.credit += give
                budget -= give

    # -- clients ------------------------------------------------------------------------------
    def _on_request(self, ident: bytes, header: dict, payload) -> None:
        client = self.peers.clients.get(ident)
        if client is None:
            self._error(ident, "unknown_peer", "unknown client; say hello first", code="hello_first")
            return
        credit, batch_size, wait_share = check_request(header, self.cfg.max_batch_size,
                                                       self.spec.window * len(self.spec.stems)
                                                       * self.spec.np_dtype.itemsize)
        if client.credit + credit > self.cfg.max_client_credit:
            raise ProtocolError(f"outstanding credit would be {client.credit + credit} batches "
                                f"(limit {self.cfg.max_client_credit})")
        client.credit += credit
        client.batch_size = batch_size
        if wait_share is not None:
            client.wait_share = wait_share
        self._serve()

    def _serve(self) -> None:
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
        self._grant()

    def _send_batch(self, client: ClientPeer) -> bool:
        stems, meta = self.pool.draw(client.batch_size, client.id)
        if not self._send(client.ident, encode_batch("batch", self.spec, stems, meta)):
            return False
        client.credit -= 1
        client.batches += 1
        client.chunks += len(meta)
        self.totals["served"] += len(meta)
        self.totals["batches"] += 1
        return True

    # -- control ------------------------------------------------------------------------------
    def _on_ctl(self, ident: bytes, header: dict, payload) -> None:
        cmd, key, value = parse_ctl(header, self.cfg.max_reuse)
        if cmd == "stats":
            self._send(ident, encode({"type": "stats", "stats": self.snapshot()}))
            return
        ok, message = self.apply_ctl(cmd, key, value)
        if not ok:
            self.errors["ctl_refused"] += 1
        self._send(ident, encode({"type": "ctl_reply", "ok": ok, "message": message}))

    def apply_ctl(self, cmd: str, key: str, value: int | None) -> tuple[bool, str]:
        """pause / resume / set reuse N|auto / set workers N|auto (``value`` None means auto)."""
        if cmd in ("pause", "resume"):
            self.paused = cmd == "pause"
            self._grant()
            return True, "production paused" if self.paused else "production resumed"
        if key == "reuse":
            self.reuse.auto = value is None
            if value is not None:
                self.reuse.value = value
                self.pool.set_reuse(value)
            self._serve()
            return True, f"reuse {'auto' if value is None else value}"
        if self.supervisor is None:
            return False, "this broker runs no local workers"
        if value is None:
            self.scaler = self.scaler or WorkerScaler(self.cfg.min_workers, self.cfg.max_workers)
            return True, f"workers auto ({self.cfg.min_workers}..{self.cfg.max_workers})"
        self.scaler = None
        self.supervisor.scale_to(value)
        return True, f"workers {value}"

    # -- housekeeping -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Heartbeat timeouts, local restarts, rates, starvation share, auto rules, metrics."""
        dt, self._last_tick = now - self._last_tick, now
        for worker in list(self.peers.workers.values()):
            if now - worker.last_seen > self.cfg.heartbeat_timeout:
                self._drop_peer(worker.ident, f"no heartbeat for {now - worker.last_seen:.1f} s")
        for client in self.peers.clients.values():
            client.starved_s += dt if client.waiting else 0.0
            client.meter.update(now, client.chunks)
            client.starve_meter.update(now, client.starved_s)
        self._starved_s += dt if any(c.waiting for c in self.peers.clients.values()) else 0.0
        for worker in self.peers.workers.values():
            worker.meter.update(now, worker.received)
        for key in ("rendered", "kept", "received", "served"):
            self.meters[key].update(now, self.totals[key])
        self.meters["starved"].update(now, self._starved_s)
        if self.supervisor is not None:
            self.supervisor.check()
        self._auto(now)
        self._grant()
        if self.metrics is not None and now - self._last_publish >= 1.0:
            self._last_publish = now
            self.metrics.publish(self.snapshot())

    def _auto(self, now: float) -> None:
        starved = self.meters["starved"].rate()
        if self.reuse.due(now):
            capacity = sum(w.rate for w in self.peers.workers.values())
            before = self.reuse.value
            after = self.reuse.update(capacity, self.meters["served"].rate(), starved)
            if after != before:
                self.pool.set_reuse(after)
                log.info("reuse auto: R %d -> %d (capacity %.1f, served %.1f chunks/s, starved %.0f%%)",
                         before, after, capacity, self.meters["served"].rate(), 100 * starved)
        if self.scaler is not None and self.supervisor is not None:
            self.scaler.observe_fill(now, len(self.pool) / self.pool.capacity)
            step = self.scaler.decide(now, self.supervisor.target, self.meters["received"].rate(), starved)
            if step:
                target = self.supervisor.target + step
                log.info("workers auto: %d -> %d", self.supervisor.target, target)
                self.supervisor.scale_to(target)

    def snapshot(self) -> dict:
        """The stats object (layout in ``stats``)."""
        return broker_snapshot(self)
