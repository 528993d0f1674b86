"""A real worker process against a fake broker: credit is obeyed, heartbeats continue while
blocked, a song that does not parse is requested once and counted, SIGTERM exits cleanly; the
credit of a worker whose hello was answered twice."""
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from harness import ROOT, wait_for
from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig, RenderConfig
from synth_server.protocol import BatchSpec, decode, decode_batch, encode
from synth_server.serve.config import WorkerConfig, source_to_json
from synth_server.serve.worker import Worker

AUDIO = AudioConfig(target=1024, context=256)
SPEC = BatchSpec(44100, 1024, 256, ("drums", "piano", "strings", "bass"), "int16")


def song_bytes(tmp_path: Path) -> bytes:
    midi = pretty_midi.PrettyMIDI()
    for program, drum, base in [(0, True, 36), (0, False, 60), (48, False, 67), (33, False, 40)]:
        inst = pretty_midi.Instrument(program, is_drum=drum)
        inst.notes = [pretty_midi.Note(90, base + i % 5, 0.25 * i, 0.25 * i + 0.4) for i in range(24)]
        midi.instruments.append(inst)
    midi.write(str(tmp_path / "good.mid"))
    return (tmp_path / "good.mid").read_bytes()


def recv(sock, timeout=10.0):
    if not sock.poll(int(timeout * 1000)):
        return None
    ident, *frames = sock.recv_multipart()
    header, payload = decode(frames)
    return ident, header, payload


@pytest.mark.slow
def test_worker_obeys_credit_skips_bad_song_and_exits_on_sigterm(fake_broker, tmp_path):
    sock, address = fake_broker
    good = song_bytes(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "synth_server", "worker", "--connect", address,
                             "--id", "w-test"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ident, header, _ = recv(sock, 30)
        assert header["type"] == "hello" and header["role"] == "worker" and header["id"] == "w-test"
        source = ChunkSourceConfig(corpus=CorpusConfig(root=tmp_path), audio=AUDIO,
                                   render=RenderConfig(excerpt=1.0), max_chunks_per_song=8)
        sock.send_multipart([ident, *encode({"type": "welcome", "source": source_to_json(source), "seed": 7,
                                             "dtype": "int16", "songs": [["bad", 100.0], ["good", 6.0]]})])
        sock.send_multipart([ident, *encode({"type": "credit", "n": 10})])
        requests, received, beats = Counter(), 0, []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (received < 10 or len(beats) < 3 or not requests["bad"]):
            msg = recv(sock, 1.0)
            if msg is None:
                continue
            who, header, payload = msg
            if header["type"] == "song_request":
                song = header["song_id"]
                requests[song] += 1
                body = good if song == "good" else b"MThd this is not a MIDI file"
                sock.send_multipart([who, *encode({"type": "song_data", "song_id": song}, body)])
            elif header["type"] == "chunks":
                assert who == ident
                _, stems, meta = decode_batch(header, payload, SPEC)
                assert all(m["song"] == "good" for m in meta) and stems.shape[1:] == (4, 1536)
                assert np.abs(stems).max() > 0
                received += len(meta)
            elif header["type"] == "heartbeat" and received >= 10:
                beats.append(header)
        assert received == 10                       # exactly the credit, nothing more
        assert len(beats) >= 3                      # still beating while blocked on credit
        assert requests["bad"] == 1                 # a song that does not parse is never retried
        counters = beats[-1]["counters"]
        assert counters["song_failed_parse"] == 1 and counters["sent"] == 10
        assert counters["kept"] >= 10 and counters["rendered"] >= counters["kept"]
        assert beats[-1]["id"] == "w-test" and beats[-1]["rate"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_augmenting_worker_sends_what_it_drew_and_logs_its_memory(fake_broker, tmp_path):
    import pytest

    from synth_server.augment_config import PRESETS

    folder = Path("/usr/share/sounds/sf2")
    if len(list(folder.glob("*.sf2"))) < 2:
        pytest.skip("needs a soundfont bank in /usr/share/sounds/sf2 (make system-deps)")
    sock, address = fake_broker
    good = song_bytes(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "synth_server", "worker", "--connect", address, "--id", "w-aug",
                             "--soundfont", str(folder)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ident, header, _ = recv(sock, 30)
        source = ChunkSourceConfig(corpus=CorpusConfig(root=tmp_path), audio=AUDIO, augment=PRESETS["full"],
                                   render=RenderConfig(excerpt=1.0), max_chunks_per_song=8)
        sock.send_multipart([ident, *encode({"type": "welcome", "source": source_to_json(source), "seed": 7,
                                             "dtype": "int16", "songs": [["good", 6.0]]})])
        sock.send_multipart([ident, *encode({"type": "credit", "n": 8})])
        meta, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and len(meta) < 8:
            msg = recv(sock, 1.0)
            if msg is None:
                continue
            who, header, payload = msg
            if header["type"] == "song_request":
                sock.send_multipart([who, *encode({"type": "song_data", "song_id": "good"}, good)])
            elif header["type"] == "chunks":
                meta += decode_batch(header, payload, SPEC)[2]
        assert len(meta) == 8
        assert all(m["augment"]["preset"] == "full" and set(m["augment"]["stems"]) == set(SPEC.stems) for m in meta)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = proc.stdout.read().decode()
        assert "renderer with 4 soundfont(s)" in log and "RSS" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_answers_to_a_repeated_hello_leave_the_worker_the_brokers_credit(fake_broker, zmq_ctx):
    """A worker whose first hello goes unanswered says hello again; when the broker answers both
    (it was slow to start: both hellos were queued), each hello re-registers the worker and voids
    the credit granted before. The worker must end up with the broker's figure (64), not the sum
    (a Swarm run showed over_credit 128: three hellos queued while the broker came up)."""
    sock, address = fake_broker
    worker = Worker(zmq_ctx, WorkerConfig(connect=address, reply_timeout=0.3), threading.Event())
    welcomed = []
    handshake = threading.Thread(target=lambda: welcomed.append(worker._handshake()))
    handshake.start()
    try:
        hellos = [recv(sock, 10), recv(sock, 10)]
        assert all(msg is not None and msg[1]["type"] == "hello" for msg in hellos)
        ident = hellos[0][0]
        for _ in hellos:
            sock.send_multipart([ident, *encode({"type": "welcome", "seed": 1})])
            sock.send_multipart([ident, *encode({"type": "credit", "n": 64})])
        sock.send_multipart([ident, *encode({"type": "error", "message": "end of this test's replies"})])
        handshake.join(10)
        assert welcomed and welcomed[0]["seed"] == 1
        assert wait_for(lambda: worker._poll(50) or worker.counters["broker_errors"] == 1)
        assert worker.credit == 64
    finally:
        worker.close()
