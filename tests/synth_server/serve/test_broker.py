"""Broker logic with fake workers and clients in-process (no FluidSynth): credit and
back-pressure, serving, ctl/stats, song data, malformed input, heartbeat timeout, CURVE."""
import numpy as np
import zmq

from harness import SMALL_AUDIO, SMALL_SPEC, wait_for
from synth_server.protocol import BatchSpec, decode_batch, encode_batch
from synth_server.serve.config import load_client_curve, source_from_json


def chunk_batch(n, start=0, counted=True):
    """A "chunks" message of n chunks tagged start, start+1, ... in sample 0; cumulative
    counters as if these were the sender's first n kept of 2n rendered chunks."""
    stems = np.full((n, 4, SMALL_AUDIO.window), 0.25, np.float16)
    stems[:, :, 0] = np.arange(start, start + n)[:, None]
    meta = [{"song": "s", "offset": start + i, "uses": 0} for i in range(n)]
    counters = {"rendered": 2 * n, "kept": n, "rejected_silence": n} if counted else {}
    return encode_batch("chunks", SMALL_SPEC, stems, meta, counters=counters)


def test_worker_welcome_carries_source_seed_and_songs(peer, broker):
    b = broker()
    w = peer(b.address)
    header = w.hello("worker", "w1")
    assert source_from_json(header["source"]).audio == SMALL_AUDIO
    assert sorted(s[0] for s in header["songs"]) == sorted(s.song_id for s in b.songs)
    assert header["dtype"] == "float16" and isinstance(header["seed"], int)
    header2 = peer(b.address).hello("worker", "w2")
    assert header2["seed"] != header["seed"]


def test_credit_never_exceeds_free_slots_and_resumes_after_serving(peer, broker):
    b = broker(pool_size=64, credit_block=48)
    w1, w2 = peer(b.address), peer(b.address)
    w1.hello("worker", "w1")
    w2.hello("worker", "w2")
    c1, c2 = w1.credit(), w2.credit()
    assert c1 + c2 == 64 and max(c1, c2) <= 48          # pool free slots split, block respected
    for sender, n, start in ((w1, c1, 0), (w2, c2, 1000)):
        sender.sock.send_multipart(chunk_batch(n, start=start))
    assert w1.credit() + w2.credit() == 0                # pool full: back-pressure
    w1.sock.send_multipart(chunk_batch(5, start=5000, counted=False))  # over credit: refused, counted
    ctl = peer(b.address)
    stats = wait_for(lambda: (s := ctl.stats())["errors"].get("over_credit") and s["totals"]["received"] >= 64 and s)
    assert stats and stats["pool"]["size"] == 64 and stats["errors"]["over_credit"] == 5
    assert stats["totals"]["received"] == 64 and stats["rejections"] == {"silence": 64}
    assert stats["totals"]["kept"] == 64 and stats["totals"]["rendered"] == 128

    client = peer(b.address)
    welcome = client.hello("client", "c1")
    assert BatchSpec.from_header(welcome) == SMALL_SPEC
    client.send({"type": "request", "credit": 2, "batch_size": 16})
    tags = []
    for _ in range(2):
        header, payload = client.recv_type("batch")
        _, stems, meta = decode_batch(header, payload, SMALL_SPEC)
        assert stems.shape == (16, 4, SMALL_AUDIO.window) and all(m["uses"] == 1 for m in meta)
        tags += stems[:, 0, 0].astype(int).tolist()
    assert client.recv_type("batch", 0.3) is None        # never more than the credit
    assert len(set(tags)) == 32
    assert w1.credit() + w2.credit() == 32               # R=1: 32 slots freed -> 32 new credit


def test_reuse_serves_each_chunk_r_times_to_one_client_only(peer, broker):
    b = broker(pool_size=32, reuse=3)
    c1, c2 = peer(b.address), peer(b.address)
    for name, client in (("c1", c1), ("c2", c2)):
        client.hello("client", name)
        client.send({"type": "request", "credit": 16, "batch_size": 8, "wait_share": 0.25})

    def registered():
        clients = c1.stats()["clients"]
        return clients if len(clients) == 2 and all(c["credit"] for c in clients) else None
    clients = wait_for(registered)
    assert clients and all(c["starved_share"] >= 0 and c["credit"] == 16 for c in clients)
    w = peer(b.address)
    w.hello("worker", "w")
    w.sock.send_multipart(chunk_batch(w.credit()))
    seen = {"c1": [], "c2": []}
    for name, client in (("c1", c1), ("c2", c2)):
        while (msg := client.recv_type("batch", 0.5)) is not None:
            _, stems, meta = decode_batch(*msg, SMALL_SPEC)
            seen[name] += stems[:, 0, 0].astype(int).tolist()
            assert [m["offset"] for m in meta] == stems[:, 0, 0].astype(int).tolist()
    assert seen["c1"] and seen["c2"] and not set(seen["c1"]) & set(seen["c2"])   # disjoint
    tags = seen["c1"] + seen["c2"]
    assert max(tags.count(t) for t in set(tags)) == 3 and len(set(tags)) == 32
    # serving stops when neither client can use a whole batch: each has <= 7 usable chunks left,
    # with at most 3 uses each
    assert len(tags) >= 32 * 3 - 2 * 7 * 3
    stats = c1.stats()
    assert stats["pool"]["served"] == len(tags) == stats["totals"]["served"]
    assert {c["id"]: c["wait_share"] for c in stats["clients"]} == {"c1": 0.25, "c2": 0.25}
    c1.send({"type": "request", "credit": 64, "batch_size": 8})     # beyond 64 outstanding
    assert "limit 64" in c1.recv_type("error")[0]["message"]


