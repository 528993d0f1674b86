"""Corpus index: scan, safe parse, cache, dedup, split, eligibility."""
import dataclasses
import hashlib
import json
import logging
import os
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from synth_server.synth import corpus
from synth_server.config import SPLITS, CorpusConfig, InstrumentClass
from synth_server.synth.corpus import SongInfo, build_index, fill_empty_splits, scan_midi_files, split_of

FULL = [(0, True, 12), (0, False, 12), (48, False, 12), (33, False, 12)]  # drums piano strings bass


def write_song(path: Path, parts, seed: int = 0, resolution: int = 220) -> Path:
    """parts: (program, is_drum, n_notes); ``seed`` shifts pitches so songs differ."""
    pm = pretty_midi.PrettyMIDI(resolution=resolution)
    for k, (program, is_drum, n) in enumerate(parts):
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
        inst.notes = [pretty_midi.Note(80, 36 + (seed + 3 * k + i) % 60, 0.5 * i, 0.5 * i + 0.3)
                      for i in range(n)]
        pm.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))
    return path


def cfg_for(root: Path, **kw) -> CorpusConfig:
    return CorpusConfig(root=root, jobs=kw.pop("jobs", 1), **kw)


def test_scan_finds_all_extensions_recursively(tmp_path):
    for name in ("a.MID", "sub/b.midi", "sub/deep/c.kar", "sub/d.Mid", "e.txt", "f.mid.bak"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "cache.mid").write_text("{}")
    found = scan_midi_files(tmp_path, exclude=tmp_path / "cache.mid")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.MID", "sub/b.midi", "sub/d.Mid", "sub/deep/c.kar"]


def test_song_info_round_trips_through_json(tmp_path):
    write_song(tmp_path / "s.mid", FULL + [(25, False, 5)])
    song = build_index(cfg_for(tmp_path)).songs[0]
    assert SongInfo.from_dict(json.loads(json.dumps(song.to_dict()))) == song
    assert len(song.song_id) == 16 and int(song.song_id, 16) >= 0


def test_classes_and_distractor(tmp_path):
    write_song(tmp_path / "s.mid", FULL + [(25, False, 7)])
    song = build_index(cfg_for(tmp_path)).songs[0]
    assert song.class_notes == {"drums": 12, "piano": 12, "strings": 12, "bass": 12}
    assert (25, False, 7, None) in song.instruments
    assert (0, True, 12, "drums") in song.instruments
    assert song.duration == pytest.approx(0.5 * 11 + 0.3, abs=1e-3)


@pytest.mark.slow
def test_nasty_files_parsed_or_skipped_with_reason(nasty_midi_dir, tmp_path):
    index = build_index(CorpusConfig(root=nasty_midi_dir, cache=tmp_path / "c.json", jobs=2))
    assert index.files_scanned == 8
    assert len(index.songs) + len(index.broken) + len(index.duplicates) == 8
    assert all(reason for _path, reason in index.broken)
    assert dict(index.broken)["miditok_empty.mid"] == "no notes"


def test_generated_hostile_files_are_skipped(tmp_path):
    good = write_song(tmp_path / "good.mid", FULL)
    data = good.read_bytes()
    (tmp_path / "random.mid").write_bytes(np.random.default_rng(3).bytes(3000))
    (tmp_path / "truncated.mid").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mid").write_bytes(b"")
    huge = bytearray(data)
    pos = huge.index(b"MTrk")
    huge[pos + 4:pos + 8] = (0x7FFFFFF0).to_bytes(4, "big")
    (tmp_path / "huge_track.mid").write_bytes(bytes(huge))
    index = build_index(cfg_for(tmp_path))
    assert [s.path for s in index.songs] == ["good.mid"]
    broken = dict(index.broken)
    assert sorted(broken) == ["empty.mid", "huge_track.mid", "random.mid", "truncated.mid"]
    assert broken["empty.mid"] == "empty file"
    assert broken["huge_track.mid"] == "declared track length past end of file"


