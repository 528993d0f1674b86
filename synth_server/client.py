"""Trainer-side stream client: an iterator of batches from the broker.

A background thread owns the ZeroMQ DEALER socket (sockets are not thread-safe): it sends
"hello", waits for "welcome", keeps up to ``prefetch`` batches requested-or-queued (topped up
once half of them are used up), validates every batch against the welcome spec and reconnects
with exponential backoff when the broker goes silent (or at once when the broker says it does
not know us). The consumer only touches a queue; its waiting time is measured and reported in
every "request" as ``wait_share`` (share of the last ~10 s the consumer spent waiting for data).
A "request" (credit 0 if nothing is wanted) goes out at least every ``KEEPALIVE_S`` seconds, so
the broker can tell an idle client from a departed one.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from synth_server.dealer import open_dealer
from synth_server.protocol import (
    DEFAULT_MAX_BATCH_BYTES, MAX_HEADER_BYTES, BatchSpec, ProtocolError, decode, decode_batch,
    encode, from_wire,
)

log = logging.getLogger(__name__)
_client_numbers = itertools.count()
KEEPALIVE_S = 2.0        # a request (credit 0 if nothing is wanted) at least this often
WAIT_WINDOW_S = 10.0     # wait_share is measured over about this long


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch as sent: ``stems`` is ``(batch, stems, window)`` in ``spec.dtype``."""

    spec: BatchSpec
    stems: np.ndarray
    chunks: list[dict]

    def stems_f32(self) -> np.ndarray:
        """``(batch, stems, window)`` float32."""
        return from_wire(self.stems)

    def mixture_f32(self) -> np.ndarray:
        """``(batch, window)`` float32: the sum of the stems."""
        return self.stems_f32().sum(axis=1)


