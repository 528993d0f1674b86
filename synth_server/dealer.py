"""Client-side ZeroMQ plumbing shared by every peer of the broker.

``open_dealer``: a DEALER socket connected to the broker (CURVE client when keys are given); the
stream client, workers and their heartbeats use it. ``ControlClient``: ctl/stats requests on a
socket of its own (ctl messages need no hello), either blocking (``ask``, the CLI) or without
waiting (``request_stats``/``latest_stats``, the trainer's stats probe).
"""
from __future__ import annotations

import time

import zmq

from synth_server.protocol import ProtocolError, decode, encode

Curve = tuple[bytes, bytes, bytes]     # (client public, client secret, server public), Z85


def open_dealer(ctx: zmq.Context, address: str, curve: Curve | None = None, *, sndhwm: int | None = None,
                max_bytes: int | None = None) -> zmq.Socket:
    """A DEALER socket connected to ``address`` (``tcp://host:port``), linger 0; ``max_bytes``
    caps the size of a received frame (ZeroMQ drops the connection before allocating more)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
    if max_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    sock.connect(address)
    return sock


class ControlClient:
    """ctl/stats requests to the broker at ``address``; ``close()`` when done.

    ``ask`` sends one message and waits for the reply header. ``request_stats`` sends
    ``{"type": "ctl", "cmd": "stats"}`` unless one is still unanswered (re-sent after
    ``stale_s``); ``latest_stats`` drains replies without waiting and returns the newest stats
    object seen so far (None before the first).
    """

    def __init__(self, address: str, curve: Curve | None = None, stale_s: float = 30.0) -> None:
        self.address = address
        self._ctx = zmq.Context()
        self._sock = open_dealer(self._ctx, address, curve, sndhwm=4)
        self._stale_s = stale_s
        self._sent_at: float | None = None
        self._latest: dict | None = None
        self.malformed = 0

    def ask(self, header: dict, timeout: float) -> dict:
        """Send ``header``, return the reply header; TimeoutError when none comes in ``timeout``
        seconds, ValueError for a malformed reply."""
        self._sock.send_multipart(encode(header))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._sock.poll(int(left * 1000) + 1):
                try:
                    reply, _ = decode(self._sock.recv_multipart())
                except ProtocolError as exc:
                    raise ValueError(f"malformed reply from {self.address}: {exc}") from None
                return reply
        raise TimeoutError(f"no reply from {self.address} within {timeout:g} s "
                           "(is `serve` running there? does it need --curve-keys?)")

    def stats(self, timeout: float) -> dict:
        """The broker's stats object (blocking); ValueError for an unexpected reply."""
        reply = self.ask({"type": "ctl", "cmd": "stats"}, timeout)
        if reply.get("type") != "stats" or not isinstance(reply.get("stats"), dict):
            raise ValueError(f"unexpected reply: {str(reply)[:200]}")
        return reply["stats"]

    def request_stats(self) -> None:
        now = time.monotonic()
        if self._sent_at is not None and now - self._sent_at < self._stale_s:
            return
        try:
            self._sock.send_multipart(encode({"type": "ctl", "cmd": "stats"}), zmq.NOBLOCK)
            self._sent_at = now
        except zmq.Again:
            pass    # not connected yet; try again next time

    def latest_stats(self) -> dict | None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self._latest
            try:
                header, _ = decode(frames)
            except ProtocolError:
                self.malformed += 1
                continue
            if header.get("type") == "stats" and isinstance(header.get("stats"), dict):
                self._latest = header["stats"]
                self._sent_at = None

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
