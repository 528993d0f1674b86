"""`serve` end to end on loopback: 2 local workers on a tiny corpus -> StreamClient batches;
ctl/stats over the CLI; two clients get disjoint chunks; SIGTERM leaves no child process."""
import json
import signal

import numpy as np
import pytest
import soundfile as sf

from harness import alive, synth_server_cli as cli
from synth_server.client import StreamClient


@pytest.fixture
def watchdog():
    """Fail instead of hanging: a blocked ``next(client)`` cannot time out by itself."""
    def expired(signum, frame):
        raise TimeoutError("end-to-end test ran past its 120 s watchdog")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def server(tmp_path, watchdog, busy_midi, serve):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        busy_midi(6.0, i).write(str(corpus / f"song{i}.mid"))
    return serve("--corpus", corpus, "--workers", 2, "--pool-size", 96, "--target", 1024, "--context", 256,
                 "--excerpt", 1.0, "--max-chunks-per-song", 24, "--split", "train", "--jobs", 1)


@pytest.mark.slow
def test_serve_streams_batches_and_obeys_ctl_and_sigterm(server):
    proc, address = server.proc, server.address
    with StreamClient(address, batch_size=8, prefetch=2, timeout=30, client_id="a") as client:
        batches = [next(client) for _ in range(4)]
    for batch in batches:
        assert batch.stems.shape == (8, 4, 256 + 1024 + 256) and batch.stems.dtype == np.float16
        stems = batch.stems_f32()
        assert np.allclose(batch.mixture_f32(), stems.sum(axis=1))
        target = stems[:, :, 256:256 + 1024]
        mix_rms = np.sqrt((target.sum(axis=1) ** 2).mean(axis=1))
        assert (mix_rms > 10 ** (-45 / 20)).all()                     # the silence filter held
        assert all(m["uses"] == 1 and m["offset"] >= 256 for m in batch.chunks)

    r = cli("ctl", "--connect", address, "set", "reuse", "3")
    assert r.returncode == 0 and "reuse 3" in r.stdout
    assert cli("ctl", "--connect", address, "set", "reuse", "lots").returncode == 2
    refused = cli("ctl", "--connect", address, "set", "reuse", "99")
    assert refused.returncode == 1 and "reuse must be in" in refused.stderr
    text = cli("stats", "--connect", address)
    assert text.returncode == 0 and "R=3 (fixed" in text.stdout
    stats = json.loads(cli("stats", "--connect", address, "--json").stdout)
    assert stats["reuse"]["value"] == 3 and stats["workers"]["alive"] == 2
    assert stats["totals"]["served"] >= 32 and stats["errors"] == {"bad_ctl": 1}   # the "99"
    assert stats["totals"]["rendered"] >= stats["totals"]["kept"] >= stats["totals"]["received"] > 0
    worker_pids = [w["pid"] for w in stats["workers"]["list"]]

    seen = {}
    clients = {name: StreamClient(address, batch_size=8, prefetch=2, timeout=30, client_id=name)
               for name in ("b", "c")}
    try:
        for _ in range(6):
            for name, client in clients.items():
                batch = next(client)
                seen.setdefault(name, []).extend((m["song"], m["offset"]) for m in batch.chunks)
    finally:
        for client in clients.values():
            client.close()
    assert not set(seen["b"]) & set(seen["c"])
    assert max(seen["b"].count(k) for k in set(seen["b"])) <= 3

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not [pid for pid in worker_pids if alive(pid)]
    assert not server.ready_file.exists()                          # removed at shutdown
    out = server.output()
    assert "pool budget" in out and "broker stopped" in out
    assert cli("stats", "--connect", address, "--timeout", "0.5").returncode == 3


@pytest.mark.slow
def test_serve_writes_a_demo_corpus_into_an_empty_folder_and_stops_on_sigint(tmp_path, watchdog, serve):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    server = serve("--corpus", corpus, "--demo-songs", 3, "--workers", 1, "--pool-size", 16, "--jobs", 1)
    server.proc.send_signal(signal.SIGINT)          # the ready file says: bound, local worker started
    assert server.proc.wait(15) == 0, server.output()
    out = server.output()
    assert "started local worker" in out
    assert "holds no MIDI files: writing 3 demo songs" in out and "broker stopped" in out
    assert sorted(p.name for p in corpus.glob("*.mid")) == ["demo_000.mid", "demo_001.mid", "demo_002.mid"]


def test_serve_refuses_bad_flags_with_exit_code_2(tmp_path):
    r = cli("serve", "--corpus", str(tmp_path), "--reuse", "0", "--port", "0")
    assert r.returncode == 2 and "reuse must be in 1..8" in r.stderr
    r = cli("serve", "--corpus", str(tmp_path), "--workers", "many")
    assert r.returncode == 2 and "expected an integer or 'auto'" in r.stderr
    r = cli("serve", "--corpus", tmp_path, "--ready-file", tmp_path / "missing" / "ready")
    assert r.returncode == 2 and "--ready-file: folder" in r.stderr
    r = cli("stats", "--connect", "localhost:5555")
    assert r.returncode == 2 and "tcp://HOST:PORT" in r.stderr
    r = cli("serve", "--corpus", str(tmp_path), "--target", "0", "--port", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --target must be > 0, got 0"
    r = cli("serve", "--corpus", str(tmp_path / "typo"), "--port", "0")
    assert r.returncode == 2 and "is not a folder" in r.stderr and not (tmp_path / "typo").exists()


@pytest.mark.slow
def test_dump_taps_a_running_server(server, tmp_path):
    out = tmp_path / "dump"
    r = cli("dump", "--connect", server.address, "--n", "5", "--out", str(out), "--timeout", "60", timeout=90)
    assert r.returncode == 0, r.stderr
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 5
    index = (out / "index.html").read_text()
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["source"] == server.address and meta["uses"] >= 1 and meta["dtype"] == "float16"
        mix, sr = sf.read(folder / "mixture.wav", dtype="float32")
        stems = np.stack([sf.read(folder / f"{s}.wav", dtype="float32")[0] for s in meta["stems"]])
        assert sr == 44100 and stems.shape == (4, 1024)
        np.testing.assert_allclose(stems.sum(0), mix, atol=1e-6)
        assert sf.info(folder / "context" / "drums.wav").frames == 256 + 1024 + 256
        assert f"{folder.name}/context/bass.wav" in index