def test_cache_hit_and_touched_file_reparsed(tmp_path):
    for i in range(4):
        write_song(tmp_path / f"s{i}.mid", FULL, seed=i)
    (tmp_path / "bad.mid").write_bytes(b"garbage")
    cfg = cfg_for(tmp_path)
    first = build_index(cfg)
    assert (first.parsed, first.cache_hits, len(first.songs), len(first.broken)) == (5, 0, 4, 1)
    assert cfg.cache_path.exists()
    second = build_index(cfg)
    assert (second.parsed, second.cache_hits) == (0, 5)
    assert second.songs == first.songs and second.broken == first.broken
    st = (tmp_path / "s2.mid").stat()
    os.utime(tmp_path / "s2.mid", (st.st_atime, st.st_mtime + 10))
    third = build_index(cfg)
    assert (third.parsed, third.cache_hits) == (1, 4)


def test_cache_reused_when_classes_change(tmp_path):
    write_song(tmp_path / "s.mid", FULL + [(25, False, 9)])
    build_index(cfg_for(tmp_path))
    guitar = (InstrumentClass("guitar", tuple(range(24, 32))), InstrumentClass("bass", (33,)))
    index = build_index(cfg_for(tmp_path, classes=guitar))
    assert index.parsed == 0
    assert index.songs[0].class_notes == {"guitar": 9, "bass": 12}
    assert (0, False, 12, None) in index.songs[0].instruments


def test_corrupt_cache_is_ignored_with_warning(tmp_path, caplog):
    write_song(tmp_path / "s.mid", FULL)
    cfg = cfg_for(tmp_path)
    cfg.cache_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="synth_server.synth.corpus"):
        index = build_index(cfg)
    assert "ignoring unreadable index cache" in caplog.text
    assert (index.parsed, len(index.songs)) == (1, 1)
    assert json.loads(cfg.cache_path.read_text())["version"] == corpus.CACHE_VERSION
    data = json.loads(cfg.cache_path.read_text())
    data["files"]["s.mid"]["song_id"] = "not-hex"
    cfg.cache_path.write_text(json.dumps(data))
    assert build_index(cfg).parsed == 1


def test_unwritable_cache_only_warns(tmp_path, caplog):
    write_song(tmp_path / "s.mid", FULL)
    cfg = cfg_for(tmp_path, cache=tmp_path / "missing_dir" / "c.json")
    with caplog.at_level(logging.WARNING, logger="synth_server.synth.corpus"):
        assert len(build_index(cfg).songs) == 1
    assert "cannot write index cache" in caplog.text


def test_parse_timeout_is_recorded(tmp_path, monkeypatch):
    write_song(tmp_path / "slow.mid", FULL)
    monkeypatch.setattr(corpus, "_load_and_describe", lambda path, max_bytes: time.sleep(30))
    start = time.monotonic()
    index = build_index(cfg_for(tmp_path, parse_timeout=0.2))
    assert time.monotonic() - start < 5
    assert index.broken == [("slow.mid", "parse timed out (> 0.2 s)")]


def test_dead_worker_gives_transient_record():
    fut = Future()
    fut.set_exception(BrokenProcessPool("worker died"))
    assert corpus._result_or_failure(fut) == {
        "error": "parser process failed: BrokenProcessPool", "transient": True}


def test_duplicates_collapsed(tmp_path):
    write_song(tmp_path / "b.mid", FULL, seed=1)
    write_song(tmp_path / "a" / "copy.MID", FULL, seed=1, resolution=480)
    write_song(tmp_path / "c.mid", FULL, seed=2)
    index = build_index(cfg_for(tmp_path))
    assert [s.path for s in index.songs] == ["a/copy.MID", "c.mid"]
    assert index.duplicates == [("b.mid", "a/copy.MID")]


def test_split_of_matches_fractions_and_is_stable():
    ids = [hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in range(600)]
    fractions = (0.7, 0.2, 0.1)
    splits = [split_of(i, fractions) for i in ids]
    assert splits == [split_of(i, fractions) for i in ids]
    for name, frac in zip(SPLITS, fractions):
        assert abs(splits.count(name) / len(ids) - frac) < 0.05
    assert {split_of(i, (1.0, 0.0, 0.0)) for i in ids} == {"train"}
    assert {split_of(i, (0.0, 0.0, 2.0)) for i in ids} == {"test"}
    with pytest.raises(ValueError):
        split_of(ids[0], (0.5, -0.1, 0.6))


