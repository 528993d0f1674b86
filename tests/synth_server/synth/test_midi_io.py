"""load_midi never lets anything but MidiError escape; call_with_timeout cuts off hangs."""
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from synth_server.synth.midi_io import CallTimeout, MidiError, call_with_timeout, load_midi

MAX_BYTES = 1 << 20


def write_song(path: Path, n_notes: int = 16, program: int = 0) -> Path:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    inst.notes = [pretty_midi.Note(90, 60 + i % 12, 0.25 * i, 0.25 * i + 0.2) for i in range(n_notes)]
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


def write_mido(path: Path, events: list, ticks_per_beat: int = 480) -> Path:
    mid = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    mid.tracks.append(mido.MidiTrack(events))
    mid.save(str(path))
    return path


def reason(path: Path, **kw) -> str:
    with pytest.raises(MidiError) as info:
        load_midi(path, kw.pop("max_bytes", MAX_BYTES), **kw)
    return str(info.value)


def test_good_song_loads(tmp_path):
    pm = load_midi(write_song(tmp_path / "ok.mid", 16), MAX_BYTES)
    assert sum(len(i.notes) for i in pm.instruments) == 16
    assert pm.get_end_time() == pytest.approx(0.25 * 15 + 0.2, abs=0.01)


def test_nasty_corpus_parses_or_gives_reason(nasty_midi_dir):
    outcomes = {}
    for path in sorted(nasty_midi_dir.iterdir()):
        try:
            pm = load_midi(path, MAX_BYTES)
            outcomes[path.name] = sum(len(i.notes) for i in pm.instruments)
        except MidiError as exc:
            assert str(exc)
            outcomes[path.name] = str(exc)
    assert len(outcomes) == 8
    assert outcomes["midifile_MIDIBadHeaderChunk.mid"].startswith("bad header")
    assert outcomes["midifile_MIDIBadTrackLength.mid"] == "declared track length past end of file"
    assert outcomes["miditok_empty.mid"] == "no notes"
    assert outcomes["prettymidi_example.mid"] == 4956


def test_empty_and_too_large(tmp_path):
    (tmp_path / "empty.mid").write_bytes(b"")
    assert reason(tmp_path / "empty.mid") == "empty file"
    song = write_song(tmp_path / "big.mid", 64)
    size = song.stat().st_size
    assert reason(song, max_bytes=size - 1) == f"file too large ({size} bytes)"


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nope.mid").startswith("cannot read")


def test_random_bytes_and_garbage_tracks(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "noise.mid").write_bytes(rng.bytes(2000))
    assert reason(tmp_path / "noise.mid").startswith("bad header")
    header = b"MThd" + struct.pack(">IHHH", 6, 1, 1, 96)
    for i in range(60):
        body = rng.bytes(int(rng.integers(1, 400)))
        path = tmp_path / f"garbage{i}.mid"
        path.write_bytes(header + b"MTrk" + struct.pack(">I", len(body)) + body)
        try:
            pm = load_midi(path, MAX_BYTES)
            assert sum(len(inst.notes) for inst in pm.instruments) > 0
        except MidiError as exc:
            assert str(exc)


def test_truncated_song(tmp_path):
    data = write_song(tmp_path / "full.mid", 200).read_bytes()
    for cut in (10, 20, len(data) // 2, len(data) - 3):
        (tmp_path / "cut.mid").write_bytes(data[:cut])
        assert reason(tmp_path / "cut.mid")


def test_huge_declared_track_length(tmp_path):
    data = bytearray(write_song(tmp_path / "ok.mid").read_bytes())
    pos = data.index(b"MTrk")
    data[pos + 4:pos + 8] = struct.pack(">I", 0x7FFFFFFF)
    (tmp_path / "huge.mid").write_bytes(bytes(data))
    assert reason(tmp_path / "huge.mid") == "declared track length past end of file"


def test_header_checks(tmp_path):
    (tmp_path / "smpte.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 0xE728))
    assert reason(tmp_path / "smpte.mid") == "bad header: SMPTE time division not supported"
    (tmp_path / "zero.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 0))
    assert reason(tmp_path / "zero.mid") == "bad header: zero ticks per beat"
    (tmp_path / "fmt.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 7, 1, 96))
    assert reason(tmp_path / "fmt.mid") == "bad header: format 7"
    (tmp_path / "few.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 1, 3, 96)
                                       + b"MTrk" + struct.pack(">I", 4) + b"\x00\xff\x2f\x00")
    assert reason(tmp_path / "few.mid") == "header declares 3 tracks, file holds 1"


def test_absurd_tempo_ticks_notes_duration(tmp_path):
    note = [mido.Message("note_on", note=60, velocity=90, time=0),
            mido.Message("note_off", note=60, velocity=0, time=480)]
    tempo0 = write_mido(tmp_path / "tempo0.mid", [mido.MetaMessage("set_tempo", tempo=0)] + note)
    assert reason(tempo0) == "absurd tempo (0 us per beat)"
    far = [mido.Message("note_on", note=60, velocity=90, time=0),
           mido.Message("note_off", note=60, velocity=0, time=50_000_000)]
    assert reason(write_mido(tmp_path / "far.mid", far)) == "absurd length (50000000 ticks)"
    song = write_song(tmp_path / "many.mid", 64)
    assert reason(song, max_notes=63) == "too many notes (64)"
    assert reason(song, max_duration=10.0) == "too long (16 s)"
    slow = [mido.MetaMessage("set_tempo", tempo=0xFFFFFF)] + [
        mido.Message("note_on", note=60, velocity=90, time=0),
        mido.Message("note_off", note=60, velocity=0, time=480 * 300)]
    assert reason(write_mido(tmp_path / "slow.mid", slow)) == "too long (5033 s)"


def _spin(seconds: float) -> int:
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    return n


def test_call_with_timeout_returns_and_cuts_off():
    assert call_with_timeout(pow, 1.0, 2, 10) == 1024
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        call_with_timeout(_spin, 0.2, 30.0)
    assert time.monotonic() - start < 2.0
    with pytest.raises(ValueError):
        call_with_timeout(pow, 0, 2, 2)


def test_call_with_timeout_restores_outer_timer():
    def inner_then_spin() -> None:
        call_with_timeout(pow, 5.0, 2, 2)
        _spin(30.0)

    start = time.monotonic()
    with pytest.raises(CallTimeout):
        call_with_timeout(inner_then_spin, 0.3)
    assert time.monotonic() - start < 2.0


def test_call_with_timeout_in_spawned_worker():
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(call_with_timeout, pow, 5.0, 3, 3).result() == 27
        with pytest.raises(CallTimeout):
            pool.submit(call_with_timeout, time.sleep, 0.2, 30.0).result(timeout=20)
