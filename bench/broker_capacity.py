"""How far one broker goes: K synthetic workers and C clients on one real Broker, over TCP loopback.

Workers are processes that say hello and send pre-made chunks (random float16, 32 per message) as
fast as their credit allows, with heartbeats; no FluidSynth. Clients are processes with a
StreamClient (batch 12, prefetch 4: the trainer's defaults) that take batches as fast as they come.
For each (K, C, R) the bench measures over a window, after a warm-up:

- chunks/s in (stored in the pool) and out (served to clients), from the broker's own totals;
- broker CPU (all its threads, its main thread, its ZeroMQ I/O threads, from /proc) per second of
  wall time and per chunk;
- round-trip latency of `stats` and of `ctl set reuse` (the same value: no change) under load.

The broker's CPU is read per thread: its main (Python) thread is the serial limit, libzmq's I/O
threads run beside it. The CPU per chunk delivered to a client (ingest included, everything
counted: a fit with an idle term needs runs at very different rates, and here every run fills the
machine) says how many trainers one broker feeds. Everything shares the machine's cores (the
broker is not alone), so rates are a floor and CPU per chunk is the figure that carries over.

    .venv/bin/python bench/broker_capacity.py                       # the default grid, ~3 min
    .venv/bin/python bench/broker_capacity.py --grid 32x8 --reuse 1 --seconds 5
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from synth_server.client import StreamClient
from synth_server.protocol import BatchSpec, decode, encode, encode_batch, to_wire
from thread_cpu import task_cpu

SEND_BATCH = 32            # chunks per "chunks" message (the real worker's send_batch)
TRAINER_RATE = 2400        # chunks/s of one H200-class trainer (seed model, batch 12, 30 % MFU)


def broker_process(conn, pool_size: int, reuse: int) -> None:
    """A real Broker with one placeholder song (workers here never ask for songs)."""
    from synth_server.config import ChunkSourceConfig, CorpusConfig
    from synth_server.serve.broker import Broker
    from synth_server.serve.config import BrokerConfig
    from synth_server.synth.corpus import SongInfo

    logging.getLogger().setLevel(logging.ERROR)     # "worker gone" notes at the end of each run
    song = SongInfo(path="none.mid", size=0, mtime=0.0, song_id="0" * 16, duration=1.0, class_notes={},
                    instruments=(), split="train")
    cfg = BrokerConfig(port=0, pool_size=pool_size, reuse=reuse, max_reuse=max(8, reuse))
    broker = Broker(cfg, ChunkSourceConfig(corpus=CorpusConfig(root=Path("."))), [song], Path("."))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    conn.send((broker.address, broker.spec.to_header()))
    broker.run(stop)
    broker.close()


def worker_process(address: str, spec_header: dict, wid: int, stop) -> None:
    """Hello, then send SEND_BATCH-chunk messages whenever credit allows; a heartbeat every second."""
    spec = BatchSpec.from_header(spec_header)
    rng = np.random.default_rng(wid)
    audio = rng.uniform(-0.3, 0.3, (SEND_BATCH, len(spec.stems), spec.window)).astype(np.float32)
    stems, _ = to_wire(audio, spec.dtype)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    me = f"synthetic-{wid}"
    sock.send_multipart(encode({"type": "hello", "role": "worker", "id": me, "pid": os.getpid(),
                                "host": socket.gethostname()}))
    credit = sent = 0
    offset, beat, start = 0, 0.0, time.monotonic()
    while not stop.is_set():
        if sock.poll(0 if credit else 50):
            header, _ = decode(sock.recv_multipart())
            credit += header.get("n", 0) if header["type"] == "credit" else 0
        while credit > 0 and not sock.poll(0):
            n = min(credit, SEND_BATCH)
            meta = [{"song": "0" * 16, "offset": offset + i} for i in range(n)]
            sock.send_multipart(encode_batch("chunks", spec, stems[:n], meta), copy=False)
            credit, sent, offset = credit - n, sent + n, offset + n
        now = time.monotonic()
        if now - beat >= 1.0:
            beat = now
            sock.send_multipart(encode({"type": "heartbeat", "id": me, "rate": sent / max(now - start, 1e-3),
                                        "song": None}))
    sock.close()
    ctx.term()


def client_process(address: str, batch: int, stop) -> None:
    with StreamClient(address, batch, prefetch=4, timeout=30.0) as client:
        while not stop.is_set():
            try:
                client.get(timeout=0.5)
            except TimeoutError:
                pass


def cpu_seconds(pid: int) -> np.ndarray:
    """CPU seconds (utime + stime) of process ``pid``: [all threads, its main (Python) thread, ZeroMQ's
    I/O threads]. The main thread is the serial limit; libzmq's I/O threads run beside it."""
    out = np.zeros(3)
    for tid, (comm, cpu) in task_cpu(pid).items():
        out += [cpu, cpu if tid == pid else 0.0, cpu if comm.startswith("ZMQbg/IO") else 0.0]
    return out


