"""Faults: a worker killed mid-render, the broker restarted under a client, silent clients and
workers, songs that kill or hang workers, a stalled client's memory, safe defaults, shutdown."""
import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from harness import SMALL_AUDIO, SMALL_SPEC, BrokerThread, group_pids, wait_for
from synth_server.client import StreamClient
from synth_server.config import AudioConfig
from synth_server.protocol import BatchSpec, decode, encode_batch
from synth_server.serve import broker as broker_module
from synth_server.serve.config import BrokerConfig, WorkerConfig
from synth_server.serve.heartbeat import Heartbeat

pytestmark = pytest.mark.slow


# -- broker restart, silent clients -----------------------------------------------------------------
def test_client_carries_on_after_the_broker_restarts(tmp_path, caplog, peer):
    caplog.set_level(logging.INFO, logger="synth_server.client")
    first = BrokerThread(tmp_path, prefill=32)
    port = int(first.address.rsplit(":", 1)[1])
    client = StreamClient(first.address, batch_size=4, prefetch=2, timeout=1.0, backoff_base=0.2, backoff_cap=1.0)
    try:
        assert client.get(timeout=20).stems.shape == (4, 4, SMALL_AUDIO.window)
        first.close()
        second = BrokerThread(tmp_path, prefill=32, port=port)
        try:
            got = [client.get(timeout=30) for _ in range(6)]    # waits out the restart, then carries on
            assert all(b.stems.shape == (4, 4, SMALL_AUDIO.window) for b in got)
            assert client.reconnects >= 1 and client._thread.is_alive()
            assert any(c["id"] == client.client_id for c in peer(second.address).stats()["clients"])
        finally:
            second.close()
    finally:
        client.close()
        first.close()
    text = caplog.text
    assert re.search(r"reconnecting \(attempt \d+, backoff|does not know this client", text)
    assert "again" in text


def test_client_reports_wait_share_and_a_silent_client_is_forgotten(peer, broker, monkeypatch):
    monkeypatch.setattr(broker_module, "CLIENT_TIMEOUT_S", 1.5)
    b = broker(prefill=0, pool_size=16, reuse=3)
    ctl = peer(b.address)

    def reported():
        return [c["wait_share"] for c in ctl.stats()["clients"] if c["wait_share"] is not None]
    with StreamClient(b.address, batch_size=4, prefetch=1, timeout=30.0, client_id="reporter") as client:
        outcome = []

        def wait_in_vain():
            try:
                outcome.append(client.get(timeout=6))
            except TimeoutError as exc:
                outcome.append(exc)
        waiting = threading.Thread(target=wait_in_vain)
        waiting.start()                                 # the pool is empty: the consumer waits
        shares = wait_for(lambda: [x for x in reported() if x > 0.8], timeout=6)
        waiting.join()
        assert shares, f"wait_share of a waiting consumer: {reported()}"
        assert isinstance(outcome[0], TimeoutError)
        worker = peer(b.address)
        worker.hello("worker", "w")
        stems = np.full((16, 4, SMALL_AUDIO.window), 0.25, np.float16)
        worker.sock.send_multipart(encode_batch("chunks", SMALL_SPEC, stems,
                                                [{"song": "s", "offset": i, "uses": 0} for i in range(16)]))
        assert client.get(timeout=10).stems.shape == (4, 4, SMALL_AUDIO.window)
    # a raw client that draws chunks (R=3: they become its own) and then goes silent
    raw = peer(b.address)
    raw.hello("client", "silent")
    raw.send({"type": "request", "credit": 1, "batch_size": 4})
    assert raw.recv_type("batch") is not None
    assert wait_for(lambda: not ctl.stats()["clients"], timeout=10)     # both clients forgotten
    assert b.broker.pool.available("someone-else") == 16                       # their chunks are free again
    raw.send({"type": "request", "credit": 1, "batch_size": 4})
    assert raw.recv_type("error")[0]["code"] == "hello_first"


