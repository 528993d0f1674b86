"""Tests for the synthetic demo corpus (synth_server.synth.demo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from synth_server.config import DEFAULT_CLASSES, class_of
from synth_server.synth.demo import DISTRACTOR_PROGRAMS, make_demo_song, write_demo_corpus

CLASS_NAMES = [c.name for c in DEFAULT_CLASSES]


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> list[pretty_midi.PrettyMIDI]:
    """Ten demo songs (seed 0), read back from the files written to disk."""
    paths = write_demo_corpus(tmp_path_factory.mktemp("demo"), 10, seed=0)
    return [pretty_midi.PrettyMIDI(str(p)) for p in paths]


def _by_class(pm: pretty_midi.PrettyMIDI) -> dict[str | None, list[pretty_midi.Instrument]]:
    out: dict[str | None, list[pretty_midi.Instrument]] = {}
    for inst in pm.instruments:
        out.setdefault(class_of(DEFAULT_CLASSES, inst.program, inst.is_drum), []).append(inst)
    return out


def _sounding(insts: list[pretty_midi.Instrument], end: float, hop: float = 1.5) -> np.ndarray:
    """(frames,) bool: some note of ``insts`` overlaps each ``hop``-second frame (long enough for drum gaps)."""
    grid = np.zeros(int(np.ceil(end / hop)) + 1, dtype=bool)
    for inst in insts:
        for n in inst.notes:
            grid[int(n.start / hop): int(np.ceil(n.end / hop))] = True
    return grid


def test_write_names_files_and_is_deterministic(tmp_path: Path) -> None:
    a = write_demo_corpus(tmp_path / "a" / "nested", 3, seed=7)
    b = write_demo_corpus(tmp_path / "b", 2, seed=7)
    c = write_demo_corpus(tmp_path / "c", 2, seed=8)
    assert [p.name for p in a] == ["demo_000.mid", "demo_001.mid", "demo_002.mid"]
    assert all(p.is_file() for p in a)
    assert [p.read_bytes() for p in a[:2]] == [p.read_bytes() for p in b]   # same seed, prefix-stable
    assert a[0].read_bytes() != a[1].read_bytes()
    assert all(x.read_bytes() != y.read_bytes() for x, y in zip(b, c))


def test_make_demo_song_is_deterministic_for_a_generator() -> None:
    one = make_demo_song(np.random.default_rng(5), 0)
    two = make_demo_song(np.random.default_rng(5), 0)
    notes = lambda pm: [(n.start, n.end, n.pitch, n.velocity) for i in pm.instruments for n in i.notes]
    assert notes(one) == notes(two) and len(notes(one)) > 200


@pytest.mark.parametrize("count", [0, -3])
def test_rejects_fewer_than_one_song(tmp_path: Path, count: int) -> None:
    with pytest.raises(ValueError, match="songs"):
        write_demo_corpus(tmp_path, count, seed=0)


def test_every_song_holds_all_classes_and_a_distractor(songs) -> None:
    for pm in songs:
        groups = _by_class(pm)
        for name in CLASS_NAMES:
            assert sum(len(i.notes) for i in groups.get(name, [])) >= 20, name
        distractors = groups.get(None, [])
        assert 1 <= len({i.program for i in distractors}) <= 2
        assert all(i.program in DISTRACTOR_PROGRAMS and i.notes for i in distractors)
        assert sum(i.is_drum for i in pm.instruments) == 1


def test_distractor_programs_belong_to_no_class() -> None:
    assert len(DISTRACTOR_PROGRAMS) == 32
    assert all(class_of(DEFAULT_CLASSES, p, False) is None for p in DISTRACTOR_PROGRAMS)


def test_songs_vary(songs) -> None:
    tempi = {round(float(pm.get_tempo_changes()[1][0])) for pm in songs}
    meters = {(pm.time_signature_changes[0].numerator, pm.time_signature_changes[0].denominator) for pm in songs}
    keys = {pm.key_signature_changes[0].key_number for pm in songs}
    pianos = {i.program for pm in songs for i in _by_class(pm)["piano"]}
    assert len(tempi) >= 3 and all(70 <= t <= 170 for t in tempi)
    assert len(meters) >= 2 and meters <= {(4, 4), (3, 4), (6, 8)}
    assert len(keys) >= 3
    assert len(pianos) >= 2
    assert any(len(pm.get_tempo_changes()[1]) > 1 for pm in songs)          # a mid-song tempo change
    assert any(len(i) > 1 for pm in songs for n, i in _by_class(pm).items() if n)   # mid-song program change


def test_notes_are_valid_and_in_range(songs) -> None:
    ranges = {"piano": (40, 79), "strings": (52, 75), "bass": (28, 51)}
    for pm in songs:
        for name, insts in _by_class(pm).items():
            for n in (n for i in insts for n in i.notes):
                assert 0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and n.end > n.start
                if name in ranges:
                    assert ranges[name][0] <= n.pitch <= ranges[name][1], (name, n.pitch)


def test_dynamics_vary(songs) -> None:
    for pm in songs:
        velocities = [n.velocity for i in pm.instruments for n in i.notes]
        assert max(velocities) - min(velocities) >= 20


def test_sustain_pedal_and_pitch_bends_present(songs) -> None:
    pedal = [cc.value for pm in songs for i in _by_class(pm)["piano"] for cc in i.control_changes if cc.number == 64]
    assert 127 in pedal and 0 in pedal
    bends = [b.pitch for pm in songs for name in ("bass", "strings") for i in _by_class(pm)[name] for b in i.pitch_bends]
    assert min(bends) < -1000 and 0 in bends   # bends glide back to centre


def test_durations_in_range(songs) -> None:
    for pm in songs:
        assert 40.0 <= pm.get_end_time() <= 90.0


def test_each_song_has_rests_for_some_class(songs) -> None:
    """Some class is silent for two whole 1.5 s frames while at least two others play."""
    for pm in songs:
        end = pm.get_end_time()
        groups = _by_class(pm)
        grid = np.stack([_sounding(groups[name], end) for name in CLASS_NAMES])   # (classes, frames)
        found = False
        for k in range(len(CLASS_NAMES)):
            others = np.delete(grid, k, axis=0).sum(axis=0) >= 2
            gap = ~grid[k] & others
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, gap.astype(int), 0])))[::2]
            found |= bool(runs.size and runs.max() >= 2)
        assert found
