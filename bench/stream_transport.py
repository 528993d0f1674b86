"""Loopback transport benchmark: broker-side send loop from a pre-filled ReusePool -> StreamClient,
against a bare ZeroMQ PUSH/PULL of the same bytes, measured alternately in one run.

The stream sender runs in a subprocess (a ROUTER socket speaking the stream protocol, drawing
batches from a full pool whose reuse limit is never reached); the StreamClient consumes in this
process. The bare sender pushes batch-sized frames (copy=False: no gather, no header, no
validation); a PULL socket here counts the bytes. Three bare baselines: "hot" re-sends one buffer
(it stays in the CPU cache; the issue's baseline, the goal is stream >= 0.8 of it), "cold"
sends consecutive slices of a buffer as large as the sender's pool (memory read from DRAM, as a
server must read its pool) and "gather" sends batches drawn from a pool like the stream's (the
random gather a shuffled pool needs, without header, credit or client: the stream's ceiling on
this machine). Prints, per round and as the median, bytes/s of all four and the
ratios, then the CPU milliseconds per batch of every thread of both ends (Linux /proc) and the
sender's stages (pool draw, encode, send call) and the client's decode, per batch.

    .venv/bin/python bench/stream_transport.py --seconds 5 --rounds 3 --dtype float16 [--heap default]

``--header-once`` (a diagnostic) sends the stream's first batch header with every batch: what a
header that cost nothing to encode would gain. ``--heap`` sets glibc's malloc thresholds in every
process of the run, both paths alike: ``tuned`` (default) as ``synth-server`` and ``trainer`` set
them, ``default`` glibc's own.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import threading
import time
import timeit

import numpy as np
import zmq
from zmq.utils.garbage import gc as zmq_gc

from synth_server.client import StreamClient
from synth_server.heap import keep_batch_buffers
from trainer.data import stems_to_torch
from synth_server.serve.pool import ReusePool
from synth_server.protocol import BatchSpec, decode, decode_batch, encode, encode_batch, to_wire
from thread_cpu import task_cpu

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


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads by name (Linux /proc; {} elsewhere):
    Python threads by their name, pyzmq's garbage collector "pyzmq-gc", ZeroMQ's by their comm."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    if getattr(zmq_gc, "thread", None) is not None:
        names[zmq_gc.thread.native_id] = "pyzmq-gc"
    out: dict[str, float] = {}
    for tid, (comm, cpu) in task_cpu(os.getpid()).items():
        name = names.get(tid, comm)
        out[name] = out.get(name, 0.0) + cpu
    return out


def cpu_ms_per(before: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per item of each thread since ``before`` (a ``thread_cpu()``)."""
    return {k: (v - before.get(k, 0.0)) / max(n, 1) * 1e3 for k, v in thread_cpu().items() if v > before.get(k, 0.0)}


