"""analyze_report counts and format_report text on a tiny synthetic corpus."""
import json
from pathlib import Path

import pretty_midi

from synth_server.tools.analyze import analyze_report, format_report
from synth_server.config import CorpusConfig
from synth_server.synth.corpus import build_index

FULL = [(0, True, 12), (0, False, 12), (48, False, 12), (33, False, 12)]  # drums piano strings bass


def write_song(path: Path, parts, seed: int = 0) -> None:
    """parts: (program, is_drum, n_notes); ``seed`` shifts pitches so songs differ."""
    pm = pretty_midi.PrettyMIDI()
    for k, (program, is_drum, n) in enumerate(parts):
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
        inst.notes = [pretty_midi.Note(80, 36 + (seed + 3 * k + i) % 60, 0.5 * i, 0.5 * i + 0.3)
                      for i in range(n)]
        pm.instruments.append(inst)
    pm.write(str(path))


def make_corpus(root: Path) -> CorpusConfig:
    write_song(root / "full.mid", FULL + [(25, False, 4)], seed=1)
    write_song(root / "full_copy.mid", FULL + [(25, False, 4)], seed=1)
    write_song(root / "no_bass.mid", FULL[:3], seed=2)
    write_song(root / "thin.mid", [(0, True, 3), (1, False, 20)], seed=3)
    (root / "broken.mid").write_bytes(b"MThd nonsense")
    return CorpusConfig(root=root, jobs=1)


def test_report_counts(tmp_path):
    cfg = make_corpus(tmp_path)
    report = analyze_report(build_index(cfg), cfg)
    assert json.loads(json.dumps(report)) == report
    assert (report["files_scanned"], report["parsed"], report["cached"]) == (5, 5, 0)
    assert (report["songs"], report["duplicates"]) == (3, 1)
    assert report["broken"]["count"] == 1
    assert report["broken"]["files"][0]["path"] == "broken.mid"
    assert report["broken"]["files"][0]["reason"].startswith("bad header")
    assert report["classes"]["drums"] == {"songs": 3, "songs_min_notes": 2, "notes": 27}
    assert report["classes"]["piano"] == {"songs": 3, "songs_min_notes": 3, "notes": 44}
    assert report["classes"]["bass"] == {"songs": 1, "songs_min_notes": 1, "notes": 12}
    programs = {row["program"]: row for row in report["programs"]}
    assert programs[0] == {"program": 0, "name": "Acoustic Grand Piano", "songs": 2, "class": "piano"}
    assert programs[25]["class"] is None and programs[25]["songs"] == 1
    assert sorted(programs) == [0, 1, 25, 33, 48]
    assert report["drum_songs"] == 3
    assert report["songs_with_all_classes"] == 1
    assert report["eligible"]["total"] == 1
    assert sum(report["eligible"][s] for s in ("train", "valid", "test")) == 1


def test_report_uses_cache_second_time(tmp_path):
    cfg = make_corpus(tmp_path)
    build_index(cfg)
    report = analyze_report(build_index(cfg), cfg)
    assert (report["parsed"], report["cached"]) == (0, 5)


def test_format_report_text(tmp_path):
    cfg = make_corpus(tmp_path)
    text = format_report(analyze_report(build_index(cfg), cfg))
    assert "usable songs 3" in text and "duplicates 1" in text
    lines = text.splitlines()
    drums = next(line for line in lines if line.startswith("drums "))
    assert drums.split() == ["drums", "3", "2", "27"]
    guitar = next(line for line in lines if "Acoustic Guitar (steel)" in line)
    assert guitar.split()[-2:] == ["1", "-"]
    assert any(line.startswith("broken.mid") and "bad header" in line for line in lines)
