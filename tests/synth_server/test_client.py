"""StreamClient against a tiny fake broker (a ROUTER socket in a thread speaking the spec)."""
import threading
import time

import numpy as np
import pytest
import zmq

from harness import wait_for
from synth_server.client import StreamClient
from synth_server.protocol import BatchSpec, decode, encode, encode_batch

SPEC = BatchSpec(sample_rate=8000, target=20, context=6, stems=("drums", "piano", "bass"), dtype="int16")


class FakeBroker:
    """Serves int16 batches on credit; records what the client asked for and what it sent.

    Chunk ``offset`` is the batch sequence number, so a test can find the sent array.
    ``bad``: sequence numbers sent malformed in the way ``bad_kind`` names.
    """

    def __init__(self, port=None, bad=(), bad_kind="shape", serve_after=0.0, curve_secret=None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = curve_secret
        if port is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.port, self.address = port, f"tcp://127.0.0.1:{port}"
        self.bad, self.bad_kind = set(bad), bad_kind
        self.serve_at = time.monotonic() + serve_after
        self.rng = np.random.default_rng(port)
        self.hellos, self.sent, self.credit = [], {}, {}
        self.max_outstanding = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            if self.sock.poll(10):
                ident, *frames = self.sock.recv_multipart()
                self._handle(ident, frames)
            if time.monotonic() >= self.serve_at:
                self._serve()

    def _handle(self, ident, frames):
        header, _ = decode(frames)
        if header["type"] == "hello":
            self.hellos.append(header["id"])
            self.credit[ident] = [0, 0]
            self.sock.send_multipart([ident, *encode({"type": "welcome", **SPEC.to_header()})])
        elif header["type"] == "request" and ident in self.credit:
            self.credit[ident][0] += header["credit"]
            self.credit[ident][1] = header["batch_size"]
            self.max_outstanding = max(self.max_outstanding, self.credit[ident][0])
        else:
            self.errors.append(f"unexpected {header['type']} from {ident!r}")

    def _serve(self):
        for ident, (credit, size) in self.credit.items():
            for _ in range(credit):
                self.sock.send_multipart([ident, *self._batch(size)], copy=False)
            self.credit[ident][0] = 0

    def _batch(self, size):
        seq = len(self.sent)
        stems = self.rng.integers(-20000, 20000, (size, len(SPEC.stems), SPEC.window), dtype=np.int16)
        self.sent[seq] = stems
        chunks = [{"song": f"song{i}", "offset": seq, "uses": 1} for i in range(size)]
        frames = encode_batch("batch", SPEC, stems, chunks)
        if seq not in self.bad:
            return frames
        if self.bad_kind == "shape":
            return [frames[0].replace(b'"shape":[', b'"shape":[1,'), frames[1]]
        if self.bad_kind == "truncated":
            return [frames[0], stems.tobytes()[:-2]]
        if self.bad_kind == "stems":
            other = BatchSpec(SPEC.sample_rate, SPEC.target, SPEC.context, ("a", "b", "c"), SPEC.dtype)
            return encode_batch("batch", other, stems, chunks)
        return [self.rng.bytes(40)]

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def fake_stream():
    """Factory fixture: ``fake_stream(**FakeBroker kwargs) -> FakeBroker``; stopped at teardown."""
    made = []

    def make(**kwargs):
        made.append(FakeBroker(**kwargs))
        return made[-1]

    yield make
    for b in made:
        b.stop()


def take(client, n, deadline=10.0):
    out, end = [], time.monotonic() + deadline
    while len(out) < n:
        assert time.monotonic() < end, f"only {len(out)} of {n} batches arrived"
        out.append(next(client))
    return out


def test_batches_have_right_shape_and_mixture(fake_stream):
    fake = fake_stream(serve_after=0.3)
    with StreamClient(fake.address, batch_size=5, prefetch=2, timeout=5.0) as client:
        batches = take(client, 6)
        assert client.spec == SPEC and fake.hellos == [client.client_id]
        for batch in batches:
            sent = fake.sent[batch.chunks[0]["offset"]]
            assert batch.stems.shape == (5, 3, SPEC.window) and batch.stems.dtype == np.int16
            np.testing.assert_array_equal(batch.stems, sent)
            expect = sent.astype(np.float32).sum(axis=1) / 32767
            np.testing.assert_allclose(batch.mixture_f32(), expect, atol=1e-6)
        assert client.batches == 6 and client.malformed == 0
        assert client.wait_seconds >= 0.2                 # the broker held back for 0.3 s
    assert not client._thread.is_alive()
    with pytest.raises(StopIteration):
        next(client)


def test_client_never_exceeds_credit(fake_stream):
    fake = fake_stream()
    with StreamClient(fake.address, batch_size=2, prefetch=3, timeout=5.0) as client:
        for _ in range(5):
            take(client, 1)
            time.sleep(0.05)
        assert wait_for(lambda: len(fake.sent) >= 5 + 3, timeout=10)          # prefetch refilled ...
        assert not wait_for(lambda: len(fake.sent) > 5 + 3, timeout=0.3)      # ... and no more: consumer idle
        assert len(fake.sent) == 5 + 3
        assert fake.max_outstanding <= 3 and not fake.errors
        take(client, 3)
        assert wait_for(lambda: len(fake.sent) >= 8 + 3, timeout=10)
        assert not wait_for(lambda: len(fake.sent) > 8 + 3, timeout=0.3)
        assert len(fake.sent) == 8 + 3


@pytest.mark.parametrize("bad_kind", ["shape", "truncated", "stems", "garbage"])
def test_malformed_batch_is_skipped_and_counted(fake_stream, bad_kind):
    fake = fake_stream(bad={1}, bad_kind=bad_kind)
    with StreamClient(fake.address, batch_size=3, prefetch=2, timeout=5.0) as client:
        offsets = [b.chunks[0]["offset"] for b in take(client, 4)]
        assert offsets == [0, 2, 3, 4]
        assert client.malformed == 1 and client.batches == 4


def test_reconnects_after_broker_restart(fake_stream):
    first = fake_stream()
    client = StreamClient(first.address, batch_size=2, prefetch=2, timeout=0.3,
                          backoff_base=0.05, backoff_cap=0.2)
    try:
        take(client, 3)
        first.stop()
        time.sleep(0.2)
        second = fake_stream(port=first.port)
        batches = take(client, 4)
        assert client.reconnects >= 1
        assert second.hellos and set(second.hellos) == {client.client_id}
        assert any(b.stems.shape == (2, 3, SPEC.window) for b in batches)
        assert len(second.sent) >= 1
    finally:
        client.close()


def test_curve_encryption(fake_stream):
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    fake = fake_stream(curve_secret=server_secret)
    with StreamClient(fake.address, batch_size=2, prefetch=1, timeout=5.0,
                      curve=(client_public, client_secret, server_public)) as client:
        batch = take(client, 2)[1]
        np.testing.assert_array_equal(batch.stems, fake.sent[batch.chunks[0]["offset"]])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        StreamClient("tcp://127.0.0.1:1", batch_size=0)