class StreamClient:
    """Iterator over ``Batch`` objects from a broker at ``address`` (``tcp://host:port``).

    ``prefetch``: batches requested-or-queued at any time (bounds memory). ``timeout``:
    seconds of silence, while data is owed, before reconnecting. ``curve``: optional
    ``(client_public, client_secret, server_public)`` Z85 keys (``zmq.curve_keypair()``).
    Figures: ``batches`` (delivered), ``malformed`` (dropped), ``wait_seconds`` (consumer
    time blocked in ``__next__``), ``decode_seconds`` (validation time), ``reconnects``.
    """

    def __init__(self, address: str, batch_size: int, prefetch: int = 4, timeout: float = 10.0,
                 client_id: str | None = None, curve: tuple[bytes, bytes, bytes] | None = None,
                 *, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 max_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        if batch_size < 1 or prefetch < 1 or timeout <= 0:
            raise ValueError(f"need batch_size >= 1, prefetch >= 1, timeout > 0 "
                             f"(got {batch_size}, {prefetch}, {timeout})")
        if curve is not None and len(curve) != 3:
            raise ValueError("curve must be (client_public, client_secret, server_public)")
        self.address, self.batch_size, self.prefetch, self.timeout = address, batch_size, prefetch, timeout
        self.client_id = client_id or f"{socket.gethostname()}:{os.getpid()}:{next(_client_numbers)}"
        self._curve, self._max_bytes = curve, max_bytes
        self._backoff = (backoff_base, backoff_cap)
        self.spec: BatchSpec | None = None
        self.batches = self.malformed = self.reconnects = 0
        self.wait_seconds = self.decode_seconds = 0.0
        self._waiting_since: float | None = None     # perf_counter() while blocked in get()
        self._wait_samples: deque[tuple[float, float]] = deque()   # (time, total wait), I/O thread
        self._queue: queue.Queue[Batch] = queue.Queue()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="stream-client", daemon=True)
        self._thread.start()

    # ----- consumer side -----

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = self.get()
        if batch is None:
            raise StopIteration
        return batch

    def get(self, timeout: float | None = None) -> Batch | None:
        """The next batch; None once closed. Raises TimeoutError after ``timeout`` seconds
        without one (None: wait for ever, the I/O thread reconnecting as needed)."""
        start = self._waiting_since = time.perf_counter()
        try:
            while True:
                if self._stop.is_set():
                    return None
                if not self._thread.is_alive():
                    raise RuntimeError("stream client I/O thread died; see the log")
                if timeout is not None and time.perf_counter() - start > timeout:
                    raise TimeoutError(f"no batch from {self.address} within {timeout:g} s")
                try:
                    batch = self._queue.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue
        finally:
            self.wait_seconds += time.perf_counter() - start
            self._waiting_since = None
        self.batches += 1
        self._wake()
        return batch

    def close(self) -> None:
        """Stop the I/O thread and release the socket; idempotent."""
        if self._wake_w < 0:
            return
        self._stop.set()
        self._wake()
        self._thread.join(timeout=10.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = -1

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_share(self) -> float:
        """Share of the last ~``WAIT_WINDOW_S`` seconds the consumer spent blocked in ``get``
        (0 before two samples exist). Called by the I/O thread at each request."""
        now = time.perf_counter()
        since = self._waiting_since
        total = self.wait_seconds + (now - since if since is not None else 0.0)
        samples = self._wait_samples
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= WAIT_WINDOW_S:
            samples.popleft()
        (t0, w0) = samples[0]
        return 0.0 if now <= t0 else round(min(1.0, max(0.0, (total - w0) / (now - t0))), 3)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass   # the pipe is full (a wake-up is already pending) or closed

    # ----- I/O thread -----

    def _run(self) -> None:
        ctx = zmq.Context()
        try:
            attempt = 0
            while not self._stop.is_set():
                answered, why = self._session(ctx)
                if self._stop.is_set():
                    break
                if why == "rehello":
                    log.warning("broker %s does not know this client (restarted, or timed us out); "
                                "saying hello again", self.address)
                    self.reconnects += 1
                    attempt = 0
                    continue
                attempt = 1 if answered else attempt + 1
                backoff = min(self._backoff[1], self._backoff[0] * 2 ** (attempt - 1))
                log.warning("no data from %s for %g s; reconnecting (attempt %d, backoff %g s)",
                            self.address, self.timeout, attempt, backoff)
                self.reconnects += 1
                self._stop.wait(backoff)
        finally:
            ctx.term()

    def _open(self, ctx: zmq.Context) -> zmq.Socket:
        return open_dealer(ctx, self.address, self._curve, max_bytes=max(self._max_bytes, MAX_HEADER_BYTES))

    def _session(self, ctx: zmq.Context) -> tuple[bool, str]:
        """One connection: hello, then serve credit until silence, a "hello_first" or stop.

        Returns (the broker answered: welcome or batch, which resets the backoff; why it ended:
        "stop", "silent", "rehello" or "error").
        """
        sock = self._open(ctx)
        try:
            sock.send_multipart(encode({"type": "hello", "role": "client", "id": self.client_id,
                                        "pid": os.getpid(), "host": socket.gethostname()}))
            return self._pump(sock)
        except zmq.ZMQError as exc:
            log.warning("socket error talking to %s: %s", self.address, exc)
            return False, "error"
        finally:
            sock.close(linger=0)

    def _pump(self, sock: zmq.Socket) -> tuple[bool, str]:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        state = {"welcomed": False, "outstanding": 0, "alive": False, "rehello": False, "sent": 0.0}
        last_rx = time.monotonic()
        while not self._stop.is_set():
            if state["rehello"]:
                return state["alive"], "rehello"
            if state["welcomed"]:
                self._grant(sock, state)
            events = dict(poller.poll(100))
            if self._wake_r in events:
                self._drain_wake()
            if sock in events:
                last_rx = time.monotonic()
                self._receive_all(sock, state)
            owed = not state["welcomed"] or state["outstanding"] > 0
            if not owed:
                last_rx = time.monotonic()    # silence is expected while we hold no credit
            elif time.monotonic() - last_rx > self.timeout:
                return state["alive"], "silent"
        return state["alive"], "stop"

    def _grant(self, sock: zmq.Socket, state: dict) -> None:
        """Top up to ``prefetch`` once half of it is used up (one request per prefetch/2 batches:
        fewer messages and longer bursts measured faster than a request per batch, see
        docs/benchmarks.md); otherwise a keepalive (with what is wanted) every KEEPALIVE_S."""
        want = max(0, self.prefetch - self._queue.qsize() - state["outstanding"])
        if want < max(1, self.prefetch // 2) and time.monotonic() - state["sent"] < KEEPALIVE_S:
            return
        sock.send_multipart(encode({"type": "request", "credit": want, "batch_size": self.batch_size,
                                    "wait_share": self.wait_share()}), zmq.NOBLOCK)
        state["outstanding"] += want
        state["sent"] = time.monotonic()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _receive_all(self, sock: zmq.Socket, state: dict) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames, state)

    def _handle(self, frames: list, state: dict) -> None:
        start = time.perf_counter()
        try:
            header, payload = decode(frames)
            kind = header["type"]
            if kind == "welcome":
                self._welcome(BatchSpec.from_header(header), state)
            elif kind == "error" and header.get("code") == "hello_first":
                state["rehello"] = True
            elif kind == "error":
                log.warning("broker %s reports: %s", self.address, str(header.get("message"))[:500])
            else:
                state["outstanding"] = max(0, state["outstanding"] - 1)
                self._accept_batch(header, payload, state)
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("dropped malformed message from %s (%d so far): %s",
                        self.address, self.malformed, exc)
        self.decode_seconds += time.perf_counter() - start

    def _welcome(self, spec: BatchSpec, state: dict) -> None:
        if self.spec is not None and spec != self.spec:
            log.warning("broker %s changed its batch spec: %s", self.address, spec.mismatch(self.spec))
        if self.reconnects and not state["welcomed"]:
            log.info("connected to %s again (%d reconnects so far)", self.address, self.reconnects)
        self.spec = spec
        state["welcomed"] = state["alive"] = True

    def _accept_batch(self, header: dict, payload, state: dict) -> None:
        if header["type"] != "batch":
            raise ProtocolError(f"unexpected {header['type']!r} message for a client")
        if self.spec is None or not state["welcomed"]:
            raise ProtocolError("batch before welcome")
        spec, stems, chunks = decode_batch(header, payload, self.spec, self._max_bytes)
        if stems.shape[0] != self.batch_size:
            raise ProtocolError(f"batch of {stems.shape[0]} chunks, requested {self.batch_size}")
        self._queue.put(Batch(spec, stems, chunks))