def _songs_hashed_into(split: str, count: int, fractions=(0.9, 0.05, 0.05)) -> list[SongInfo]:
    out, i = [], 0
    while len(out) < count:
        song_id = hashlib.sha1(str(i).encode()).hexdigest()[:16]
        i += 1
        if split_of(song_id, fractions) == split:
            out.append(SongInfo(path=f"s{len(out):03d}.mid", size=1, mtime=0.0, song_id=song_id, duration=30.0,
                                class_notes={"drums": 50}, instruments=(), split=split))
    return out


def test_small_corpora_get_a_song_in_every_split_and_large_ones_keep_their_hash_splits(tmp_path):
    cfg = CorpusConfig(root=tmp_path, classes=(InstrumentClass("drums", is_drum=True),), min_notes=10)
    three = _songs_hashed_into("train", 3)
    filled = fill_empty_splits(three, cfg)
    assert sorted(s.split for s in filled) == ["test", "train", "valid"]
    assert fill_empty_splits(three, cfg) == filled                       # deterministic
    assert fill_empty_splits(three[:2], cfg) == three[:2]                # too few to fill three splits
    large = [SongInfo(path=f"l{i}.mid", size=1, mtime=0.0, song_id=hashlib.sha1(f"l{i}".encode()).hexdigest()[:16],
                      duration=30.0, class_notes={"drums": 50}, instruments=(), split="train") for i in range(400)]
    large = [dataclasses.replace(s, split=split_of(s.song_id, cfg.split_fractions)) for s in large]
    assert fill_empty_splits(large, cfg) == large


def test_splits_disjoint_and_stable_across_builds(tmp_path):
    for i in range(30):
        write_song(tmp_path / f"s{i:02d}.mid", FULL, seed=i)
    fr = (0.5, 0.25, 0.25)
    one = build_index(cfg_for(tmp_path, split_fractions=fr, cache=tmp_path / "c1.json"))
    two = build_index(cfg_for(tmp_path, split_fractions=fr, cache=tmp_path / "c2.json", jobs=2))
    assert two.parsed == 30
    assert {s.path: s.split for s in one.songs} == {s.path: s.split for s in two.songs}
    parts = [{s.path for s in one.eligible(split)} for split in SPLITS]
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(one.eligible(None)) == 30
    assert all(parts), "30 songs at 50/25/25 should fill every split"


def test_eligibility_min_notes(tmp_path):
    write_song(tmp_path / "thin_bass.mid", FULL[:3] + [(33, False, 5)])
    write_song(tmp_path / "no_strings.mid", [FULL[0], FULL[1], FULL[3]], seed=5)
    write_song(tmp_path / "full.mid", FULL, seed=9)
    strict = build_index(cfg_for(tmp_path, min_notes=8))
    assert [s.path for s in strict.eligible()] == ["full.mid"]
    loose = build_index(cfg_for(tmp_path, min_notes=5))
    assert [s.path for s in loose.eligible()] == ["full.mid", "thin_bass.mid"]
    assert loose.summary()["eligible"] == {
        split: sum(s.split == split for s in loose.eligible()) for split in SPLITS}
    with pytest.raises(ValueError):
        loose.eligible("training")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        build_index(cfg_for(tmp_path / "nope"))


@pytest.mark.slow
def test_real_corpus_has_eligible_songs(real_midi_dir, tmp_path):
    cfg = CorpusConfig(root=real_midi_dir, cache=tmp_path / "c.json", jobs=2)
    index = build_index(cfg)
    assert index.files_scanned == 35 and index.parsed == 35
    assert len(index.eligible(None)) >= 20
    assert build_index(cfg).cache_hits == 35


def test_a_script_without_main_guard_is_told_why_its_parsers_died(tmp_path):
    import subprocess
    import sys

    for i in range(2):
        write_song(tmp_path / f"s{i}.mid", FULL, seed=i)
    script = tmp_path / "index_me.py"
    script.write_text("from pathlib import Path\nfrom synth_server.config import CorpusConfig\n"
                      "from synth_server.synth.corpus import build_index\n"
                      f"build_index(CorpusConfig(root=Path({str(tmp_path)!r}), jobs=2, cache=Path({str(tmp_path / 'c.json')!r})))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert "ValueError: every parser process died at start" in done.stderr and "__main__" in done.stderr
