"""Fuzz a real broker over loopback: a few thousand random and mutated multipart messages from
strangers, a registered worker and a registered client. Afterwards the broker still serves a
normal worker and StreamClient correctly, and its malformed counter moved."""
import json
import time

import numpy as np
import zmq

from harness import SMALL_AUDIO, SMALL_SPEC, song_id
from synth_server.client import StreamClient
from synth_server.protocol import MAX_HEADER_BYTES, MESSAGE_TYPES, decode, encode, encode_batch

SONG = song_id(0)                               # the broker's one song
N_MESSAGES = 3000


def drain(sock):
    """Read every queued reply; return the decoded headers."""
    out = []
    while sock.poll(0):
        out.append(decode(sock.recv_multipart())[0])
    return out


def valid_chunks(n, tag=0):
    stems = np.full((n, 4, SMALL_AUDIO.window), 0.5, np.float16)
    stems[:, 0, 0] = tag
    meta = [{"song": SONG, "offset": tag + i, "uses": 0} for i in range(n)]
    return encode_batch("chunks", SMALL_SPEC, stems, meta, counters={"kept": n})


WEIRD = [None, True, -1, 0, 1, 2**31, 2**64, 10**30, -(10**20), 1e308, float("nan"), float("inf"), "",
         "x" * 300, "../../etc/passwd", [], [1, 2], {}, {"a": {"b": [None]}}, [[["deep"]]], "auto", SONG]
KEYS = ["role", "id", "pid", "host", "song_id", "n", "credit", "batch_size", "wait_share", "counters", "rate",
        "cmd", "key", "value", "batch", "shape", "chunks", "dtype", "stems", "sample_rate", "target", "context",
        "song", "stalled", "songs_done", "songs_failed"]


def random_header(rng) -> dict:
    kinds = sorted(MESSAGE_TYPES) + ["frobnicate", ""]
    header = {"v": 1 if rng.random() < 0.9 else int(rng.integers(-5, 5)), "type": kinds[rng.integers(len(kinds))]}
    for key in rng.choice(KEYS, size=int(rng.integers(0, 8)), replace=False):
        header[str(key)] = WEIRD[rng.integers(len(WEIRD))]
    return header


def mutate(rng, frames: list) -> list:
    """A valid message damaged one way: bit flips, truncation, a bad shape, a huge claim, extra frames."""
    head, payload = bytes(frames[0]), bytes(memoryview(frames[1])) if len(frames) > 1 else None
    choice = rng.integers(7)
    if choice == 0:                                       # flip bytes in the header
        raw = bytearray(head)
        for i in rng.integers(0, len(raw), size=3):
            raw[i] = int(rng.integers(256))
        return [bytes(raw)] + ([payload] if payload is not None else [])
    if choice == 1 and payload is not None:               # truncated payload
        return [head, payload[: int(rng.integers(0, len(payload)))]]
    if choice == 2 and payload is not None:               # payload longer than the header says
        return [head, payload + rng.bytes(int(rng.integers(1, 500)))]
    header = json.loads(head)
    if choice == 3 and "shape" in header:                 # a header claiming gigabytes
        header["batch"] = header["shape"][0] = 10**7
    elif choice == 4 and "shape" in header:
        header["shape"] = [header["batch"], 3, SMALL_AUDIO.window]
    elif choice == 5:
        return [head, payload or b"", rng.bytes(10)]     # three frames
    else:
        header["v"] = 2
    return [json.dumps(header).encode()] + ([payload] if payload is not None else [])


def one_message(rng, registered_worker: bool) -> list:
    r = rng.random() * (0.45 if registered_worker else 1.0) + (0.55 if registered_worker else 0.0)
    if r < 0.25:
        return [rng.bytes(int(rng.integers(0, 2000))) for _ in range(int(rng.integers(1, 4)))]
    if r < 0.55:
        header = random_header(rng)
        frames = [json.dumps(header, allow_nan=True).encode()]
        return frames + ([rng.bytes(int(rng.integers(0, 3000)))] if rng.random() < 0.4 else [])
    if r < 0.85:
        return mutate(rng, valid_chunks(int(rng.integers(1, 5)), tag=7))
    if r < 0.92:
        return encode({"type": "request", "credit": int(rng.integers(0, 5000)),
                       "batch_size": int(rng.integers(-3, 5000))})
    if registered_worker:
        return valid_chunks(int(rng.integers(1, 40)), tag=9)   # mostly beyond its credit
    return encode({"type": "song_request", "song_id": SONG})


def test_fuzzed_broker_survives_and_still_serves(broker, peer):
    running = broker(songs=1)
    b, thread = running.broker, running.thread
    assert b.sock.getsockopt(zmq.MAXMSGSIZE) == b.max_frame == MAX_HEADER_BYTES   # tiny chunks: header bound

    def dealer():
        return peer(b.address).sock

    rng = np.random.default_rng(1234)
    strangers = [dealer() for _ in range(3)]
    worker, client = dealer(), dealer()
    worker.send_multipart(encode({"type": "hello", "role": "worker", "id": "fw", "pid": 1, "host": "h"}))
    client.send_multipart(encode({"type": "hello", "role": "client", "id": "fc", "pid": 1, "host": "h"}))
    oversized = dealer()
    oversized.send_multipart([b'{"v":1,"type":"ctl","cmd":"stats"}', bytes(b.max_frame + 1)])
    senders = strangers + [worker, client]
    for i in range(N_MESSAGES):
        k = int(rng.integers(len(senders)))
        senders[k].send_multipart(one_message(rng, senders[k] is worker))
        if i % 50 == 0:
            for sock in senders:
                drain(sock)
            time.sleep(0.001)
    assert thread.is_alive()

    stats = peer(b.address).stats(timeout=20)        # the broker works through its queues first
    assert stats["malformed"] > N_MESSAGES // 3
    assert stats["errors"]["protocol"] > 500 and stats["errors"]["bad_chunks"] > 100
    assert stats["errors"].get("internal_error", 0) == 0     # every bad input had a clear reason
    assert oversized.poll(500) == 0                  # the oversized frame was never answered
    assert stats["pool"]["size"] <= 64

    # a normal worker and a normal client still work (the pool may still hold fuzz chunks)
    good = dealer()
    good.send_multipart(encode({"type": "hello", "role": "worker", "id": "good", "pid": 2, "host": "h"}))
    tags, credit, deadline = set(), 0, time.monotonic() + 30
    with StreamClient(b.address, batch_size=4, prefetch=1, timeout=10) as stream:
        while 100 not in tags and time.monotonic() < deadline:
            credit += sum(h["n"] for h in drain(good) if h["type"] == "credit")
            if credit:
                good.send_multipart(valid_chunks(min(credit, 8), tag=100))
                credit -= min(credit, 8)
            good.send_multipart(encode({"type": "heartbeat", "id": "good", "counters": {}, "rate": 1.0}))
            try:
                batch = stream.get(timeout=0.5)
            except TimeoutError:
                continue
            assert batch.stems.shape == (4, 4, SMALL_AUDIO.window)
            assert all(m["song"] == SONG for m in batch.chunks)
            assert np.all(batch.stems_f32()[:, 1:] == 0.5)
            tags.update(batch.stems_f32()[:, 0, 0].astype(int).tolist())
    assert 100 in tags, "chunks of a normal worker never reached a normal client"
    assert thread.is_alive()
