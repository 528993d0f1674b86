"""Wire format: round trips, conversions, and rejection of malformed messages."""
import json
import tracemalloc

import numpy as np
import pytest

from synth_server.protocol import (
    MAX_HEADER_BYTES, PROTOCOL_VERSION, STEM_DTYPES, BatchSpec, ProtocolError, decode,
    decode_batch, encode, encode_batch, from_wire, to_wire,
)

STEMS = ("drums", "piano", "strings", "bass")


def spec_for(dtype: str) -> BatchSpec:
    return BatchSpec(sample_rate=8000, target=30, context=5, stems=STEMS, dtype=dtype)


def random_batch(rng: np.random.Generator, dtype: str, n: int = 3):
    spec = spec_for(dtype)
    f32 = rng.uniform(-0.9, 0.9, size=(n, len(STEMS), spec.window)).astype(np.float32)
    wire, clipped = to_wire(f32, dtype)
    assert clipped == 0
    chunks = [{"song": f"song{i}", "offset": 100 * i, "uses": i % 2 + 1} for i in range(n)]
    return spec, f32, wire, chunks


def as_bytes(frames):
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in frames]


@pytest.mark.parametrize("dtype", sorted(STEM_DTYPES))
def test_batch_round_trip(dtype):
    rng = np.random.default_rng(1)
    spec, f32, wire, chunks = random_batch(rng, dtype)
    frames = encode_batch("batch", spec, wire, chunks, note="x")
    assert frames[1] is wire                       # no copy of a contiguous payload
    header, payload = decode(as_bytes(frames))
    assert header["v"] == PROTOCOL_VERSION and header["note"] == "x"
    got_spec, stems, got_chunks = decode_batch(header, payload, expect=spec)
    assert got_spec == spec and got_chunks == chunks
    assert stems.shape == (3, 4, spec.window) and stems.dtype == STEM_DTYPES[dtype]
    np.testing.assert_array_equal(stems, wire)
    tol = {"float32": 0, "float16": 1e-3, "int16": 1 / 32767}[dtype]
    np.testing.assert_allclose(from_wire(stems), f32, atol=tol)
    assert from_wire(stems).dtype == np.float32


def test_encode_adds_version_and_keeps_caller_header():
    header = {"type": "hello", "role": "client", "id": "a", "pid": 1, "host": "h"}
    frames = encode(header)
    assert len(frames) == 1 and "v" not in header
    assert json.loads(frames[0])["v"] == PROTOCOL_VERSION
    assert decode(frames)[0] == {**header, "v": PROTOCOL_VERSION}


def test_encode_refuses_bad_input():
    spec, _, wire, chunks = random_batch(np.random.default_rng(2), "float16")
    with pytest.raises(ProtocolError, match="unknown message type"):
        encode({"type": "nope"})
    with pytest.raises(ProtocolError, match="C-contiguous"):
        encode({"type": "batch"}, wire[:, :, ::2])
    with pytest.raises(ValueError, match="override"):
        encode_batch("batch", spec, wire, chunks, shape=[1])
    with pytest.raises(ValueError, match="dtype"):
        encode_batch("batch", spec, wire.astype(np.float32), chunks)
    with pytest.raises(ValueError, match="chunk entries"):
        encode_batch("chunks", spec, wire, chunks[:1])


def test_to_wire_int16_clips_and_counts():
    x = np.array([[0.5, -1.5, 2.0, 1.0, -1.0]], dtype=np.float32)
    wire, clipped = to_wire(x, "int16")
    assert clipped == 2
    assert wire.tolist() == [[16384, -32767, 32767, 32767, -32767]]
    wire16, clipped16 = to_wire(np.array([7e4, 1.0], np.float32), "float16")
    assert clipped16 == 1 and np.isfinite(wire16).all()
    with pytest.raises(ValueError, match="non-finite"):
        to_wire(np.array([np.nan], np.float32), "float16")


def test_decode_rejects_envelope_errors():
    good = encode({"type": "request", "credit": 1, "batch_size": 2})
    with pytest.raises(ProtocolError, match="frames"):
        decode([])
    with pytest.raises(ProtocolError, match="frames"):
        decode(good * 3)
    with pytest.raises(ProtocolError, match="must not carry a payload"):
        decode([good[0], b"xx"])
    with pytest.raises(ProtocolError, match="no payload"):
        decode([json.dumps({"v": 1, "type": "batch"}).encode()])
    with pytest.raises(ProtocolError, match="version 2 from peer != our version 1"):
        decode([json.dumps({"v": 2, "type": "hello"}).encode()])
    with pytest.raises(ProtocolError, match="version True"):
        decode([json.dumps({"v": True, "type": "hello"}).encode()])
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode([b"\xff\xfe{}"])
    with pytest.raises(ProtocolError, match="not an object"):
        decode([b"[1, 2]"])
    with pytest.raises(ProtocolError, match="limit"):
        decode([b" " * (MAX_HEADER_BYTES + 1)])
    with pytest.raises(ProtocolError, match="JSON"):
        decode([b"[" * 100_000])
    with pytest.raises(ProtocolError, match="not a buffer"):
        decode([12])


