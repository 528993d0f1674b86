"""Checkpoints: round trip, atomic writes, retention, validation, resume refusals."""
import dataclasses

import pytest
import torch

from synth_server.protocol import BatchSpec
from trainer.checkpoint import (CheckpointManager, atomic_save, check_resume, load_checkpoint,
                                load_separator, make_checkpoint)
from trainer.config import DistConfig, TrainConfig
from trainer.losses import mae_loss
from trainer.models import build_model, preset
from trainer.run_state import TrainingRun
from trainer.step import StepRunner

SPEC = BatchSpec(44100, 64, 40, ("drums", "piano", "strings", "bass"), "float16")


def trained_tiny():
    torch.manual_seed(3)
    model = build_model(preset("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    runner = StepRunner(model, opt, mae_loss, context=SPEC.context, target=SPEC.target)
    runner(torch.randn(2, 4, SPEC.window) * 0.1)
    return model, opt


def checkpoint_of(model, opt, step=5, cfg=None):
    return make_checkpoint(model, opt, step=step, model_config=cfg or preset("tiny"), model_name="tiny",
                           loss="mae", spec=SPEC, train_config={"lr": 1e-3}, commit="abc")


def test_round_trip_gives_identical_outputs_and_optimizer_state(tmp_path):
    model, opt = trained_tiny()
    path = CheckpointManager(tmp_path).save(checkpoint_of(model, opt))
    assert path.name == "step-00000005.pt" and (tmp_path / "last.pt").is_file()
    loaded, ckpt = load_separator(tmp_path / "last.pt")
    x = torch.randn(3, 1, SPEC.window)
    with torch.no_grad():
        assert torch.equal(model(x, SPEC.target), loaded(x, SPEC.target))
    assert not loaded.training
    assert (ckpt.step, ckpt.loss, ckpt.spec, ckpt.model_config) == (5, "mae", SPEC, preset("tiny"))
    assert ckpt.data["commit"] == "abc" and ckpt.data["model_name"] == "tiny"
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.data["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "last.pt"
    with pytest.raises(Exception):
        atomic_save({"weights": torch.ones(1000), "bad": lambda: None}, target)   # fails mid-write
    assert list(tmp_path.iterdir()) == []
    atomic_save({"v": torch.tensor([1.0])}, target)
    with pytest.raises(Exception):
        atomic_save({"v": torch.tensor([2.0]), "bad": lambda: None}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(target, weights_only=True)["v"].item() == 1.0     # the old version survived


def test_manager_keeps_the_newest_and_last_points_at_it(tmp_path):
    model, opt = trained_tiny()
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (3, 6, 9, 12):
        manager.save(checkpoint_of(model, opt, step=step))
    assert [p.name for p in manager.numbered()] == ["step-00000009.pt", "step-00000012.pt"]
    assert load_checkpoint(manager.last).step == 12
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_refuses_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a stemstream"):
        load_checkpoint(tmp_path / "foreign.pt")
    model, opt = trained_tiny()
    bad = checkpoint_of(model, opt)
    bad["spec"] = {**bad["spec"], "stems": []}
    torch.save(bad, tmp_path / "badspec.pt")
    with pytest.raises(ValueError, match="bad model config or spec"):
        load_checkpoint(tmp_path / "badspec.pt")


def test_resume_refuses_a_model_config_mismatch(tmp_path):
    model, opt = trained_tiny()
    CheckpointManager(tmp_path).save(checkpoint_of(model, opt))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    check_resume(ckpt, preset("tiny"), "tiny")                     # same config: fine
    wider = dataclasses.replace(preset("tiny"), channels=32)
    with pytest.raises(ValueError, match=r"channels: 16 -> 32"):
        check_resume(ckpt, wider, "tiny-wide")


def test_resume_starts_fresh_then_continues_and_plain_run_refuses_a_used_dir(tmp_path):
    cfg = TrainConfig(connect="tcp://127.0.0.1:1", run_dir=tmp_path, model="tiny", device="cpu")
    said = []
    assert TrainingRun(dataclasses.replace(cfg, resume=True), DistConfig(), said.append).resume is None
    assert "starting a new run" in said[0]
    model, opt = trained_tiny()
    CheckpointManager(tmp_path).save(checkpoint_of(model, opt))
    with pytest.raises(ValueError, match="pass --resume"):
        TrainingRun(cfg, DistConfig(), print)
    assert TrainingRun(dataclasses.replace(cfg, resume=True), DistConfig(), print).resume.step == 5


TINY_KINDS = ["tiny", "waveunet-tiny", "resunet-tiny", "specunet-tiny", "openunmix-tiny", "htdemucs-tiny",
              "hdemucs-tiny"]


@pytest.mark.parametrize("name", TINY_KINDS)
def test_every_kind_round_trips_through_a_checkpoint(tmp_path, name):
    cfg = preset(name).for_stream(SPEC.sample_rate, 4096 + 2 * preset(name).context(), 4)
    spec = BatchSpec(44100, 4096, cfg.context(), SPEC.stems, "float16")
    torch.manual_seed(0)
    try:
        model = build_model(cfg).eval()
    except ValueError as exc:                     # optional package missing
        pytest.skip(str(exc))
    CheckpointManager(tmp_path).save(make_checkpoint(model, None, step=1, model_config=cfg, model_name=name,
                                                     loss="mae", spec=spec))
    loaded, ckpt = load_separator(tmp_path / "last.pt")
    assert ckpt.model_config == cfg and type(loaded) is type(model)
    x = torch.randn(1, 1, spec.window) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, spec.target), model(x, spec.target), rtol=0, atol=0)


def test_version_1_checkpoint_still_loads(tmp_path):
    """A checkpoint written before the per-kind configs: flat model config, version 1."""
    model, opt = trained_tiny()
    old = checkpoint_of(model, opt)
    old["version"] = 1
    old["model_config"] = {"kind": "wavenet", "stems": 4, "stacks": 2, "blocks": 4, "channels": 16, "kernel": 3,
                           "head": [32, 32], "gated": False, "input_kernel": 3, "head_kernel": 3,
                           "flat_layers": 4, "flat_kernel": 65, "flat_channels": 64, "flat_skip": True}
    torch.save(old, tmp_path / "v1.pt")
    loaded, ckpt = load_separator(tmp_path / "v1.pt")
    assert ckpt.model_config == preset("tiny")
    x = torch.randn(2, 1, SPEC.window)
    with torch.no_grad():
        assert torch.equal(loaded(x, SPEC.target), model(x, SPEC.target))
    check_resume(ckpt, preset("tiny"), "tiny")
    with pytest.raises(ValueError, match=r"kind: 'wavenet' -> 'flatconv'"):
        check_resume(ckpt, preset("flatconv"), "flatconv")
