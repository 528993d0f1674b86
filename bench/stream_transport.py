"""Loopback transport benchmark: broker-side send loop from a pre-filled ReusePool -> StreamClient.

The sender runs in a subprocess (a ROUTER socket speaking the stream protocol, drawing batches
from a full pool whose reuse limit is never reached); the StreamClient consumes in this process.
Prints chunks/s, MB/s, client decode time per batch, consumer wait share and the sender's
draw+encode time per batch. Goals: >= 20k chunks/s, decode < 0.2 ms per batch.

    .venv/bin/python bench/stream_transport.py --seconds 5 --dtype float16
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--dtype", default="float16", choices=["float16", "int16", "float32"])
    parser.add_argument("--capacity", type=int, default=1024, help="pool chunks in the sender")
    parser.add_argument("--to-torch", action="store_true", help="also cast each batch with to_torch")
    args = parser.parse_args()
    spec = BatchSpec(44100, 4410, 4096, STEMS, args.dtype)
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
        decode_ms = (client.decode_seconds - base_decode) / batches * 1e3
        wait = client.wait_seconds - base_wait
        malformed = client.malformed
    stop.set()
    sender_s, sender_cpu_s = ports.get(timeout=30)
    sender.join(10)
    mb = chunks * len(STEMS) * spec.window * spec.np_dtype.itemsize / 2**20
    print(f"dtype {args.dtype}, batch {args.batch_size}, prefetch {args.prefetch}, "
          f"window {spec.window}, to_torch {args.to_torch}")
    print(f"chunks/s        {chunks / elapsed:10.0f}   (goal >= 20000)")
    print(f"MiB/s           {mb / elapsed:10.1f}")
    print(f"batches         {batches:10d}   malformed {malformed}")
    print(f"decode/batch    {decode_ms:10.3f} ms wall in the I/O thread; "
          f"{isolated_decode_ms(spec, args.batch_size):.3f} ms CPU isolated (goal < 0.2 ms)")
    print(f"consumer wait   {100 * wait / elapsed:10.1f} % of wall time")
    print(f"sender draw+encode/batch {sender_s * 1e3:.3f} ms, sender process CPU/batch "
          f"{sender_cpu_s * 1e3:.3f} ms")
    print(f"client process CPU/batch {client_cpu / batches * 1e3:.3f} ms "
          f"(all threads; {args.batch_size / (client_cpu / batches):.0f} chunks per client CPU-second)")


if __name__ == "__main__":
    main()