def batch_message(dtype="float16", n=3):
    spec, _, wire, chunks = random_batch(np.random.default_rng(3), dtype, n)
    header, payload = decode(as_bytes(encode_batch("batch", spec, wire, chunks)))
    return spec, header, bytes(payload)


@pytest.mark.parametrize("change, message", [
    ({"shape": [3, 4, 10]}, "shape"),
    ({"shape": [3, 4]}, "3 ints"),
    ({"shape": [3.0, 4, 40]}, "3 ints"),
    ({"batch": 2}, "shape"),
    ({"batch": -1}, "non-negative"),
    ({"dtype": "float64"}, "dtype"),
    ({"stems": ["drums", "drums", "x", "y"]}, "duplicate"),
    ({"stems": []}, "stems"),
    ({"sample_rate": "44100"}, "sample_rate"),
    ({"context": -1}, "context"),
    ({"chunks": [{"song": "a", "offset": 0}]}, "3 entries"),
    ({"chunks": [{"song": 1, "offset": 0}] * 3}, "song"),
    ({"chunks": [{"song": "a", "offset": -5}] * 3}, "offset"),
    ({"type": "hello"}, "not a batch"),
])
def test_decode_batch_rejects_bad_headers(change, message):
    spec, header, payload = batch_message()
    with pytest.raises(ProtocolError, match=message):
        decode_batch({**header, **change}, payload)


def test_decode_batch_rejects_payload_size_mismatch():
    spec, header, payload = batch_message()
    with pytest.raises(ProtocolError, match="payload is"):
        decode_batch(header, payload[:-2])
    with pytest.raises(ProtocolError, match="payload is"):
        decode_batch(header, payload + b"\0\0")
    with pytest.raises(ProtocolError, match="no payload"):
        decode_batch(header, None)


def test_decode_batch_checks_expected_spec():
    spec, header, payload = batch_message()
    other = BatchSpec(8000, 30, 5, ("a",), "float16")
    with pytest.raises(ProtocolError, match=r"stem list \['drums', 'piano', 'strings', 'bass'\] "
                                            r"!= expected \['a'\]"):
        decode_batch(header, payload, expect=other)
    with pytest.raises(ProtocolError, match="dtype 'float16' != expected 'int16'"):
        decode_batch(header, payload, expect=spec_for("int16"))
    with pytest.raises(ProtocolError, match="sample_rate 8000 != expected 44100"):
        decode_batch(header, payload, expect=BatchSpec(44100, 30, 5, STEMS, "float16"))


def test_huge_claim_refused_without_allocating():
    """A header claiming 10 GB is refused with a clear message, and nothing big is allocated."""
    spec, header, _ = batch_message()
    n = 10 * 2**30 // (4 * spec.window * 2)
    huge = {**header, "batch": n, "shape": [n, 4, spec.window]}
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=r"claims 10240\.0 MiB \(limit 256\.0 MiB\)"):
            decode_batch(huge, b"\0" * 16)
        with pytest.raises(ProtocolError, match="list of 33554432 entries"):
            decode_batch(huge, b"\0" * 16, max_bytes=1 << 40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def mutate(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    """A random corruption of a valid message: bytes, frame count, truncation, fields."""
    head, payload = frames
    choice = rng.integers(6)
    if choice == 0:
        return [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(0, 4)))]
    if choice == 1:
        cut = int(rng.integers(0, len(payload)))
        return [head, payload[:cut]]
    if choice == 2:
        pos = int(rng.integers(0, len(head)))
        return [head[:pos] + bytes([int(rng.integers(256))]) + head[pos + 1:], payload]
    if choice == 3:
        return [head[: int(rng.integers(0, len(head)))], payload]
    header = json.loads(head)
    key = list(header)[int(rng.integers(len(header)))]
    junk = [None, -1, 0, 2**40, "x", [], {}, [1, 2, 3], 1.5, True]
    header[key] = junk[int(rng.integers(len(junk)))]
    return [json.dumps(header).encode(), payload][: 2 if choice == 4 else int(rng.integers(1, 3))]


def test_fuzz_only_protocol_errors():
    rng = np.random.default_rng(4)
    spec, header, payload = batch_message("int16", n=2)
    good = [json.dumps(header).encode(), payload]
    accepted = rejected = 0
    tracemalloc.start()
    try:
        for _ in range(3000):
            frames = mutate(rng, good)
            try:
                got_header, got_payload = decode(frames)
                got_spec, stems, chunks = decode_batch(got_header, got_payload)
            except ProtocolError:
                rejected += 1
                continue
            accepted += 1
            assert stems.shape == (len(chunks), len(got_spec.stems), got_spec.window)
            assert stems.nbytes == len(got_payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rejected > 2500 and accepted > 0
    assert peak < 4 << 20
