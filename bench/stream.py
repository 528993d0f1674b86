"""Streaming server benchmark, one run, three figures:

  (1) delivered chunks/s from `serve` with 1 and 2 local workers (R=1, so every delivered chunk
      was rendered for it) and the scaling efficiency rate2 / (2 * rate1);
  (2) transport: the real Broker serving a StreamClient from a pre-filled pool (R never reached);
  (3) the broker's RSS with a stalled client (takes its prefetch, never reads again) once the
      pool is full, against the pool budget (capacity x stems x window x itemsize).

The chunk geometry is the default (target 4410, context 4096). Note the machine may have few
cores: workers, broker and client share them.

    .venv/bin/python bench/stream.py [--corpus DIR] [--seconds 20] [--pool-size 2048]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth_server.client import StreamClient  # noqa: E402
from synth_server.protocol import to_wire  # noqa: E402

PY = [sys.executable, "-m", "synth_server"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`serve` in a subprocess; ``address`` read from its --ready-file."""

    def __init__(self, corpus: Path, workers: int, pool_size: int, log: Path, *extra: str) -> None:
        self.log = open(log, "w+")
        ready = log.with_suffix(".ready")
        self.proc = subprocess.Popen([*PY, "serve", "--corpus", str(corpus), "--workers", str(workers),
                                      "--pool-size", str(pool_size), "--port", "0", "--ready-file", str(ready),
                                      *extra],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = None
        deadline = time.monotonic() + 120
        while self.address is None and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.2)
            self.address = ready.read_text().strip() if ready.exists() else None
        if self.address is None:
            self.close()
            raise RuntimeError(f"serve did not start; see {log}")

    def stats(self) -> dict:
        r = subprocess.run([*PY, "stats", "--connect", self.address, "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=20)
        return json.loads(r.stdout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def greedy_rate(address: str, seconds: float, warmup: float = 8.0) -> float:
    """Chunks/s a client that reads as fast as it can receives, after ``warmup`` seconds (the
    workers load the soundfont, the pool fills once). At R=1 that is the server's kept rate."""
    with StreamClient(address, batch_size=16, prefetch=4, timeout=60) as client:
        warm = time.monotonic() + warmup
        while time.monotonic() < warm:
            next(client)
        start, chunks = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            chunks += len(next(client).chunks)
        return chunks / (time.monotonic() - start)


def delivered_rate(corpus: Path, workers: int, seconds: float, tmp: Path) -> tuple[float, dict]:
    """Chunks/s a greedy client receives after a warm-up, with ``workers`` local workers, R=1."""
    server = Server(corpus, workers, 512, tmp / f"serve{workers}.log", "--reuse", "1")
    try:
        return greedy_rate(server.address, seconds), server.stats()
    finally:
        server.close()


def _prefilled_broker(conn, pool_size: int, dtype: str) -> None:
    """Child process: a real Broker whose pool is full of random chunks, R effectively infinite."""
    from synth_server.serve.broker import Broker
    from synth_server.config import ChunkSourceConfig, CorpusConfig
    from synth_server.synth.corpus import SongInfo
    from synth_server.serve.config import BrokerConfig

    song = SongInfo(path="none.mid", size=0, mtime=0.0, song_id="0" * 16, duration=1.0, class_notes={},
                    instruments=(), split="train")
    cfg = BrokerConfig(port=0, pool_size=pool_size, dtype=dtype, reuse=1, max_reuse=10**9)
    broker = Broker(cfg, ChunkSourceConfig(corpus=CorpusConfig(root=Path("."))), [song], Path("."))
    broker.pool.set_reuse(10**9)
    rng = np.random.default_rng(0)
    while broker.pool.free():
        n = min(256, broker.pool.free())
        audio = rng.uniform(-0.5, 0.5, (n, 4, broker.spec.window)).astype(np.float32)
        broker.pool.add(to_wire(audio, dtype)[0], [{"song": "x", "offset": i} for i in range(n)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    conn.send(broker.address)
    cpu0 = time.process_time()
    broker.run(stop)
    conn.send(time.process_time() - cpu0)
    broker.close()


def transport_rate(seconds: float, dtype: str, batch: int) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_prefilled_broker, args=(child, 1024, dtype))
    proc.start()
    try:
        address = parent.recv()
        with StreamClient(address, batch_size=batch, prefetch=8, timeout=30) as client:
            for _ in range(20):
                next(client)
            start, chunks, nbytes = time.monotonic(), 0, 0
            while time.monotonic() - start < seconds:
                b = next(client)
                chunks += len(b.chunks)
                nbytes += b.stems.nbytes
            elapsed = time.monotonic() - start
            wait = client.wait_seconds
        proc.terminate()
        broker_cpu = parent.recv()
        return {"chunks_per_s": chunks / elapsed, "MB_per_s": nbytes / elapsed / 1e6,
                "broker_cpu_us_per_batch": 1e6 * broker_cpu / max(1, chunks // batch), "client_wait_s": wait}
    finally:
        proc.join(10)


def stalled_client_rss(corpus: Path, pool_size: int, tmp: Path, settle: float) -> dict:
    """Broker RSS: empty pool and no workers, then a stalled client and 2 workers filling the pool."""
    server = Server(corpus, 0, pool_size, tmp / "stall.log", "--reuse", "1")
    try:
        time.sleep(2)
        base = rss_mib(server.proc.pid)
        client = StreamClient(server.address, batch_size=32, prefetch=4, timeout=600)
        subprocess.run([*PY, "ctl", "--connect", server.address, "set", "workers", "2"], cwd=ROOT, check=True,
                       capture_output=True)
        next(client)                                    # takes its prefetch, then stalls
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.stats()["pool"]["size"] < pool_size:
            time.sleep(1)
        full = rss_mib(server.proc.pid)
        time.sleep(settle)                              # workers stay blocked; nothing may grow
        later = rss_mib(server.proc.pid)
        stats = server.stats()
        client.close()
        return {"pool_budget_mib": stats["pool"]["budget_bytes"] / 2**20, "rss_empty_mib": base,
                "rss_pool_full_mib": full, f"rss_{settle:.0f}s_later_mib": later,
                "growth_mib": later - base, "pool": f"{stats['pool']['size']}/{stats['pool']['capacity']}",
                "worker_credit": [w["credit"] for w in stats["workers"]["list"]]}
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="MIDI folder (default: a fresh demo corpus)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per figure")
    parser.add_argument("--pool-size", type=int, default=2048, help="pool size for the RSS figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stemstream-bench-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = args.corpus or tmp / "demo"    # serve writes the demo corpus into an empty folder
        rates = {}
        for workers in (1, 2):
            rates[workers], stats = delivered_rate(corpus, workers, args.seconds, tmp)
            print(f"workers {workers}: delivered {rates[workers]:.1f} chunks/s "
                  f"(rendered {stats['rates']['rendered']:.1f}/s, kept {stats['rates']['kept']:.1f}/s, "
                  f"per worker {[w['recv_rate'] for w in stats['workers']['list']]})", flush=True)
        print(f"scaling efficiency 2 workers: {rates[2] / (2 * rates[1]):.2f} "
              f"({os.cpu_count()} cores on this machine)", flush=True)
        for dtype in ("float16", "int16"):
            t = transport_rate(min(args.seconds, 5.0), dtype, 32)
            print(f"transport ({dtype}, batch 32, pre-filled pool): {t['chunks_per_s']:.0f} chunks/s, "
                  f"{t['MB_per_s']:.0f} MB/s, broker CPU {t['broker_cpu_us_per_batch']:.0f} us/batch", flush=True)
        r = stalled_client_rss(corpus, args.pool_size, tmp, settle=10.0)
        print("stalled client: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