def test_ctl_set_reuse_shows_in_stats_and_bad_values_are_refused(peer, broker):
    b = broker(max_reuse=4)
    ctl = peer(b.address)
    reply = ctl.ctl(cmd="set", key="reuse", value="3")
    assert reply["type"] == "ctl_reply" and reply["ok"]
    assert ctl.stats()["reuse"] == {"value": 3, "auto": False, "max": 4}
    assert ctl.ctl(cmd="set", key="reuse", value="auto")["ok"]
    assert ctl.stats()["reuse"]["auto"] is True
    assert ctl.ctl(cmd="set", key="reuse", value="9")["type"] == "error"      # above max reuse
    assert ctl.ctl(cmd="set", key="colour", value="1")["type"] == "error"
    refused = ctl.ctl(cmd="set", key="workers", value="2")                      # no local workers here
    assert refused["type"] == "ctl_reply" and not refused["ok"]
    stats = ctl.stats()
    assert stats["malformed"] == 2 and stats["errors"]["bad_ctl"] == 2


def test_pause_stops_credit_and_resume_restores_it(peer, broker):
    b = broker(pool_size=40, credit_block=40)
    ctl = peer(b.address)
    assert ctl.ctl(cmd="pause")["ok"]
    w = peer(b.address)
    w.hello("worker", "w")
    assert w.credit() == 0 and ctl.stats()["paused"]
    assert ctl.ctl(cmd="resume")["ok"]
    assert w.credit() == 40


def test_malformed_messages_are_dropped_counted_and_answered(peer, broker):
    b = broker()
    bad = peer(b.address)
    bad.sock.send_multipart([b"not json"])
    bad.sock.send_multipart([b'{"v": 99, "type": "hello"}'])
    bad.sock.send_multipart([b'{"v": 1, "type": "frobnicate"}'])
    bad.sock.send_multipart([b'{"v": 1, "type": "hello"}', b"payload where none belongs"])
    bad.send({"type": "hello", "role": "king", "id": "x", "host": "h"})
    bad.send({"type": "welcome"})                                   # a type brokers never accept
    replies = [bad.recv_type("error", 1.0) for _ in range(6)]
    assert all(r is not None for r in replies)
    w = peer(b.address)
    w.hello("worker", "w")
    w.credit()
    header = {"type": "chunks", **SMALL_SPEC.to_header(), "batch": 2, "shape": [2, 4, SMALL_AUDIO.window],
              "chunks": [{"song": "s", "offset": 0, "uses": 0}] * 2}
    w.send(header, b"\0" * 10)                                       # payload length mismatch
    w.send({**header, "shape": [2, 3, SMALL_AUDIO.window]}, b"\0" * 10)    # wrong shape
    w.send({"type": "song_request", "song_id": "nope"})              # unknown song
    stranger = peer(b.address)
    stranger.sock.send_multipart(chunk_batch(1))                     # chunks before hello
    assert stranger.recv_type("error")[0]["code"] == "hello_first"
    stats = wait_for(lambda: (s := w.stats())["malformed"] >= 9 and s)
    assert stats and stats["malformed"] == 9
    assert stats["errors"] == {"protocol": 4, "bad_hello": 1, "unexpected_type": 1, "bad_chunks": 2,
                               "bad_song_request": 1, "unknown_peer": 1}
    assert stats["pool"]["size"] == 0


def test_song_request_returns_the_file_bytes(peer, broker, tmp_path):
    b = broker()
    w = peer(b.address)
    w.hello("worker", "w")
    w.send({"type": "song_request", "song_id": b.songs[1].song_id})
    header, payload = w.recv_type("song_data")
    assert header["song_id"] == b.songs[1].song_id
    assert bytes(payload) == (tmp_path / b.songs[1].path).read_bytes()
    (tmp_path / b.songs[2].path).unlink()
    w.send({"type": "song_request", "song_id": b.songs[2].song_id})
    assert "cannot read" in w.recv_type("error")[0]["message"]


def test_silent_worker_is_forgotten_and_its_credit_reclaimed(peer, broker):
    b = broker(pool_size=32, credit_block=32, heartbeat_timeout=0.5)
    w1 = peer(b.address)
    w1.hello("worker", "w1")
    assert w1.credit() == 32
    w2 = peer(b.address)
    w2.hello("worker", "w2")
    assert w2.credit(0.2) == 0                          # everything is promised to w1

    def beat_for_credit():
        w2.send({"type": "heartbeat", "id": "w2", "counters": {"kept": 0}, "rate": 1.0})
        return w2.credit(0.2)
    assert wait_for(beat_for_credit, timeout=3, every=0) == 32     # w1 timed out, its credit went to w2
    assert [w["id"] for w in w2.stats()["workers"]["list"]] == ["w2"]
    w1.send({"type": "heartbeat", "id": "w1", "counters": {}, "rate": 0.0})
    assert w1.recv_type("error")[0]["code"] == "hello_first"


def test_curve_accepts_only_known_clients(peer, broker, tmp_path):
    from synth_server.cli.serve import KeygenConfig, run_keygen

    keys = tmp_path / "keys"
    assert run_keygen(KeygenConfig(out=keys)) == 0
    assert run_keygen(KeygenConfig(out=keys)) == 1       # never overwrites
    b = broker(curve_keys=keys)
    good = peer(b.address, curve=load_client_curve(keys))
    assert good.stats()["reuse"]["value"] == 1
    stranger_pub, stranger_sec = zmq.curve_keypair()
    server_pub = load_client_curve(keys)[2]
    stranger = peer(b.address, curve=(stranger_pub, stranger_sec, server_pub))
    stranger.send({"type": "ctl", "cmd": "stats"})
    assert stranger.recv(1.0) is None
    plain = peer(b.address)
    plain.send({"type": "ctl", "cmd": "stats"})
    assert plain.recv(0.5) is None
