"""Stems folders: tiny MUSDB18-HQ and Slakh2100 songs built in code, mapped onto our classes."""
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from synth_server.config import DEFAULT_CLASSES
from trainer.config import EvalConfig
from trainer.eval.run import run_eval
from trainer.eval.stems_dir import StemsDir, load_mapping, load_song, song_folders

SRC_RATE, RATE = 16000, 8000
T = np.arange(int(1.5 * SRC_RATE)) / SRC_RATE


def tone(hz, level=0.1):
    return (level * np.sin(2 * np.pi * hz * T)).astype(np.float32)


def clicks(level=0.2):
    x = np.zeros_like(T, dtype=np.float32)
    x[::SRC_RATE // 4] = level
    return np.convolve(x, np.exp(-np.arange(200) / 30.0).astype(np.float32))[:len(T)]


def musdb_song(folder):
    folder.mkdir(parents=True)
    sources = {"drums": clicks(), "bass": tone(55), "vocals": tone(440), "other": tone(880)}
    for name, wave in sources.items():
        sf.write(folder / f"{name}.wav", np.stack([wave, wave], 1), SRC_RATE)       # stereo, as MUSDB
    sf.write(folder / "mixture.wav", np.stack([sum(sources.values())] * 2, 1), SRC_RATE)
    return sources


def slakh_song(folder):
    (folder / "stems").mkdir(parents=True)
    sources = {"S00": (tone(65), 33, False, "Bass"), "S01": (clicks(), 0, True, "Drums"),
               "S02": (tone(262), 0, False, "Piano"), "S03": (tone(523), 65, False, "Reed"),
               "S04": (tone(330), 48, False, "Strings")}
    lines = ["audio_dir: stems", "stems:"]
    for sid, (wave, program, drum, cls) in sources.items():
        if sid != "S04":                                   # S04 is listed but was not rendered
            sf.write(folder / "stems" / f"{sid}.flac", wave, SRC_RATE)
        lines += [f"  {sid}:", f"    program_num: {program}", f"    is_drum: {str(drum).lower()}",
                  f"    inst_class: {cls}", f"    audio_rendered: {str(sid != 'S04').lower()}"]
    (folder / "metadata.yaml").write_text("\n".join(lines) + "\n")
    sf.write(folder / "mix.flac", sum(w for sid, (w, *_) in sources.items() if sid != "S04"), SRC_RATE)
    return sources


@pytest.fixture
def stems_root(tmp_path):
    root = tmp_path / "multitracks"
    musdb_song(root / "musdb" / "test" / "Artist - Song")
    slakh_song(root / "slakh" / "Track00001")
    return root


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_layouts_are_found_and_mapped(stems_root):
    folders = song_folders(stems_root / "musdb") + song_folders(stems_root / "slakh")
    assert [f.name for f in folders] == ["Artist - Song", "Track00001"]
    counters = Counter()
    musdb = load_song(folders[0], DEFAULT_CLASSES, RATE, {}, False, counters)
    assert musdb.stems.shape == (4, int(1.5 * RATE)) and musdb.sample_rate == RATE
    drums, piano, strings, bass = musdb.stems
    assert rms(piano) == rms(strings) == 0.0                    # no such class in MUSDB
    assert rms(bass) == pytest.approx(0.1 / np.sqrt(2), rel=0.02) and rms(drums) > 0.005
    assert counters["sources_outside_classes"] == 2             # vocals and other
    assert rms(musdb.mixture - musdb.stems.sum(0)) == pytest.approx(rms(tone(440) + tone(880)), rel=0.05)
    alone = load_song(folders[0], DEFAULT_CLASSES, RATE, {}, True, Counter())
    np.testing.assert_allclose(alone.mixture, alone.stems.sum(0), atol=1e-6)

    slakh = load_song(folders[1], DEFAULT_CLASSES, RATE, {}, False, Counter())
    drums, piano, strings, bass = slakh.stems
    assert rms(strings) == 0.0                                  # S04 was not rendered
    assert rms(piano) == pytest.approx(0.1 / np.sqrt(2), rel=0.02) and rms(bass) > 0.05 and rms(drums) > 0.005
    assert rms(slakh.mixture - slakh.stems.sum(0)) == pytest.approx(rms(tone(523)), rel=0.05)   # the reed


def test_a_mapping_file_overrides_names_and_programs(stems_root, tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text('[map]\nReed = "strings"\nother = "piano"\nbass = ""\n')
    assert load_mapping(mapping) == {"Reed": "strings", "other": "piano", "bass": None}
    slakh = load_song(song_folders(stems_root / "slakh")[0], DEFAULT_CLASSES, RATE, load_mapping(mapping), False,
                      Counter())
    assert rms(slakh.stems[2]) == pytest.approx(0.1 / np.sqrt(2), rel=0.02)
    musdb = load_song(song_folders(stems_root / "musdb")[0], DEFAULT_CLASSES, RATE, load_mapping(mapping), False,
                      Counter())
    assert rms(musdb.stems[3]) == 0.0 and rms(musdb.stems[1]) > 0.05
    mapping.write_text('[map]\nvocals = "voice"\n')
    with pytest.raises(ValueError, match="voice"):
        load_song(song_folders(stems_root / "musdb")[0], DEFAULT_CLASSES, RATE, load_mapping(mapping), False,
                  Counter())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no song folder"):
        StemsDir(tmp_path / "empty", DEFAULT_CLASSES, RATE, None, False, Counter())


@pytest.mark.slow
def test_eval_on_a_stems_dir_skips_and_counts_silent_classes(stems_root, tiny_checkpoints):
    result, table = run_eval(EvalConfig(checkpoints=(tiny_checkpoints[0],), stems_dir=stems_root, device="cpu"))
    (cond,) = result["conditions"]
    assert cond["name"] == "stems-dir" and [e["id"] for e in cond["excerpts"]] == ["Artist - Song", "Track00001"]
    summary = cond["summary"]["oracle"]
    assert summary["strings"] == {"excerpts": 0, "skipped_silent": 2}
    assert summary["piano"]["excerpts"] == 1 and summary["bass"]["excerpts"] == 2
    assert summary["bass"]["sdr"]["median"] > cond["summary"]["mixture"]["bass"]["sdr"]["median"]
    assert result["counters"]["songs"] == 2 and "songs of" in table
