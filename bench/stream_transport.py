"""Loopback transport benchmark: broker-side send loop from a pre-filled ReusePool -> StreamClient,
against a bare ZeroMQ PUSH/PULL of the same bytes, measured alternately in one run.

The stream sender runs in a subprocess (a ROUTER socket speaking the stream protocol, drawing
batches from a full pool whose reuse limit is never reached); the StreamClient consumes in this
process. The bare sender pushes one preallocated batch-sized buffer again and again (copy=False:
no gather, no header, no validation); a PULL socket here counts the bytes. Prints, per round and
as the median, bytes/s of both and their ratio (goal >= 0.8), chunks/s, client decode time per
batch, consumer wait share and the sender's draw+encode time per batch.

    .venv/bin/python bench/stream_transport.py --seconds 5 --rounds 3 --dtype float16
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import timeit

import numpy as np
import zmq

from synth_server.client import StreamClient
from trainer.data import stems_to_torch
from synth_server.serve.pool import ReusePool
from synth_server.protocol import BatchSpec, decode, decode_batch, encode, encode_batch, to_wire

STEMS = ("drums", "piano", "strings", "bass")


def filled_pool(spec: BatchSpec, capacity: int, seed: int) -> ReusePool:
    """A full pool of random chunks; reuse high enough that it never drains."""
    rng = np.random.default_rng(seed)
    pool = ReusePool(capacity, len(spec.stems), spec.window, spec.dtype, 10**9, rng)
    step = 256
    while pool.free():
        n = min(step, pool.free())
        audio = rng.uniform(-0.5, 0.5, (n, len(spec.stems), spec.window)).astype(np.float32)
        wire, _ = to_wire(audio, spec.dtype)
        pool.add(wire, [{"song": f"song{i % 97}", "offset": i} for i in range(n)])
    return pool


def serve(spec: BatchSpec, capacity: int, ports: mp.Queue, stop: mp.Event) -> None:
    """Sender process: answer hello with welcome, send pool batches against client credit."""
    pool = filled_pool(spec, capacity, seed=0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    credit: dict[bytes, list] = {}
    busy = sent = 0.0
    cpu_start = time.process_time()
    while not stop.is_set():
        if sock.poll(20 if not any(c[0] for c in credit.values()) else 0):
            ident, *frames = sock.recv_multipart()
            header, _ = decode(frames)
            if header["type"] == "hello":
                credit[ident] = [0, 0, header["id"]]
                sock.send_multipart([ident, *encode({"type": "welcome", **spec.to_header()})])
            elif header["type"] == "request":
                credit[ident][0] += header["credit"]
                credit[ident][1] = header["batch_size"]
        for ident, entry in credit.items():
            if entry[0] > 0:
                start = time.perf_counter()
                stems, chunks = pool.draw(entry[1], entry[2])
                frames = encode_batch("batch", spec, stems, chunks)
                busy += time.perf_counter() - start
                sock.send_multipart([ident, *frames], copy=False)
                entry[0] -= 1
                sent += 1
    ports.put((busy / max(sent, 1), (time.process_time() - cpu_start) / max(sent, 1)))
    sock.close()
    ctx.term()


def bare_sender(nbytes: int, ports: mp.Queue, stop: mp.Event) -> None:
    """PUSH one preallocated ``nbytes`` frame again and again until ``stop``; then puts its
    process CPU seconds per message sent."""
    buf = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    sent, cpu = 0, time.process_time()
    while not stop.is_set():
        try:
            sock.send(buf, copy=False)
            sent += 1
        except zmq.Again:
            pass
    ports.put((time.process_time() - cpu) / max(sent, 1))
    sock.close()
    ctx.term()


def bare_rate(nbytes: int, seconds: float) -> dict:
    """Bytes/s a bare PULL socket receives from ``bare_sender`` over TCP loopback, and the CPU
    milliseconds per message of both sides (the sender's counts its whole run, warm-up included)."""
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    sender = ctx.Process(target=bare_sender, args=(nbytes, ports, stop), daemon=True)
    sender.start()
    zctx = zmq.Context()
    sock = zctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{ports.get(timeout=120)}")
    try:
        warm = time.perf_counter()
        while time.perf_counter() - warm < 1.0:
            sock.recv(copy=False)
        got, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            got += len(sock.recv(copy=False))
        out = {"bytes_s": got / (time.perf_counter() - start),
               "recv_cpu_ms": (time.process_time() - cpu) / (got / nbytes) * 1e3}
    finally:
        stop.set()
        sock.close()
        zctx.term()
    out["send_cpu_ms"] = ports.get(timeout=30) * 1e3
    sender.join(10)
    return out


def consume(client: StreamClient, seconds: float, to_torch: bool) -> tuple[int, float]:
    """Pull batches for ``seconds``; returns (chunks received, elapsed seconds)."""
    chunks, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(client)
        if to_torch:
            stems_to_torch(batch.stems, "cpu").sum(dim=1)
        chunks += batch.stems.shape[0]
    return chunks, time.perf_counter() - start


def isolated_decode_ms(spec: BatchSpec, batch_size: int) -> float:
    """CPU time of decode + decode_batch for one batch, without sockets or thread contention."""
    stems = np.zeros((batch_size, len(spec.stems), spec.window), dtype=spec.np_dtype)
    chunks = [{"song": f"lmd/{i:05d}-0123456789abcdef", "offset": i * spec.target, "uses": 1}
              for i in range(batch_size)]
    head = encode_batch("batch", spec, stems, chunks)[0]
    frames = [head, stems.tobytes()]

    def once():
        header, payload = decode(frames)
        decode_batch(header, payload, spec)

    return min(timeit.repeat(once, number=500, repeat=5)) / 500 * 1e3


def stream_round(spec: BatchSpec, args: argparse.Namespace) -> dict:
    """One stream measurement: sender process + StreamClient, ``args.seconds`` after a warm-up."""
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    sender = ctx.Process(target=serve, args=(spec, args.capacity, ports, stop), daemon=True)
    sender.start()
    port = ports.get(timeout=120)
    with StreamClient(f"tcp://127.0.0.1:{port}", args.batch_size, args.prefetch, timeout=30.0) as client:
        consume(client, 1.0, args.to_torch)                     # warm-up
        base_batches, base_decode, base_wait = client.batches, client.decode_seconds, client.wait_seconds
        cpu_start = time.process_time()
        chunks, elapsed = consume(client, args.seconds, args.to_torch)
        client_cpu = time.process_time() - cpu_start
        batches = client.batches - base_batches
        out = {"chunks_s": chunks / elapsed, "bytes_s": chunks * spec_chunk_bytes(spec) / elapsed,
               "decode_ms": (client.decode_seconds - base_decode) / batches * 1e3,
               "wait": (client.wait_seconds - base_wait) / elapsed, "batches": batches,
               "malformed": client.malformed, "client_cpu_ms": client_cpu / batches * 1e3}
    stop.set()
    out["sender_ms"], out["sender_cpu_ms"] = (1e3 * v for v in ports.get(timeout=30))
    sender.join(10)
    return out


def spec_chunk_bytes(spec: BatchSpec) -> int:
    return len(spec.stems) * spec.window * spec.np_dtype.itemsize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round and path")
    parser.add_argument("--rounds", type=int, default=3, help="bare and stream rounds, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--dtype", default="float16", choices=["float16", "int16", "float32"])
    parser.add_argument("--capacity", type=int, default=1024, help="pool chunks in the sender")
    parser.add_argument("--to-torch", action="store_true", help="also cast each batch with to_torch")
    args = parser.parse_args()
    spec = BatchSpec(44100, 4410, 4096, STEMS, args.dtype)
    nbytes = args.batch_size * spec_chunk_bytes(spec)
    print(f"dtype {args.dtype}, batch {args.batch_size} ({nbytes / 1e6:.2f} MB), prefetch {args.prefetch}, "
          f"window {spec.window}, to_torch {args.to_torch}, {args.rounds} rounds of {args.seconds:g} s")
    print("CPU ms are per batch-sized message, each process's threads together (ZeroMQ's I/O thread included)")
    print(f"{'round':>5} {'bare GB/s':>10} {'stream GB/s':>12} {'ratio':>6} {'chunks/s':>9} {'decode ms':>10} "
          f"{'wait':>6} {'draw+encode ms':>15} {'CPU ms send/recv: bare':>23} {'stream':>13}")
    bare, rows = [], []
    for r in range(args.rounds):
        bare.append(bare_rate(nbytes, args.seconds))
        rows.append(stream_round(spec, args))
        row, b = rows[-1], bare[-1]
        print(f"{r + 1:5d} {b['bytes_s'] / 1e9:10.2f} {row['bytes_s'] / 1e9:12.2f} {row['bytes_s'] / b['bytes_s']:6.2f} "
              f"{row['chunks_s']:9.0f} {row['decode_ms']:10.3f} {row['wait']:6.1%} {row['sender_ms']:15.3f} "
              f"{b['send_cpu_ms']:11.2f} / {b['recv_cpu_ms']:<9.2f} {row['sender_cpu_ms']:5.2f} / {row['client_cpu_ms']:<5.2f}",
              flush=True)
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    bmed = {k: float(np.median([b[k] for b in bare])) for k in bare[0]}
    ratios = [row["bytes_s"] / b["bytes_s"] for row, b in zip(rows, bare)]
    print(f"median: bare {bmed['bytes_s'] / 1e9:.2f} GB/s, stream {med['bytes_s'] / 1e9:.2f} GB/s "
          f"({med['chunks_s']:.0f} chunks/s), stream/bare {np.median(ratios):.2f} (goal >= 0.8); "
          f"malformed {sum(row['malformed'] for row in rows)}")
    bare_cpu, stream_cpu = bmed["send_cpu_ms"] + bmed["recv_cpu_ms"], med["sender_cpu_ms"] + med["client_cpu_ms"]
    print(f"CPU per batch, both ends: bare {bare_cpu:.2f} ms, stream {stream_cpu:.2f} ms "
          f"(bare/stream {bare_cpu / stream_cpu:.2f}: the stream/bare ratio to expect when the cores are the limit)")
    print(f"decode/batch {med['decode_ms']:.3f} ms wall in the I/O thread; "
          f"{isolated_decode_ms(spec, args.batch_size):.3f} ms CPU isolated (goal < 0.2 ms)")


if __name__ == "__main__":
    main()