# -- songs that fail, kill or hang workers ----------------------------------------------------------
def test_songs_that_keep_failing_or_killing_workers_are_banned(peer, broker):
    b = broker(heartbeat_timeout=1.0)
    ids = sorted(b.broker.book.songs)
    killer, broken, unlucky = ids
    ctl = peer(b.address)
    for i in range(3):                                  # three workers die while on the same song
        w = peer(b.address)
        w.hello("worker", f"dies-{i}")
        w.send({"type": "song_request", "song_id": killer})
        assert w.recv_type("song_data")[0]["song_id"] == killer
        assert wait_for(lambda: f"dies-{i}" not in [x["id"] for x in ctl.stats()["workers"]["list"]], 10)
    for i in range(2):                                  # two death strikes, then a normal visit forgives
        w = peer(b.address)
        w.hello("worker", f"unlucky-{i}")
        w.send({"type": "heartbeat", "id": f"unlucky-{i}", "counters": {}, "rate": 1.0, "song": unlucky})
        assert wait_for(lambda: f"unlucky-{i}" not in [x["id"] for x in ctl.stats()["workers"]["list"]], 10)
    ok = peer(b.address)
    ok.hello("worker", "ok")
    ok.send({"type": "heartbeat", "id": "ok", "counters": {}, "rate": 1.0})
    ok.send({"type": "song_request", "song_id": broken, "songs_done": [unlucky],
             "songs_failed": [[broken, "parse"]]})
    assert ok.recv_type("song_data") is not None       # one reported failure: still served
    stuck = peer(b.address)
    stuck.hello("worker", "stuck")
    stuck.send({"type": "heartbeat", "id": "stuck", "counters": {}, "rate": 0.0, "song": broken,
                "stalled": 80.0})
    stats = wait_for(lambda: (s := ctl.stats())["banned_songs"]["count"] == 2 and s, timeout=10)
    assert stats, "the killer and the broken song were not banned"
    assert sorted(s["song_id"] for s in stats["banned_songs"]["songs"]) == sorted([killer, broken])
    assert "stuck" not in [x["id"] for x in stats["workers"]["list"]]     # dropped at once
    ok.send({"type": "heartbeat", "id": "ok", "counters": {}, "rate": 1.0})
    ok.send({"type": "song_request", "song_id": killer})
    header, _ = ok.recv_type("error")
    assert header.get("code") == "song_banned" and header["song_id"] == killer, header
    fresh = peer(b.address).hello("worker", "fresh")
    assert [s[0] for s in fresh["songs"]] == [unlucky]  # welcomes leave banned songs out
    assert "song_banned" not in stats["errors"] and ctl.stats()["errors"]["song_banned"] == 1


def test_heartbeat_watchdog_reports_a_hung_song_and_gives_up(zmq_ctx):
    router = zmq_ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stuck = []
    beat = Heartbeat(zmq_ctx, WorkerConfig(connect=f"tcp://127.0.0.1:{port}", heartbeat_s=0.1), "w", threading.Event(),
                     stall_s=0.5, on_stuck=lambda song, s: stuck.append((song, s)))
    beat.welcomed.set()
    beat.status = {"counters": {"kept": 3}, "busy_s": 1.0, "song": None, "t": time.monotonic() - 60}
    beat.start()
    try:
        headers = []
        while len(headers) < 3 and router.poll(5000):
            headers.append(decode(router.recv_multipart()[1:])[0])
        assert [h.get("stalled") for h in headers] == [None] * 3       # idle for long is not stuck
        beat.status = {**beat.status, "song": "hangs", "t": time.monotonic()}
        while router.poll(5000):
            header = decode(router.recv_multipart()[1:])[0]
            if "stalled" in header:
                break
        assert header["song"] == "hangs" and header["stalled"] >= 0.5
        beat.join(5)
        assert not beat.is_alive() and stuck and stuck[0][0] == "hangs"
        assert not router.poll(400)                     # no beats after giving up
    finally:
        router.close(linger=0)