def serve(spec: BatchSpec, capacity: int, ports: mp.Queue, stop: mp.Event, heap: str,
          header_once: bool) -> None:
    """Sender process: answer hello with welcome, send pool batches against client credit.
    ``header_once``: encode the first batch's header and send it with every batch (the client
    still decodes and validates it): what the stream would gain if its header cost nothing."""
    set_heap(heap)
    pool = filled_pool(spec, capacity, seed=0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    credit: dict[bytes, list] = {}
    stages = dict.fromkeys(("draw", "encode", "send"), 0.0)
    sent, threads = 0, {}
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
                if not sent:
                    threads = thread_cpu()      # the pool is filled: count from the first batch on
                t0 = time.perf_counter()
                stems, chunks = pool.draw(entry[1], entry[2])
                t1 = time.perf_counter()
                if header_once and sent:
                    out = [head, stems]
                else:
                    out = encode_batch("batch", spec, stems, chunks)
                    head = out[0]
                t2 = time.perf_counter()
                sock.send_multipart([ident, *out], copy=False)
                for key, dt in zip(stages, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                    stages[key] += dt
                entry[0] -= 1
                sent += 1
    ports.put({"threads": cpu_ms_per(threads, sent), **{k: v / max(sent, 1) * 1e3 for k, v in stages.items()}})
    sock.close()
    ctx.term()


def bare_sender(nbytes: int, source: str, spec: BatchSpec, args: argparse.Namespace, ports: mp.Queue,
                stop: mp.Event) -> None:
    """PUSH ``nbytes`` frames until ``stop``, then put CPU ms per message by thread. ``source``:
    "hot" one buffer again and again, "cold" consecutive slices of a pool-sized buffer, "gather"
    ``pool.draw`` of a full pool (batch = ``nbytes`` of ``spec`` chunks). At most ``prefetch``
    messages wait in ZeroMQ, as the stream's credit allows (a gather far ahead of the wire would
    measure page faults, not the transport)."""
    set_heap(args.heap)
    if source == "gather":
        pool, batch = filled_pool(spec, args.capacity, seed=0), nbytes // spec_chunk_bytes(spec)
        frames = (pool.draw(batch, "bare")[0] for _ in itertools.repeat(None))
    else:
        size = nbytes if source == "hot" else args.capacity * spec_chunk_bytes(spec)
        data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
        frames = itertools.cycle([data[i:i + nbytes] for i in range(0, data.size - nbytes + 1, nbytes)])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, args.prefetch)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    sent, threads = 0, thread_cpu()
    while not stop.is_set():
        try:
            sock.send(next(frames), copy=False)
            sent += 1
        except zmq.Again:
            pass
    ports.put(cpu_ms_per(threads, sent))
    sock.close()
    ctx.term()


def set_heap(heap: str) -> None:
    """``tuned``: glibc thresholds as the CLIs set them (``synth_server.heap``); ``default``: glibc's."""
    if heap == "tuned" and not keep_batch_buffers():
        raise SystemExit("--heap tuned needs glibc")


def bare_rate(nbytes: int, source: str, spec: BatchSpec, args: argparse.Namespace) -> dict:
    """Bytes/s a bare PULL socket receives from ``bare_sender`` over TCP loopback, and the CPU
    milliseconds per message of each thread of both sides (the sender's counts its warm-up too)."""
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    sender = ctx.Process(target=bare_sender, args=(nbytes, source, spec, args, ports, stop),
                         daemon=True)
    sender.start()
    zctx = zmq.Context()
    sock = zctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, args.prefetch)
    sock.connect(f"tcp://127.0.0.1:{ports.get(timeout=120)}")
    try:
        warm = time.perf_counter()
        while time.perf_counter() - warm < 1.0:
            sock.recv(copy=False)
        got, start, threads = 0, time.perf_counter(), thread_cpu()
        while time.perf_counter() - start < args.seconds:
            got += len(sock.recv(copy=False))
        out = {"bytes_s": got / (time.perf_counter() - start), "recv": cpu_ms_per(threads, got // nbytes)}
    finally:
        stop.set()
        sock.close()
        zctx.term()
    out["send"] = ports.get(timeout=30)
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
    sender = ctx.Process(target=serve, daemon=True,
                         args=(spec, args.capacity, ports, stop, args.heap, args.header_once))
    sender.start()
    port = ports.get(timeout=120)
    with StreamClient(f"tcp://127.0.0.1:{port}", args.batch_size, args.prefetch, timeout=30.0) as client:
        consume(client, 1.0, args.to_torch)                     # warm-up
        base_batches, base_decode, base_wait = client.batches, client.decode_seconds, client.wait_seconds
        threads = thread_cpu()
        chunks, elapsed = consume(client, args.seconds, args.to_torch)
        batches = client.batches - base_batches
        out = {"chunks_s": chunks / elapsed, "bytes_s": chunks * spec_chunk_bytes(spec) / elapsed,
               "decode": (client.decode_seconds - base_decode) / batches * 1e3,
               "wait": (client.wait_seconds - base_wait) / elapsed, "batches": batches,
               "malformed": client.malformed, "recv": cpu_ms_per(threads, batches)}
    stop.set()
    out["stages"] = ports.get(timeout=30)
    out["send"] = out["stages"].pop("threads")
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
    parser.add_argument("--heap", choices=["tuned", "default"], default="tuned",
                        help="glibc malloc thresholds of both ends: as the CLIs set them, or glibc's defaults")
    parser.add_argument("--header-once", action="store_true",
                        help="diagnostic: the stream's sender reuses its first batch header (no encode cost)")
    args = parser.parse_args()
    set_heap(args.heap)
    spec = BatchSpec(44100, 4410, 4096, STEMS, args.dtype)
    nbytes, pool_bytes = args.batch_size * spec_chunk_bytes(spec), args.capacity * spec_chunk_bytes(spec)
    print(f"dtype {args.dtype}, batch {args.batch_size} ({nbytes / 1e6:.2f} MB), prefetch {args.prefetch}, "
          f"window {spec.window}, pool {pool_bytes / 1e6:.0f} MB, to_torch {args.to_torch}, "
          f"heap {args.heap}, header once {args.header_once}, {args.rounds} rounds of {args.seconds:g} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'round':>5} {'bare hot GB/s':>14} {'bare cold GB/s':>15} {'bare gather GB/s':>17} {'stream GB/s':>12} "
          f"{'stream/hot':>11} {'gather/hot':>11} {'stream/gather':>14} {'chunks/s':>9} {'wait':>6}")
    rows: dict[str, list] = {"hot": [], "cold": [], "gather": [], "stream": []}
    for r in range(args.rounds):
        for source in ("hot", "cold", "gather"):
            rows[source].append(bare_rate(nbytes, source, spec, args))
        rows["stream"].append(stream_round(spec, args))
        hot, cold, gather, row = (rows[k][-1]["bytes_s"] for k in rows)
        print(f"{r + 1:5d} {hot / 1e9:14.2f} {cold / 1e9:15.2f} {gather / 1e9:17.2f} {row / 1e9:12.2f} "
              f"{row / hot:11.2f} {gather / hot:11.2f} {row / gather:14.2f} "
              f"{rows['stream'][-1]['chunks_s']:9.0f} {rows['stream'][-1]['wait']:6.1%}", flush=True)
    med = {k: float(np.median([row["bytes_s"] for row in v])) for k, v in rows.items()}

    def ratio(a: str, b: str) -> float:
        return float(np.median([x["bytes_s"] / y["bytes_s"] for x, y in zip(rows[a], rows[b])]))

    streams = rows["stream"]
    print(f"median: bare hot {med['hot'] / 1e9:.2f} GB/s, bare cold {med['cold'] / 1e9:.2f} GB/s, bare gather "
          f"{med['gather'] / 1e9:.2f} GB/s, stream {med['stream'] / 1e9:.2f} GB/s "
          f"({np.median([s['chunks_s'] for s in streams]):.0f} chunks/s); stream/bare hot {ratio('stream', 'hot'):.2f} "
          f"(goal >= 0.8), stream/bare cold {ratio('stream', 'cold'):.2f}, bare gather/hot {ratio('gather', 'hot'):.2f}, "
          f"stream/bare gather {ratio('stream', 'gather'):.2f}; malformed {sum(s['malformed'] for s in streams)}")
    print("CPU ms per batch-sized message by thread (median of rounds; ZeroMQ's I/O threads included):")
    for path, v in rows.items():
        for end in ("send", "recv"):
            names = sorted({name for row in v for name in row[end]})
            per = {n: float(np.median([row[end].get(n, 0.0) for row in v])) for n in names}
            shown = ", ".join(f"{n} {ms:.2f}" for n, ms in per.items() if ms >= 0.005)
            print(f"  {path:>6} {end}: {sum(per.values()):5.2f} = {shown}")
    stage = {k: float(np.median([s["stages"][k] for s in streams])) for k in ("draw", "encode", "send")}
    print(f"stream stages, wall ms per batch: pool draw {stage['draw']:.3f}, encode {stage['encode']:.3f}, "
          f"send call {stage['send']:.3f}; client decode {np.median([s['decode'] for s in streams]):.3f} "
          f"in the I/O thread, {isolated_decode_ms(spec, args.batch_size):.3f} CPU isolated (goal < 0.2)")

if __name__ == "__main__":
    main()