class Ctl:
    """A ctl DEALER that times its round trips."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def ask(self, header: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        self.sock.send_multipart(encode(header))
        if not self.sock.poll(10_000):
            raise TimeoutError(f"no reply to {header}")
        reply, _ = decode(self.sock.recv_multipart())
        return reply, time.perf_counter() - start

    def totals(self) -> dict:
        return self.ask({"type": "ctl", "cmd": "stats"})[0]["stats"]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def run_one(k: int, c: int, reuse: int, seconds: float, warmup: float, pool_size: int) -> dict:
    ctx = mp.get_context("fork")          # no zmq context or thread exists in this process yet
    parent, child = ctx.Pipe()
    broker = ctx.Process(target=broker_process, args=(child, pool_size, reuse))
    broker.start()
    address, spec_header = parent.recv()
    stop = ctx.Event()
    procs = [ctx.Process(target=worker_process, args=(address, spec_header, i, stop)) for i in range(k)]
    procs += [ctx.Process(target=client_process, args=(address, 12, stop)) for _ in range(c)]
    for p in procs:
        p.start()
    ctl = Ctl(address)
    try:
        deadline = time.monotonic() + 60
        while True:     # everyone registered, and the pool full unless the clients keep it drained
            s = ctl.totals()
            joined = s["workers"]["alive"] == k and len(s["clients"]) == c and s["totals"]["served"] > 0
            if joined and s["pool"]["size"] >= 0.9 * pool_size or time.monotonic() > deadline:
                break
            if joined and deadline - time.monotonic() > 8:
                deadline = time.monotonic() + 8
            time.sleep(0.2)
        time.sleep(warmup)
        s0, cpu0, t0 = ctl.totals(), cpu_seconds(broker.pid), time.monotonic()
        stats_lat, ctl_lat = [], []
        while time.monotonic() - t0 < seconds:   # 5 stats + 5 ctl round trips per second
            stats_lat.append(ctl.ask({"type": "ctl", "cmd": "stats"})[1])
            reply, lat = ctl.ask({"type": "ctl", "cmd": "set", "key": "reuse", "value": reuse})
            assert reply.get("ok"), reply
            ctl_lat.append(lat)
            time.sleep(0.2)
        s1, cpu1, t1 = ctl.totals(), cpu_seconds(broker.pid), time.monotonic()
    finally:
        ctl.close()
        stop.set()
        for p in procs:
            p.join(10)
        broker.terminate()
        broker.join(10)
    wall = t1 - t0
    chunks_in = s1["totals"]["received"] - s0["totals"]["received"]
    chunks_out = s1["totals"]["served"] - s0["totals"]["served"]
    cpu, cpu_main, cpu_io = cpu1 - cpu0
    return {"K": k, "C": c, "R": reuse, "wall": wall, "in": chunks_in, "out": chunks_out, "cpu": cpu,
            "cpu_main": cpu_main, "cpu_io": cpu_io,
            "stats_ms": np.percentile(stats_lat, [50, 99]) * 1e3, "ctl_ms": np.percentile(ctl_lat, [50, 99]) * 1e3,
            "starved": max((x["starved_share"] for x in s1["clients"]), default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="1x1,4x1,16x1,32x1,8x2,8x4,8x8",
                        help="comma-separated KxC (workers x clients)")
    parser.add_argument("--reuse", default="1,4", help="comma-separated reuse factors R")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--pool-size", type=int, default=4096)
    args = parser.parse_args()
    grid = [tuple(int(v) for v in item.split("x")) for item in args.grid.split(",")]
    reuses = [int(r) for r in args.reuse.split(",")]
    print(f"{os.cpu_count()} cores shared by the broker, K workers and C clients; window {args.seconds:g} s; "
          "geometry 4 stems x 12602 samples float16 (100.8 kB per chunk), client batch 12")
    print(f"{'K':>3} {'C':>2} {'R':>2} {'in/s':>8} {'out/s':>8} {'MB/s out':>9} {'broker CPU':>10} {'main':>5} "
          f"{'zmq I/O':>7} {'us/chunk in+out':>15} {'stats p50/p99 ms':>17} {'ctl p50/p99 ms':>15} {'starved':>7}")
    rows = []
    for k, c in grid:
        for r in reuses:
            row = run_one(k, c, r, args.seconds, args.warmup, args.pool_size)
            rows.append(row)
            w = row["wall"]
            per = 1e6 * row["cpu"] / max(1, row["in"] + row["out"])
            print(f"{k:3d} {c:2d} {r:2d} {row['in'] / w:8.0f} {row['out'] / w:8.0f} "
                  f"{row['out'] * 100.8e3 / w / 1e6:9.0f} {row['cpu'] / w:9.0%}  {row['cpu_main'] / w:4.0%} "
                  f"{row['cpu_io'] / w:7.0%} {per:15.1f} "
                  f"{row['stats_ms'][0]:8.2f}/{row['stats_ms'][1]:<8.2f} {row['ctl_ms'][0]:7.2f}/{row['ctl_ms'][1]:<7.2f} "
                  f"{row['starved']:7.0%}", flush=True)
    print("\nCPU per chunk delivered to a client (its ingest included; all CPU counted, idle or not):")
    for r in reuses:
        mine = [row for row in rows if row["R"] == r]
        main = float(np.median([row["cpu_main"] / max(1, row["out"]) for row in mine]))
        whole = float(np.median([row["cpu"] / max(1, row["out"]) for row in mine]))
        # the main thread is serial; libzmq's I/O threads can take other cores
        print(f"R={r}: main thread {main * 1e6:.1f} us, all threads {whole * 1e6:.1f} us (median of {len(mine)} runs) "
              f"-> one trainer at {TRAINER_RATE} chunks/s takes {TRAINER_RATE * main:.0%} of the main thread's core "
              f"({TRAINER_RATE * whole:.0%} of a core all threads): {0.8 / (TRAINER_RATE * main):.1f} trainers "
              f"per broker at 80 % of that core")


if __name__ == "__main__":
    main()