# -- memory -----------------------------------------------------------------------------------------
def _broker_process(conn, pool_size: int) -> None:
    """Child: a real Broker at the default chunk geometry."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="stemstream-faults-"))
    running = BrokerThread(root, audio=AudioConfig(), pool_size=pool_size, credit_block=64)
    conn.send((running.address, running.broker.budget_bytes(), running.broker.chunk_bytes))
    conn.recv()
    running.close()


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def test_stalled_client_keeps_broker_memory_within_pool_budget(peer):
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_broker_process, args=(child, 512))
    proc.start()
    try:
        address, budget, chunk_bytes = parent.recv()
        base = rss_mib(proc.pid)
        spec = BatchSpec(44100, 4410, 4096, ("drums", "piano", "strings", "bass"), "float16")
        worker = peer(address)
        worker.hello("worker", "flood")
        stems = np.full((32, 4, spec.window), 0.1, np.float16)
        msg = encode_batch("chunks", spec, stems, [{"song": "s", "offset": i, "uses": 0} for i in range(32)])
        stalled = StreamClient(address, batch_size=32, prefetch=4, timeout=60)   # never read from
        hostile = peer(address)
        hostile.hello("client", "greedy")
        hostile.send({"type": "request", "credit": 5, "batch_size": 600})     # 5 x 61 MB outstanding
        assert "MiB per client" in hostile.recv_type("error")[0]["message"]
        ctl = peer(address)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:             # send far more than the pool holds
            worker.sock.send_multipart(msg, copy=False)
            worker.send({"type": "heartbeat", "id": "flood", "counters": {}, "rate": 1.0})
            time.sleep(0.01)
            if ctl.stats()["errors"].get("over_credit", 0) > 20 * 512:
                break
        stats = ctl.stats()
        grown = rss_mib(proc.pid) - base
        assert stats["pool"]["size"] == 512 and stats["workers"]["list"][0]["credit"] == 0
        in_flight = 4 * 32 * chunk_bytes
        assert grown < (budget + in_flight) / 2**20 + 48, f"broker grew {grown:.0f} MiB, budget {budget / 2**20:.0f}"
        stalled.close()
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# -- safe defaults ----------------------------------------------------------------------------------
def test_default_bind_is_loopback_and_curve_keeps_strangers_out(tmp_path, broker):
    from synth_server.cli.main import build_parser
    from synth_server.cli.serve import KeygenConfig, run_keygen
    from synth_server.serve.config import load_client_curve

    assert BrokerConfig().bind == "127.0.0.1"
    args = build_parser().parse_args(["serve", "--corpus", str(tmp_path)])
    assert args.bind == "127.0.0.1"
    plain = broker(prefill=8)
    assert plain.address.startswith("tcp://127.0.0.1:")
    keys = tmp_path / "keys"
    assert run_keygen(KeygenConfig(out=keys)) == 0
    secure = broker(prefill=8, curve_keys=keys)
    with StreamClient(secure.address, batch_size=2, prefetch=1, timeout=2.0, curve=load_client_curve(keys)) as ok:
        assert ok.get(timeout=20).stems.shape == (2, 4, SMALL_AUDIO.window)
    with StreamClient(secure.address, batch_size=2, prefetch=1, timeout=1.0, backoff_cap=0.5) as stranger:
        with pytest.raises(TimeoutError):
            stranger.get(timeout=3)
        assert stranger.spec is None


# -- real `serve`: a worker killed mid-render, shutdown without orphans --------------------------------
@pytest.fixture
def small_serve(serve, tmp_path):
    """`serve` with 2 workers on a 3-song demo corpus (written into an empty folder), small chunks."""
    (tmp_path / "corpus").mkdir()
    return serve("--corpus", tmp_path / "corpus", "--demo-songs", 3, "--workers", 2, "--pool-size", 64,
                 "--target", 1024, "--context", 256, "--excerpt", 1.0, "--max-chunks-per-song", 16, "--jobs", 1)


def test_worker_killed_mid_render_is_restarted_and_the_stream_goes_on(small_serve, peer):
    proc, address = small_serve.proc, small_serve.address
    ctl = peer(address)
    with StreamClient(address, batch_size=8, prefetch=2, timeout=30) as client:
        client.get(timeout=60)
        workers = wait_for(lambda: len(w := ctl.stats()["workers"]["list"]) == 2 and w, timeout=30)
        assert workers, "two local workers never joined"
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        got = [client.get(timeout=60) for _ in range(10)]             # the stream goes on
        assert all(b.stems.shape == (8, 4, 256 + 1024 + 256) for b in got)
        stats = wait_for(lambda: (s := ctl.stats())["workers"]["restarts"] >= 1 and s["workers"]["alive"] == 2
                         and victim["id"] not in [w["id"] for w in s["workers"]["list"]] and s, timeout=60)
        assert stats, "the killed worker was not replaced"
        assert stats["workers"]["restarts"] == 1
        before = stats["totals"]["served"]
        client.get(timeout=60)
        assert wait_for(lambda: ctl.stats()["totals"]["served"] > before, timeout=30)
    assert re.search(rf"worker {re.escape(victim['id'])} exited with code -9", small_serve.output())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert wait_for(lambda: not group_pids(proc.pid), timeout=10), "child processes outlived `serve`"


def test_workers_exit_when_serve_is_killed(small_serve, peer):
    proc, address = small_serve.proc, small_serve.address
    assert wait_for(lambda: peer(address).stats()["workers"]["alive"] == 2, timeout=60)
    proc.kill()                                       # no chance to clean up: workers notice alone
    proc.wait(10)
    assert wait_for(lambda: not group_pids(proc.pid), timeout=20), "workers outlived a killed `serve`"
