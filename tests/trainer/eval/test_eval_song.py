"""Excerpt-level eval: two checkpoints on the same excerpts, baselines, held-out gap, JSON schema, CLI."""
import json

import pytest

from synth_server.synth.soundfont import _pretty_midi_soundfont
from trainer.cli import main
from trainer.config import EvalConfig
from trainer.eval.run import run_eval
from trainer.eval.song import model_names

STEMS = ("drums", "piano", "strings", "bass")


def finite_json(path):
    """Parse strictly: NaN / Infinity are not JSON."""
    def bad(token):
        raise AssertionError(f"non-JSON number {token} in {path}")
    return json.loads(path.read_text(), parse_constant=bad)


@pytest.mark.slow
def test_two_models_side_by_side_with_baselines_and_timbre_gap(busy_corpus, tiny_checkpoints, tmp_path):
    root, split = busy_corpus
    cfg = EvalConfig(checkpoints=tuple(tiny_checkpoints), corpus=root, split=split, n=2, seconds=1.5,
                     holdout_soundfonts=(_pretty_midi_soundfont(),), bss=False, json_out=tmp_path / "e.json",
                     table_out=tmp_path / "t.txt", plot_out=tmp_path / "p.png", device="cpu")
    result, table = run_eval(cfg)
    assert finite_json(tmp_path / "e.json")["conditions"][0]["summary"] == result["conditions"][0]["summary"]
    assert result["schema"] == "stemstream-eval" and result["version"] == 1 and result["stems"] == list(STEMS)
    assert [m["name"] for m in result["models"]] == ["a/last", "b/last"] and result["bss"] is None
    assert all(m["commit"] == "c0ffee" and m["model_config"]["kind"] == "wavenet" for m in result["models"])
    assert result["seconds_scored"] == pytest.approx(2 * 2 * 1.5)
    indist, held = result["conditions"]
    assert (indist["name"], held["name"]) == ("in-distribution", "held-out timbre")
    assert [e["id"] for e in indist["excerpts"]] == [e["id"] for e in held["excerpts"]]
    assert {e["soundfont"] for e in held["excerpts"]} == {"TimGM6mb"}
    for cond in (indist, held):
        for stem in STEMS:
            mix, oracle = cond["summary"]["mixture"][stem], cond["summary"]["oracle"][stem]
            assert mix["excerpts"] + mix["skipped_silent"] == 2 and "sdr" not in mix
            assert oracle["si_sdr"]["median"] > mix["si_sdr"]["median"] + 3
            assert mix["si_sdri"]["median"] == 0
        a, b = (cond["summary"][name]["piano"]["si_sdr"]["median"] for name in ("a/last", "b/last"))
        assert a != b                                       # two models, two sets of figures
        first = cond["excerpts"][0]["scores"]
        assert first["a/last"]["drums"]["si_sdri"] == pytest.approx(
            first["a/last"]["drums"]["si_sdr"] - first["mixture"]["drums"]["si_sdr"])
    gap = held["gap_db"]["a/last"]["bass"]
    expected = indist["summary"]["a/last"]["bass"]["si_sdr"]["median"] - held["summary"]["a/last"]["bass"]["si_sdr"]["median"]
    assert gap["si_sdr"] == pytest.approx(expected, abs=0.011) and gap["sdr"] is None
    assert "timbre gap" in table and "IRM oracle" in table and (tmp_path / "t.txt").read_text().strip() == table
    assert (tmp_path / "p.png").stat().st_size > 5000

    bss, _ = run_eval(EvalConfig(checkpoints=(tiny_checkpoints[0],), corpus=root, split=split, n=2, seconds=1.5,
                                 device="cpu"))
    (cond,) = bss["conditions"]
    assert bss["bss"]["frame_s"] == 1.0 and "museval" in bss["bss"]["implementation"]
    assert cond["summary"]["a/last"]["bass"]["si_sdr"] == indist["summary"]["a/last"]["bass"]["si_sdr"]  # same excerpts
    for stem in STEMS:
        oracle, mix = cond["summary"]["oracle"][stem], cond["summary"]["mixture"][stem]
        assert oracle["sdr"]["median"] > mix["sdr"]["median"] + 3
    row = cond["excerpts"][0]["scores"]["a/last"]["drums"]
    assert set(row) == {"si_sdr", "si_sdri", "sdr", "sir", "sar", "bss_frames"} and row["bss_frames"] >= 1


def test_model_names_are_unique():
    assert model_names(("runs/x/last.pt", "runs/x/last.pt", "y.pt")) == ["x/last", "x/last#2", "y"]


def test_cli_errors_are_clear(busy_corpus, tiny_checkpoints, tmp_path, capsys):
    root, split = busy_corpus
    assert main(["eval", "--checkpoint", str(tiny_checkpoints[0]), "--corpus", str(root), "--unit", "chunk",
                 "--checkpoint", str(tiny_checkpoints[1])]) == 2
    assert "--unit chunk scores one checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoints[0]), "--corpus", str(root), "--split", split,
                 "--seconds", "60", "--bss", "off"]) == 2
    assert "use a smaller --seconds" in capsys.readouterr().err


def test_checkpoints_of_different_geometry_are_refused(tiny_checkpoints, tiny_factory, busy_corpus, tmp_path):
    other = tiny_factory(tmp_path / "fast.pt", 3, rate=16000)
    with pytest.raises(ValueError, match="compare models of one geometry"):
        run_eval(EvalConfig(checkpoints=(tiny_checkpoints[0], other), corpus=busy_corpus[0], device="cpu"))
