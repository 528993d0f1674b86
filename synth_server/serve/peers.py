"""The broker's view of its peers, and validation of the small control headers it receives.

Workers and clients are keyed by their ROUTER identity; a worker is also found by the "id" of
its heartbeats (they come from a second socket). Every ``check_*`` raises ``ProtocolError``
with a short reason for input that does not follow docs/streaming.md.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from synth_server.protocol import ProtocolError
from synth_server.serve.rates import RateMeter

MAX_ID_CHARS = 128
MAX_COUNTERS = 64
MAX_COUNT = 1 << 53              # counters, pids and offsets above this are not real
MAX_REQUEST_CREDIT = 1024
MAX_WORKERS_SET = 64
MAX_REPORTS = 64                 # song outcomes per message
MAX_CLIENT_INFLIGHT_BYTES = 256 << 20   # outstanding credit x batch bytes per client
MAX_BATCH_BYTES = 64 << 20              # one batch a client may ask for
SONG_CLAIM_S = 2.0               # a song_request names the worker's song for at least this long
ROLES = ("worker", "client", "ctl")


@dataclass
class WorkerPeer:
    ident: bytes
    id: str
    pid: int
    host: str
    local: bool
    last_seen: float
    credit: int = 0                  # chunks it may still send
    received: int = 0                # chunks stored from it
    rate: float = 0.0                # reported kept chunks per busy second
    counters: dict[str, int] = field(default_factory=dict)   # last cumulative counters
    meter: RateMeter = field(default_factory=RateMeter)
    song: str | None = None          # the song it works on (blamed if the worker dies)
    song_since: float = 0.0

    def working_on(self, song: Any, now: float, claim: bool = False) -> None:
        """Note the worker's current song: from a song_request (``claim``) or a heartbeat.

        A heartbeat without a song clears it only when the last claim is older than
        ``SONG_CLAIM_S`` (heartbeats come from another socket and may be older than the request).
        """
        if isinstance(song, str) and len(song) <= MAX_ID_CHARS:
            if claim or song != self.song:
                self.song_since = now
            self.song = song
        elif song is None and now - self.song_since > SONG_CLAIM_S:
            self.song = None

    def counter_deltas(self, counters: Any) -> dict[str, int]:
        """Validate cumulative ``counters`` and return their growth since the last report.

        A counter that went down (the worker restarted its counts) counts in full.
        """
        if counters is None:
            return {}
        if not isinstance(counters, dict) or len(counters) > MAX_COUNTERS:
            raise ProtocolError(f"counters must be an object of at most {MAX_COUNTERS} entries")
        out = {}
        for key, value in counters.items():
            if len(key) > MAX_ID_CHARS or type(value) is not int or not 0 <= value < MAX_COUNT:
                raise ProtocolError(f"counter {key[:40]!r} must be a non-negative int")
            last = self.counters.get(key, 0)
            out[key] = value - last if value >= last else value
        self.counters = dict(counters)
        return out

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "host": self.host, "local": self.local,
                "rate": round(self.rate, 2), "recv_rate": round(self.meter.rate(), 2),
                "credit": self.credit, "received": self.received,
                "last_seen_s": round(now - self.last_seen, 2)}


@dataclass
class ClientPeer:
    ident: bytes
    id: str
    pid: int
    host: str
    joined: float
    credit: int = 0                  # batches the broker may still send
    batch_size: int = 0
    batches: int = 0
    chunks: int = 0
    waiting: bool = False            # holds credit the pool could not fill
    last_seen: float = 0.0           # last hello or request (clients send one every few s)
    starved_s: float = 0.0
    wait_share: float | None = None  # as reported by the client
    meter: RateMeter = field(default_factory=RateMeter)
    starve_meter: RateMeter = field(default_factory=RateMeter)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "host": self.host, "batches": self.batches,
                "chunks": self.chunks, "credit": self.credit, "batch_size": self.batch_size,
                "rate": round(self.meter.rate(), 2),
                "starved_share": round(min(1.0, self.starve_meter.rate()), 3),
                "wait_share": self.wait_share}


class Registry:
    """Live workers and clients; one entry per identity and per peer id."""

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerPeer] = {}
        self.clients: dict[bytes, ClientPeer] = {}
        self._turn = itertools.count()

    def capacity_rate(self) -> float:
        """Kept chunks per busy second summed over the workers: what they make when not held back."""
        return sum(w.rate for w in self.workers.values())

    def worker_by_id(self, peer_id: Any) -> WorkerPeer | None:
        if not isinstance(peer_id, str):
            return None
        return next((w for w in self.workers.values() if w.id == peer_id), None)

    def add_worker(self, worker: WorkerPeer) -> WorkerPeer:
        """Register; an older entry with the same identity or id is replaced (its credit voided,
        its counter baseline kept: a worker saying hello again keeps counting from where it was)."""
        for ident, old in list(self.workers.items()):
            if ident == worker.ident or old.id == worker.id:
                del self.workers[ident]
                worker.counters = old.counters if old.id == worker.id else worker.counters
        self.workers[worker.ident] = worker
        return worker

    def add_client(self, client: ClientPeer) -> ClientPeer | None:
        """Register; returns a replaced older entry with the same id on another identity."""
        gone = None
        for ident, old in list(self.clients.items()):
            if ident == client.ident or old.id == client.id:
                del self.clients[ident]
                gone = old if ident != client.ident else gone
        self.clients[client.ident] = client
        return gone

    def clients_round_robin(self) -> list[ClientPeer]:
        """Clients starting at a rotating position, so no client is always served first."""
        clients = list(self.clients.values())
        if not clients:
            return clients
        k = next(self._turn) % len(clients)
        return clients[k:] + clients[:k]


def _text(header: dict, key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ProtocolError(f"{key!r} must be a string of 1-{MAX_ID_CHARS} characters")
    return value


def check_hello(header: dict) -> tuple[str, str, int, str]:
    """-> (role, id, pid, host)."""
    role = header.get("role")
    if role not in ROLES:
        raise ProtocolError(f"role {str(role)[:40]!r} not one of {ROLES}")
    pid = header.get("pid", 0)
    if type(pid) is not int or not 0 <= pid < MAX_COUNT:
        raise ProtocolError("pid must be a non-negative int")
    return role, _text(header, "id"), pid, _text(header, "host")


def check_request(header: dict, max_batch: int, chunk_bytes: int, outstanding: int = 0,
                  max_credit: int = MAX_REQUEST_CREDIT) -> tuple[int, int, float | None]:
    """-> (credit, batch_size, wait_share or None); ``chunk_bytes`` is one chunk on the wire,
    ``outstanding`` the client's credit so far (it may hold ``max_credit`` batches and
    ``MAX_CLIENT_INFLIGHT_BYTES`` at most)."""
    credit, size, share = header.get("credit"), header.get("batch_size"), header.get("wait_share")
    if type(credit) is not int or not 0 <= credit <= MAX_REQUEST_CREDIT:
        raise ProtocolError(f"credit must be an int in 0..{MAX_REQUEST_CREDIT}")
    if type(size) is not int or not 1 <= size <= max_batch:
        raise ProtocolError(f"batch_size must be an int in 1..{max_batch}")
    if share is not None and (not isinstance(share, (int, float)) or not 0 <= share <= 1):
        raise ProtocolError("wait_share must be a number in [0, 1]")
    if size * chunk_bytes > MAX_BATCH_BYTES:
        raise ProtocolError(f"batch of {size} chunks would exceed {MAX_BATCH_BYTES >> 20} MiB")
    if outstanding + credit > max_credit:
        raise ProtocolError(f"outstanding credit would be {outstanding + credit} batches (limit {max_credit})")
    inflight = (outstanding + credit) * size * chunk_bytes
    if credit and inflight > max(MAX_CLIENT_INFLIGHT_BYTES, size * chunk_bytes):
        raise ProtocolError(f"outstanding credit would be {inflight / 2**20:.0f} MiB "
                            f"(limit {MAX_CLIENT_INFLIGHT_BYTES / 2**20:.0f} MiB per client)")
    return credit, size, None if share is None else float(share)


def check_song_reports(header: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Optional ``songs_done`` ([song_id]) and ``songs_failed`` ([[song_id, reason]]) of a
    worker's song_request or chunks header -> (done, failed)."""
    done, failed = header.get("songs_done", []), header.get("songs_failed", [])
    if not isinstance(done, list) or len(done) > MAX_REPORTS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_ID_CHARS for s in done):
        raise ProtocolError(f"songs_done must be a list of at most {MAX_REPORTS} song ids")
    if not isinstance(failed, list) or len(failed) > MAX_REPORTS or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) and 0 < len(x) <= MAX_ID_CHARS
                                                        for x in f) for f in failed):
        raise ProtocolError(f"songs_failed must be a list of at most {MAX_REPORTS} [song_id, reason]")
    return done, [(f[0], f[1]) for f in failed]


def parse_ctl(header: dict, max_reuse: int) -> tuple[str, str, int | None]:
    """-> (cmd, key, value); value None means "auto". cmd: set, pause, resume, stats."""
    cmd = header.get("cmd")
    if cmd in ("pause", "resume", "stats"):
        return cmd, "", None
    if cmd != "set":
        raise ProtocolError(f"unknown ctl command {str(cmd)[:40]!r} (set, pause, resume, stats)")
    key, raw = header.get("key"), header.get("value")
    if key not in ("reuse", "workers"):
        raise ProtocolError(f"cannot set {str(key)[:40]!r} (reuse or workers)")
    if raw == "auto":
        return cmd, key, None
    try:
        value = int(str(raw))
    except ValueError:
        raise ProtocolError(f"{key} must be an integer or 'auto', not {str(raw)[:40]!r}") from None
    low, high = (1, max_reuse) if key == "reuse" else (0, MAX_WORKERS_SET)
    if not low <= value <= high:
        raise ProtocolError(f"{key} must be in {low}..{high} or 'auto', got {value}")
    return cmd, key, value
