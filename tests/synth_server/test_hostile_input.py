"""Hostile MIDI: the nasty folder plus generated files (random bytes, truncated songs, absurd
tempos, a million zero-length notes, a declared track length of gigabytes, ...). Zero crashes in
``load_midi``/``load_midi_bytes``, in ``analyze``, in ``dump`` and in a real worker process; each
bad file is skipped with its reason and never retried in a loop."""
import io
import json
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from harness import ROOT
from synth_server.cli.main import main
from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig, RenderConfig
from synth_server.synth.midi_io import MidiError, check_chunks, load_midi, load_midi_bytes, track_stats
from synth_server.protocol import decode, decode_batch, encode
from synth_server.serve.config import source_to_json

MAX_BYTES = 16 << 20


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def smf(tracks: list[bytes], fmt: int = 1, division: int = 480, ntracks: int | None = None) -> bytes:
    head = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks) if ntracks is None else ntracks, division)
    return head + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


END = b"\x00\xff\x2f\x00"


def midi_bytes(pm: pretty_midi.PrettyMIDI, tmp: Path) -> bytes:
    pm.write(str(tmp / "tmp.mid"))
    return (tmp / "tmp.mid").read_bytes()


def hostile_files(tmp: Path, real: bytes) -> dict[str, bytes]:
    """name -> bytes of generated hostile files; ``real`` is a good song to cut up."""
    rng = np.random.default_rng(7)
    files = {f"random_{i}.mid": rng.bytes(int(n)) for i, n in enumerate((1, 100, 5000))}
    files["random_with_header.mid"] = smf([rng.bytes(3000)])
    files.update({f"truncated_{p}.mid": real[: len(real) * p // 100] for p in (5, 50, 99)})
    files["empty.mid"] = b""
    files["text.mid"] = b"this is not a MIDI file\n" * 10
    files["tempo_1us.mid"] = smf([b"\x00\xff\x51\x03\x00\x00\x01\x00\x90\x3c\x40\x83\x60\x80\x3c\x00" + END])
    files["tempo_slowest.mid"] = smf([b"\x00\xff\x51\x03\xff\xff\xff\x00\x90\x3c\x40" + vlq(480 * 400)
                                      + b"\x80\x3c\x00" + END])
    files["million_zero_notes.mid"] = smf([b"\x00\x90\x3c\x40" + b"\x00\x3c\x00\x00\x3c\x40" * 1_000_000
                                           + b"\x00\x3c\x00" + END])
    files["million_bends.mid"] = smf([b"\x00\xe0\x00\x40" + b"\x00\x01\x40" * 1_000_000 + END])
    files["gigabyte_track.mid"] = (b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk"
                                   + struct.pack(">I", 0xFFFFFFF0) + b"\x00\x90\x3c\x40" + END)
    files["declares_65535_tracks.mid"] = smf([END], ntracks=65535)
    files["65535_empty_tracks.mid"] = smf([END] * 65535)
    files["huge_deltas.mid"] = smf([b"\x00\x90\x3c\x40" + (vlq(0x0FFFFFFF) + b"\x3c\x40") * 8 + END])
    files["sysex_huge_length.mid"] = smf([b"\x00\xf0" + vlq(0x0FFFFFFF) + b"\x01\x02" + END])
    files["running_status_first.mid"] = smf([b"\x00\x3c\x40\x00\x3c\x00" + END])
    files["smpte.mid"] = smf([END], division=0xE728)
    chord = pretty_midi.PrettyMIDI()                     # 4 x 2500 notes at once: passes the index
    for program, drum in [(0, True), (0, False), (48, False), (33, False)]:
        inst = pretty_midi.Instrument(program, is_drum=drum)
        inst.notes = [pretty_midi.Note(127, 20 + i % 100, 0.0, 2.0) for i in range(2500)]
        chord.instruments.append(inst)
    files["chord_bomb.mid"] = midi_bytes(chord, tmp)
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, nasty_midi_dir, busy_midi) -> dict[str, bytes]:
    """Every nasty file plus the generated ones."""
    tmp = tmp_path_factory.mktemp("hostile")
    files = {f"nasty_{p.name}": p.read_bytes() for p in sorted(nasty_midi_dir.iterdir())}
    files.update(hostile_files(tmp, midi_bytes(busy_midi(), tmp)))
    return files


def outcome(fn, *args):
    try:
        return sum(len(i.notes) for i in fn(*args).instruments)
    except MidiError as exc:
        return str(exc)


def test_every_hostile_file_loads_or_gives_a_reason_fast(hostile, tmp_path):
    slowest = 0.0
    for name, data in hostile.items():
        start = time.monotonic()
        got = outcome(load_midi_bytes, data, MAX_BYTES)
        slowest = max(slowest, time.monotonic() - start)
        assert isinstance(got, int) or got, name
        path = tmp_path / name
        path.write_bytes(data)
        assert outcome(load_midi, path, MAX_BYTES) == got, name     # same answer from a file
    reasons = {name: outcome(load_midi_bytes, hostile[name], MAX_BYTES)
               for name in ("million_zero_notes.mid", "million_bends.mid", "gigabyte_track.mid", "tempo_1us.mid",
                            "huge_deltas.mid", "empty.mid", "declares_65535_tracks.mid")}
    assert reasons == {"million_zero_notes.mid": "too many events (more than 500000)",
                       "million_bends.mid": "too many events (more than 500000)",
                       "gigabyte_track.mid": "declared track length past end of file",
                       "tempo_1us.mid": "absurd tempo (1 us per beat)",
                       "huge_deltas.mid": "absurd length (2147483640 ticks)",
                       "empty.mid": "empty file",
                       "declares_65535_tracks.mid": "header declares 65535 tracks, file holds 1"}
    assert slowest < 15.0          # a million events are rejected from the raw bytes, not parsed


@pytest.mark.slow
def test_analyze_and_dump_skip_hostile_files(hostile, tmp_path, capsys, busy_midi):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in hostile.items():
        (corpus / name).write_bytes(data)
    for i in range(4):      # enough eligible songs that train keeps 3 after valid and test take theirs
        busy_midi(6.0, i).write(str(corpus / f"good_{i}.mid"))
    assert main(["analyze", str(corpus), "--json", "--jobs", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    broken = {b["path"]: b["reason"] for b in report["broken"]["files"]}
    assert report["files_scanned"] == len(hostile) + 4
    assert all(reason for reason in broken.values())
    assert broken["million_zero_notes.mid"] == "too many events (more than 500000)"
    assert {"good_0.mid", "good_1.mid", "chord_bomb.mid"}.isdisjoint(broken)
    assert main(["analyze", str(corpus), "--json", "--jobs", "2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["parsed"] == 0 and again["cached"] == len(hostile) + 4       # broken files are not retried
    assert {b["path"]: b["reason"] for b in again["broken"]["files"]} == broken

    out = tmp_path / "dump"
    code = main(["dump", "--corpus", str(corpus), "--n", "6", "--out", str(out), "--jobs", "2", "--split", "train",
                 "--excerpt", "1", "--max-chunks-per-song", "2", "--min-notes", "4"])
    assert code == 0
    assert len([p for p in out.iterdir() if p.is_dir()]) == 6


@pytest.mark.slow
def test_worker_skips_hostile_songs_once_and_reports_them(hostile, fake_broker, tmp_path, busy_midi):
    sock, address = fake_broker
    songs = dict(hostile, **{"good": midi_bytes(busy_midi(), tmp_path)})
    sparse = pretty_midi.PrettyMIDI()                   # 50 min, one piano: no chunk is ever kept
    sparse.instruments.append(pretty_midi.Instrument(0))
    sparse.instruments[0].notes = [pretty_midi.Note(90, 60, 0.0, 1.0), pretty_midi.Note(90, 60, 3000.0, 3000.5)]
    songs["sparse_hour"] = midi_bytes(sparse, tmp_path)
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "synth_server", "worker", "--connect", address, "--id", "w"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        msg = sock.recv_multipart() if sock.poll(30_000) else pytest.fail("no hello from the worker")
        ident = msg[0]
        source = ChunkSourceConfig(corpus=CorpusConfig(root=tmp_path), audio=AudioConfig(target=1024, context=256),
                                   render=RenderConfig(excerpt=1.0, render_timeout=1.0), max_chunks_per_song=4)
        listed = [[name, 100.0] for name in songs]
        sock.send_multipart([ident, *encode({"type": "welcome", "source": source_to_json(source), "seed": 3,
                                             "dtype": "int16", "songs": listed})])
        sock.send_multipart([ident, *encode({"type": "credit", "n": 1000})])
        requests, failed, done, received = Counter(), {}, Counter(), 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(requests) < len(songs) or not done["good"]):
            if not sock.poll(1000):
                continue
            who, *frames = sock.recv_multipart()
            header, payload = decode(frames)
            failed.update({s: r for s, r in header.get("songs_failed", [])})
            done.update(header.get("songs_done", []))
            if header["type"] == "song_request":
                requests[header["song_id"]] += 1
                sock.send_multipart([who, *encode({"type": "song_data", "song_id": header["song_id"]},
                                                  songs[header["song_id"]])])
            elif header["type"] == "chunks":
                received += decode_batch(header, payload)[1].shape[0]
        assert proc.poll() is None, "the worker died"
        assert len(requests) == len(songs)
        broken = {name for name, data in hostile.items() if isinstance(outcome(load_midi_bytes, data, MAX_BYTES), str)}
        assert broken <= set(failed) and all(failed[name] == "parse" for name in broken)
        assert all(requests[name] == 1 for name in failed), requests        # a failed song is never retried
        assert failed["sparse_hour"] == "render_timeout"   # 50 min of rendering to find no chunk: cut off
        assert done["good"] >= 1 and received > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_raw_event_scan_counts_like_mido(real_midi_dir, nasty_midi_dir):
    """The byte-level pre-scan sees the same events, notes and ticks per track as mido."""

    compared = 0
    for path in sorted(real_midi_dir.iterdir()) + sorted(nasty_midi_dir.iterdir()):
        data = path.read_bytes()
        try:
            check_chunks(data)
            mid = mido.MidiFile(file=io.BytesIO(data), clip=True)
        except (MidiError, OSError, ValueError, EOFError, KeyError):
            continue
        ours = [stats[:3] for stats in track_stats(data)]
        theirs = [(len(t), sum(m.type == "note_on" and m.velocity > 0 for m in t), sum(m.time for m in t))
                  for t in mid.tracks]
        assert ours == theirs, path.name
        compared += 1
    assert compared >= 30
