"""`trainer eval --connect`: a running server's fixed sets scored like rendered excerpts, with
FluidSynth blocked; its held-out timbres side by side; refusals reported clearly."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import ROOT
from synth_server.fixed_set import fetch_fixed_set
from synth_server.synth.corpus import build_index
from synth_server.config import CorpusConfig
from trainer.checkpoint import load_separator
from trainer.cli import main
from trainer.eval.scores import score_estimates
from trainer.separate import separate_waveform

SF2 = Path("/usr/share/sounds/sf2")
KIT = "Black_Pearl_4_LV2"
# the whole --connect eval in a fresh interpreter where importing FluidSynth fails
BLOCKED = ("import sys; sys.modules['fluidsynth'] = None\n"
           "from trainer.cli import main\n"
           "code = main(sys.argv[1:])\n"
           "loaded = [m for m, v in sys.modules.items() if v is not None and "
           "(m == 'fluidsynth' or m.startswith(('pretty_midi', 'synth_server.synth')))]\n"
           "assert not loaded, loaded\n"
           "sys.exit(code)\n")


@pytest.fixture
def held_server(tmp_path, busy_corpus, serve):
    """A `serve` at the checkpoints' 8 kHz whose bank (TimGM6mb + a drum kit) holds the kit out;
    -> (address, a split other than train)."""
    root, _ = busy_corpus
    bank = tmp_path / "bank"
    bank.mkdir()
    for name in ("TimGM6mb.sf2", f"{KIT}.sf2"):
        if not (SF2 / name).is_file():
            pytest.skip(f"{SF2 / name} not installed")
        (bank / name).symlink_to(SF2 / name)
    splits = {s.split for s in build_index(CorpusConfig(root=root)).eligible()} - {"train"}
    if not splits:
        pytest.skip("the corpus has no valid/test song")
    proc = serve("--corpus", root, "--workers", 0, "--sample-rate", 8000, "--target", 1024, "--context", 256,
                 "--soundfont", bank, "--holdout-soundfont", KIT, "--jobs", 1)
    return proc.address, sorted(splits)[0]


@pytest.mark.slow
def test_connect_scores_the_servers_fixed_sets_without_fluidsynth(held_server, tiny_checkpoints, tmp_path):
    address, split = held_server
    out = tmp_path / "eval.json"
    flags = ["eval", "--checkpoint", str(tiny_checkpoints[0]), "--connect", address, "--holdout-timbres",
             "--split", split, "--n", "2", "--seconds", "1.5", "--seed", "4", "--bss", "off", "--device", "cpu",
             "--json", str(out)]
    done = subprocess.run([sys.executable, "-c", BLOCKED, *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "timbre gap" in done.stdout and f"fixed sets of {address}" in done.stdout
    result = json.loads(out.read_text())
    src = result["source"]
    assert src["connect"] == address and src["server"]["augment"]["soundfont"]["holdout"] == [KIT]
    indist, held = result["conditions"]
    assert (indist["name"], held["name"]) == ("in-distribution", "held-out timbre")

    # the same numbers as scoring the fixed sets directly
    model, ckpt = load_separator(tiny_checkpoints[0], torch.device("cpu"))
    for cond, timbres in ((indist, "default"), (held, "holdout")):
        fs = fetch_fixed_set(address, split, 2, 1.5, 4, timbres=timbres, timeout=60)
        assert src["fixed_sets"][cond["name"]] == fs.digest
        for row, stems, entry in zip(cond["excerpts"], fs.stems, fs.excerpts):
            assert row["start_s"] == round(entry["offset"] / 8000, 3) and row["song"] == entry["song"]
            mixture = stems.sum(0)
            estimate = separate_waveform(model, mixture, 44100, torch.device("cpu"), gain=ckpt.gain)
            direct = score_estimates(stems, estimate, mixture, 8000, False)
            for name, score in zip(fs.stem_names, direct):
                assert score is not None and row["scores"]["a/last"][name] == pytest.approx(score, abs=1e-6)
    assert [e["id"] for e in indist["excerpts"]] == [e["id"] for e in held["excerpts"]]
    assert {e["soundfont"] for e in held["excerpts"]} == {f"{KIT}+TimGM6mb"}
    assert {e["soundfont"] for e in indist["excerpts"]} == {"TimGM6mb"}
    gap = held["gap_db"]["a/last"]["drums"]["si_sdr"]
    assert gap == pytest.approx(indist["summary"]["a/last"]["drums"]["si_sdr"]["median"]
                                - held["summary"]["a/last"]["drums"]["si_sdr"]["median"], abs=0.011)
    a, b = (np.array([e["rms_dbfs"]["drums"] for e in c["excerpts"]]) for c in (indist, held))
    assert not np.allclose(a, b, atol=0.1)                              # another kit, other drum levels


@pytest.mark.slow
def test_refusals_are_reported_clearly(busy_corpus, tiny_checkpoints, serve, tmp_path, capsys):
    root, _ = busy_corpus
    proc = serve("--corpus", root, "--workers", 0, "--sample-rate", 8000, "--target", 1024, "--context", 256,
                 "--jobs", 1)
    base = ["eval", "--checkpoint", str(tiny_checkpoints[0]), "--connect", proc.address, "--n", "1",
            "--seconds", "1", "--bss", "off", "--device", "cpu"]
    assert main([*base, "--holdout-timbres"]) == 2
    assert "no held-out soundfont" in capsys.readouterr().err
    assert main([*base, "--seconds", "61"]) == 2
    assert "seconds must be in" in capsys.readouterr().err
    assert main([*base, "--holdout-soundfont", "TimGM6mb"]) == 2
    assert "with --connect the server's soundfonts are used" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoints[0]), "--corpus", str(root), "--holdout-soundfont",
                 "NoSuchFont"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchFont: no such file or folder, and no soundfont of the bank" in err and "TimGM6mb" in err
