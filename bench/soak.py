"""Soak test: `serve` (2 local workers, demo corpus) plus a greedy client for M minutes while a
random worker is killed with SIGKILL every ~20 s. Loopback only; every process it starts is
stopped at the end.

Prints a line every 10 s and a summary: chunks and batches delivered, worker kills and restarts,
malformed messages, errors by reason, banned songs (should stay 0: kills from outside must not
ban good songs), client reconnects and wait share, and the server's RSS (summed over its process
tree from /proc) at start and end.

    .venv/bin/python bench/soak.py [--minutes 1] [--kill-every 20] [--pool-size 1024] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth_server.dealer import ControlClient  # noqa: E402
from synth_server.client import StreamClient  # noqa: E402


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (children outlive their parent's pid)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total / 1024


def start_serve(corpus: Path, log_path: Path, pool_size: int, seed: int) -> tuple[subprocess.Popen, str, object]:
    log = open(log_path, "w+")
    ready = log_path.with_suffix(".ready")
    proc = subprocess.Popen([sys.executable, "-m", "synth_server", "serve", "--corpus", str(corpus),
                             "--workers", "2", "--pool-size", str(pool_size), "--port", "0", "--bind", "127.0.0.1",
                             "--seed", str(seed), "--jobs", "1", "--ready-file", str(ready)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if ready.exists():                              # written atomically once bound, workers started
            return proc, ready.read_text().strip(), log
        time.sleep(0.2)
    stop_serve(proc)
    raise RuntimeError(f"serve did not start; see {log_path}")


def stop_serve(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then SIGKILL to the whole group after 20 s; the exit code of `serve`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def kill_a_worker(stats: dict, serve_pid: int, rng: np.random.Generator) -> str | None:
    """SIGKILL one random local worker that is a child of our `serve`; its id, or None."""
    ours = set(process_tree(serve_pid)) - {serve_pid}
    victims = [w for w in stats["workers"]["list"] if w["local"] and w["pid"] in ours]
    if not victims:
        return None
    victim = victims[int(rng.integers(len(victims)))]
    os.kill(victim["pid"], signal.SIGKILL)
    return victim["id"]


def soak(args: argparse.Namespace, tmp: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    (tmp / "corpus").mkdir()      # an existing empty folder gets the demo corpus
    proc, address, log = start_serve(tmp / "corpus", tmp / "serve.log", args.pool_size, args.seed)
    control = ControlClient(address)
    result: dict = {"address": address, "kills": 0, "killed": []}
    try:
        client = StreamClient(address, batch_size=args.batch_size, prefetch=4, timeout=30)
        first = client.get(timeout=120)                  # workers are up and rendering
        result["rss_start_mib"] = rss_mib(process_tree(proc.pid))
        chunks, batches, bad = len(first.chunks), 1, 0
        start = last_line = time.monotonic()
        next_kill = start + args.kill_every * rng.uniform(0.75, 1.25)
        while time.monotonic() - start < args.minutes * 60:
            batch = client.get(timeout=120)
            chunks, batches = chunks + len(batch.chunks), batches + 1
            bad += int(not np.isfinite(batch.stems_f32()).all())
            now = time.monotonic()
            if now >= next_kill:
                victim = kill_a_worker(control.stats(10.0), proc.pid, rng)
                if victim is not None:
                    result["kills"] += 1
                    result["killed"].append(victim)
                next_kill = now + args.kill_every * rng.uniform(0.75, 1.25)
            if now - last_line >= 10:
                last_line = now
                s = control.stats(10.0)
                print(f"t={now - start:5.0f}s delivered {chunks} chunks ({chunks / (now - start):.0f}/s) "
                      f"kills {result['kills']} restarts {s['workers']['restarts']} alive {s['workers']['alive']} "
                      f"banned {s['banned_songs']['count']} RSS {rss_mib(process_tree(proc.pid)):.0f} MiB",
                      flush=True)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 60                 # let the last kill's restart finish
        while (final := control.stats(10.0))["workers"]["alive"] < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        result.update(
            minutes=round(elapsed / 60, 2), chunks_delivered=chunks, batches=batches,
            chunks_per_s=round(chunks / elapsed, 1), nonfinite_batches=bad,
            restarts=final["workers"]["restarts"], workers_alive=final["workers"]["alive"],
            malformed=final["malformed"], errors=final["errors"], song_errors=final["song_errors"],
            banned_songs=final["banned_songs"]["count"], client_reconnects=client.reconnects,
            client_malformed=client.malformed, client_wait_share=round(client.wait_seconds / elapsed, 3),
            served_total=final["totals"]["served"], pool=f"{final['pool']['size']}/{final['pool']['capacity']}",
            pool_budget_mib=round(final["pool"]["budget_bytes"] / 2**20, 1),
            rss_end_mib=rss_mib(process_tree(proc.pid)))
        client.close()
    finally:
        pgid = proc.pid
        result["serve_exit_code"] = stop_serve(proc)
        time.sleep(1.0)
        result["processes_left"] = len(group_pids(pgid))
        log.seek(0)
        text = log.read()
        result["kills_logged"] = len(re.findall(r"local worker \S+ exited with code -9", text))
        log.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between worker kills (+-25%%)")
    parser.add_argument("--pool-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.minutes <= 0 or args.kill_every <= 0:
        parser.error("--minutes and --kill-every must be > 0")
    with tempfile.TemporaryDirectory(prefix="stemstream-soak-") as tmp:
        result = soak(args, Path(tmp))
    result["rss_start_mib"] = round(result.get("rss_start_mib", float("nan")), 1)
    result["rss_end_mib"] = round(result.get("rss_end_mib", float("nan")), 1)
    print(json.dumps(result, indent=2))
    ok = (result.get("serve_exit_code") == 0 and result["processes_left"] == 0
          and result.get("workers_alive") == 2 and result.get("nonfinite_batches") == 0)
    print("soak " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
