"""trainer eval: held-out figures per stem, baselines in the right order, deterministic, JSON."""
import json

import pretty_midi
import pytest
import torch

from synth_server.config import SPLITS, CorpusConfig
from synth_server.synth.corpus import build_index
from synth_server.protocol import BatchSpec
from trainer.checkpoint import make_checkpoint
from trainer.config import EvalConfig
from trainer.eval.chunks import SILENT_DBFS, classes_for, run_eval, score_chunks, summarise
from trainer.models import build_model, preset

STEMS = ["drums", "piano", "strings", "bass"]
SPEC = BatchSpec(sample_rate=22050, target=2048, context=256, stems=tuple(STEMS), dtype="float32")



def song(variant: int, seconds: float = 5.0) -> pretty_midi.PrettyMIDI:
    """Drums, piano, strings and bass all playing; ``variant`` changes pitches and rhythm."""
    midi = pretty_midi.PrettyMIDI()
    parts = [(0, True, 36, 0.25), (variant % 8, False, 60, 0.5), (48, False, 67, 0.5), (33, False, 40, 0.5)]
    for program, drum, base, step in parts:
        inst = pretty_midi.Instrument(program, is_drum=drum)
        t, k = 0.0, 0
        while t < seconds:
            pitch = base + (k * (variant + 2)) % 7
            inst.notes.append(pretty_midi.Note(85, pitch, t, t + (0.1 if drum else 0.9 * step)))
            t += step * (1 + 0.1 * (variant % 3))
            k += 1
        midi.instruments.append(inst)
    return midi


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for v in range(5):
        song(v).write(str(root / f"song{v}.mid"))
    eligible = build_index(CorpusConfig(root=root)).eligible()
    counts = {s: sum(x.split == s for x in eligible) for s in SPLITS}
    return root, max(counts, key=counts.get), counts


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(make_checkpoint(build_model(cfg), None, step=3, model_config=cfg, model_name="tiny",
                               loss="mae", spec=SPEC), path)
    return path


def test_eval_reports_figures_with_oracle_above_mixture(corpus, checkpoint, tmp_path):
    root, split, counts = corpus
    assert counts[split] >= 2
    out = tmp_path / "eval.json"
    cfg = EvalConfig(checkpoints=(checkpoint,), unit="chunk", corpus=root, n=12, split=split, json_out=out, batch_size=5)
    result = run_eval(cfg)
    assert result["chunks"] == 12 and result["songs"] >= 2 and result["step"] == 3
    assert list(result["stems"]) == STEMS
    total = sum(row["pairs"] + row["skipped_silent"] for row in result["stems"].values())
    assert total == 12 * len(STEMS) == result["overall"]["pairs"] + result["overall"]["skipped_silent"]
    for row in list(result["stems"].values()) + [result["overall"]]:
        assert row["pairs"] > 0
        assert row["oracle"]["mean"] > row["mixture"]["mean"] + 3.0
        assert row["improvement"]["mean"] == pytest.approx(row["model"]["mean"] - row["mixture"]["mean"], abs=0.02)
    assert json.loads(out.read_text()) == result
    again = run_eval(EvalConfig(checkpoints=(checkpoint,), unit="chunk", corpus=root, n=12, split=split, batch_size=12))
    assert again == result


def test_empty_split_suggests_another(corpus, checkpoint):
    root, split, counts = corpus
    empty = [s for s in SPLITS if counts[s] == 0]
    if not empty:
        pytest.skip("every split holds a song")
    with pytest.raises(ValueError, match=f"no eligible song in split '{empty[0]}'.*--split "):
        run_eval(EvalConfig(checkpoints=(checkpoint,), unit="chunk", corpus=root, n=4, split=empty[0]))


def test_plot_is_written(corpus, checkpoint, tmp_path):
    root, split, _ = corpus
    run_eval(EvalConfig(checkpoints=(checkpoint,), unit="chunk", corpus=root, n=4, split=split,
                        plot_out=tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_silent_reference_pairs_are_skipped_and_counted():
    gen = torch.Generator().manual_seed(0)
    stems = torch.randn(3, 2, 300, generator=gen) * 0.1      # (count, stems, window)
    stems[1, 0] = 0.0                                          # stem 0 silent in chunk 1
    stems[2, 1, 50:250] = 10 ** (SILENT_DBFS / 20) / 10        # stem 1 quiet in chunk 2's target
    target, context = 200, 50
    reference = stems[..., context:context + target]
    scores = score_chunks(stems, reference.clone(), reference.clone(), context)
    assert scores["active"].tolist() == [[True, True], [False, True], [True, False]]
    summary = summarise(scores, ["a", "b"])
    assert summary["stems"]["a"]["pairs"] == 2 and summary["stems"]["a"]["skipped_silent"] == 1
    assert summary["overall"]["pairs"] == 4 and summary["overall"]["skipped_silent"] == 2
    assert summary["stems"]["b"]["model"]["mean"] > 60          # perfect estimates
    mixture = scores["mixture"][:, 1]           # stem b: two equal-power noises ~0 dB, then b alone
    assert abs(mixture[0]) < 3 and mixture[1] > 40
    assert summary["stems"]["b"]["mixture"]["mean"] == pytest.approx(mixture[:2].mean().item(), abs=0.01)


def test_unknown_stem_names_are_rejected():
    assert [c.name for c in classes_for(["bass", "drums"])] == ["bass", "drums"]
    with pytest.raises(ValueError, match="guitar"):
        classes_for(["drums", "guitar"])
