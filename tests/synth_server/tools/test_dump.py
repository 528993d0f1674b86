"""Standalone dump: files, audio facts and metadata."""
import json
import re

import numpy as np
import pytest
import soundfile as sf

from synth_server.augment_config import DEFAULT_PRESET
from synth_server.cli.main import main
from synth_server.synth.demo import write_demo_corpus


@pytest.mark.slow
def test_dump_writes_chunks_with_audio_facts(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_demo_corpus(corpus, 5, seed=3)      # train keeps >= 3 songs after valid and test take theirs
    code = main(["dump", "--corpus", str(corpus), "--n", "5", "--out", str(out), "--seed", "1",
                 "--split", "train", "--jobs", "1", "--excerpt", "2", "--max-chunks-per-song", "3"])
    assert code == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 5
    index = (out / "index.html").read_text()
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["stems"] == ["drums", "piano", "strings", "bass"]
        assert set(meta["programs"]) == set(meta["stems"])
        aug = meta["augment"]            # the default preset draws per stem; the record says what
        assert aug["preset"] == DEFAULT_PRESET and set(aug["stems"]) == set(meta["stems"])
        assert all(stem["soundfont"] in index for stem in aug["stems"].values())
        assert {"mix_db", "stem_db", "residual_db"} <= set(meta["filter"])
        mix, sr = sf.read(folder / "mixture.wav", dtype="float32")
        stems = np.stack([sf.read(folder / f"{s}.wav", dtype="float32")[0] for s in meta["stems"]])
        assert sr == 44100 and mix.shape == (4410,) and stems.shape == (4, 4410)
        np.testing.assert_allclose(stems.sum(0), mix, atol=1e-6)
        ctx = np.stack([sf.read(folder / "context" / f"{s}.wav", dtype="float32")[0] for s in meta["stems"]])
        assert ctx.shape == (4, 4096 + 4410 + 4096)
        np.testing.assert_array_equal(ctx[:, 4096:4096 + 4410], stems)
        rms = 10 * np.log10(np.mean(stems.astype(np.float64) ** 2, axis=1) + 1e-20)
        np.testing.assert_allclose([meta["rms_db"][s] for s in meta["stems"]], rms, atol=0.02)
        assert meta["filter"]["mix_db"] > -45  # the filter kept it: not silent
        assert f"{folder.name}/mixture.wav" in index


def test_dump_flags_are_checked(tmp_path, capsys):
    assert main(["dump", "--n", "1", "--out", str(tmp_path)]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["dump", "--corpus", str(tmp_path / "none"), "--n", "1", "--out", str(tmp_path / "o")]) == 2
    assert re.search("no eligible song|not a directory", capsys.readouterr().err)
