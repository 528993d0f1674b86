"""Training step, remix, device transfer, configs and CLI parsing, without a server."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.cli import build_parser, dist_from_env, train_config
from trainer.config import DistConfig, TrainConfig, resolve_amp, resolve_compile, resolve_device
from trainer.logging_utils import MetricsLog, RunLogger, server_figures
from trainer.losses import mae_loss
from trainer.models import build_model, preset, required_context
from trainer.data import stems_to_torch
from trainer.step import StepRunner, remix_stems

CONTEXT, TARGET = 40, 64
WINDOW = 2 * CONTEXT + TARGET


def tiny_runner(lr=1e-3, **kwargs):
    torch.manual_seed(0)
    model = build_model(preset("tiny"))
    assert required_context(preset("tiny")) <= CONTEXT
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return model, StepRunner(model, opt, mae_loss, context=CONTEXT, target=TARGET, **kwargs)


def stems_batch(batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(WINDOW, dtype=torch.float32)
    freqs = torch.tensor([0.01, 0.05, 0.13, 0.3])
    tone = torch.sin(2 * np.pi * freqs[None, :, None] * t + torch.rand(batch, 4, 1, generator=g) * 6)
    return 0.2 * tone + 0.01 * torch.randn(batch, 4, WINDOW, generator=g)


def test_step_uses_device_mixture_and_target_region_and_learns():
    model, runner = tiny_runner(lr=3e-3)
    stems = stems_batch()
    before = [p.detach().clone() for p in model.parameters()]
    out = runner(stems)
    assert out.estimate.shape == (3, 4, TARGET) and out.target.shape == (3, 4, TARGET)
    assert torch.equal(out.target, stems[:, :, CONTEXT:CONTEXT + TARGET])
    assert torch.allclose(out.mixture, stems.sum(dim=1, keepdim=True))
    assert out.per_stem.shape == (4,) and torch.isclose(out.loss, out.per_stem.mean())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    first = out.loss.item()
    for _ in range(40):
        last = runner(stems).loss.item()
    assert np.isfinite(first) and last < 0.7 * first


def test_step_weights_select_stems():
    _, runner = tiny_runner(weights=torch.tensor([0.0, 4.0, 0.0, 0.0]))
    out = runner(stems_batch())
    assert torch.isclose(out.loss, out.per_stem[1] * 4.0 / 4)


def test_step_rejects_wrong_window():
    _, runner = tiny_runner()
    with pytest.raises(ValueError, match="stems must be"):
        runner(torch.zeros(2, 4, WINDOW + 2))


def test_bf16_autocast_step_on_cpu():
    _, runner = tiny_runner(amp_dtype=torch.bfloat16)
    out = runner(stems_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_remix_gains_signs_and_new_examples():
    stems = stems_batch(batch=64)
    g = torch.Generator().manual_seed(5)
    mixed = remix_stems(stems, (0.25, 1.25), g)
    ratio = mixed[..., 10] / stems[..., 10]
    # one factor per (chunk, stem), constant over time
    assert torch.allclose(mixed, stems * ratio[..., None], atol=1e-6)
    assert ratio.abs().min() >= 0.25 - 1e-5 and ratio.abs().max() <= 1.25 + 1e-5
    assert (ratio > 0).any() and (ratio < 0).any()
    _, runner = tiny_runner(remix_gain=(0.25, 1.25), generator=torch.Generator().manual_seed(7))
    a, b = runner(stems[:4]), runner(stems[:4])
    # the mixture is the sum of the remixed stems, target region included
    assert torch.allclose(a.mixture[:, 0, CONTEXT:CONTEXT + TARGET], a.target.sum(dim=1), atol=1e-5)
    assert not torch.allclose(a.mixture, b.mixture)               # a reused chunk is a new example
    assert not torch.allclose(a.target, stems[:4, :, CONTEXT:CONTEXT + TARGET])


def test_remix_needs_generator():
    model = build_model(preset("tiny"))
    with pytest.raises(ValueError, match="Generator"):
        StepRunner(model, torch.optim.Adam(model.parameters()), mae_loss, context=CONTEXT, target=TARGET,
                   remix_gain=(0.5, 1.0))


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.float32])
def test_stems_to_torch_casts_wire_dtypes(dtype):
    x = np.array([[[0.5, -0.25, 1.0]]], dtype=np.float32)
    wire = np.rint(x * 32767).astype(np.int16) if dtype == np.int16 else x.astype(dtype)
    wire.setflags(write=False)                                    # like a received frame
    out = stems_to_torch(wire, torch.device("cpu"))
    assert out.dtype == torch.float32 and out.shape == (1, 1, 3)
    assert np.allclose(out.numpy(), x, atol=1e-4)


def test_resolve_auto_settings_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_compile("auto", cpu) is False and resolve_compile("on", cpu) is True
    assert resolve_compile("auto", torch.device("cuda", 0)) is True
    assert resolve_amp("auto", torch.device("cuda", 0)) is torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("change, message", [
    ({"connect": "localhost:5555"}, "tcp://HOST:PORT"),
    ({"model": "huge"}, "--model"),
    ({"loss": "l3"}, "--loss"),
    ({"batch_size": 0}, "--batch-size"),
    ({"stem_weights": (1.0, -1.0)}, "--stem-weights"),
    ({"remix_gain": (1.0, 0.5)}, "remix gain"),
    ({"amp": "fp16"}, "--amp"),
    ({"give_up": 0}, "--give-up"),
])
def test_train_config_refuses_bad_values(tmp_path, change, message):
    base = {"connect": "tcp://127.0.0.1:5555", "run_dir": tmp_path}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**base, **change})


def test_cli_parses_train_flags(tmp_path):
    args = build_parser().parse_args([
        "train", "--connect", "tcp://10.0.0.2:5555", "--model", "tiny", "--loss", "diff", "--batch-size", "3",
        "--lr", "2e-4", "--steps", "9", "--run-dir", str(tmp_path), "--remix", "--stem-weights", "1,2,1,0.5",
        "--remix-gain", "0.5,1.5", "--device", "cpu", "--compile", "off", "--amp", "off", "--seed", "4"])
    cfg = train_config(args)
    assert cfg.stem_weights == (1.0, 2.0, 1.0, 0.5) and cfg.remix_gain == (0.5, 1.5)
    assert (cfg.model, cfg.loss, cfg.batch_size, cfg.steps, cfg.seed) == ("tiny", "diff", 3, 9, 4)
    assert cfg.torch_threads is None and cfg.run_dir == tmp_path
    assert json.loads(json.dumps(cfg.to_dict()))["stem_weights"] == [1.0, 2.0, 1.0, 0.5]


@pytest.mark.parametrize("argv", [["train", "--run-dir", "x"], ["train", "--connect", "tcp://a:1", "--run-dir",
                                  "x", "--stem-weights", "1,a"], ["train", "--connect", "tcp://a:1", "--run-dir",
                                  "x", "--steps", "0"]])
def test_cli_flag_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_dist_from_env():
    assert dist_from_env({}) == DistConfig()
    d = dist_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert d.distributed and not d.is_main and d.local_rank == 1
    with pytest.raises(ValueError, match="RANK"):
        dist_from_env({"RANK": "x"})
    with pytest.raises(ValueError, match="process layout"):
        dist_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_each_rank_reads_from_one_of_several_brokers():
    shards = "tcp://a:5555, tcp://b:5555"
    picked = [DistConfig(rank=r, world_size=4).address(shards) for r in range(4)]
    assert picked == ["tcp://a:5555", "tcp://b:5555", "tcp://a:5555", "tcp://b:5555"]
    assert DistConfig().address("tcp://a:5555") == "tcp://a:5555"
    with pytest.raises(ValueError, match="no broker"):
        DistConfig().address(" , ")


def test_metrics_rows_and_server_figures(tmp_path):
    stats = {"reuse": {"value": 3, "auto": True}, "pool": {"size": 30, "capacity": 120},
             "rates": {"kept": 12.345, "served": 40.0}}
    assert server_figures(stats) == {"reuse": 3, "pool_fill": 0.25, "server_kept_per_s": 12.35,
                                     "server_served_per_s": 40.0}
    assert server_figures(None) == {} and server_figures({"reuse": "x"}) == {}
    notices = []
    logger = RunLogger(tmp_path, total_steps=4, initial_step=0, notify=notices.append)
    for step in (2, 4):
        logger.on_step(step)
        logger.write({"step": step, "loss": float(step), "loss_drums": 1.0, "wait_share": 0.5})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and rows[1]["loss"] == 4.0
    assert logger.tb.enabled or sum("TensorBoard" in n for n in notices) == 1  # one notice without it
    assert [n.split()[:2] for n in notices if n.startswith("step ")] == [["step", "2"], ["step", "4"]]  # no TTY
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"loss": float("nan")})
    log.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"loss": None}


def test_config_dataclasses_are_frozen(tmp_path):
    cfg = TrainConfig(connect="tcp://h:1", run_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    assert isinstance(cfg.run_dir, Path)


def _run_for(tmp_path, model="tiny", model_config=None):
    from trainer.run_state import TrainingRun

    cfg = TrainConfig(connect="tcp://127.0.0.1:1", run_dir=tmp_path, model=model, device="cpu",
                      model_config=model_config)
    return TrainingRun(cfg, DistConfig(), lambda _m: None)


def test_model_config_file_reaches_the_built_model(tmp_path):
    from synth_server.protocol import BatchSpec

    f = tmp_path / "m.toml"
    f.write_text('preset = "waveunet-tiny"\ngrowth = 4\n')
    args = build_parser().parse_args(["train", "--connect", "tcp://a:1", "--run-dir", str(tmp_path / "r"),
                                      "--model-config", str(f)])
    cfg = train_config(args)
    assert cfg.architecture().KIND == "waveunet" and cfg.architecture().growth == 4
    assert json.loads(json.dumps(cfg.to_dict()))["model_config"]["kind"] == "waveunet"
    run = _run_for(tmp_path / "r", model_config=cfg.model_config)
    run.build(BatchSpec(44100, 1000, 300, ("a", "b", "c"), "float16"))
    assert run.model_cfg.stems == 3 and run.model.down[0].out_channels == 4
    assert "waveunet" in run.describe() and run.model_name == "waveunet+config"


def test_start_checks_context_segment_and_a_probe_forward(tmp_path):
    from synth_server.protocol import BatchSpec

    with pytest.raises(ValueError, match=r"stream context 100 < 262 needed by model 'waveunet-tiny'"):
        _run_for(tmp_path, "waveunet-tiny").build(BatchSpec(44100, 1000, 100, ("a", "b"), "float16"))
    run = _run_for(tmp_path, "htdemucs-tiny")
    run.build(BatchSpec(22050, 6000, 0, ("a", "b"), "float16"))
    assert (run.model_cfg.segment, run.model_cfg.sample_rate, run.model.max_input) == (6000, 22050, 6000)
    assert "sees the whole 6000-sample window" in run.describe()
    bad = preset("hdemucs-tiny").__class__(variant="hdemucs", channels=4, depth=3, nfft=1024)
    with pytest.raises(ValueError, match="cannot take the stream's window of 6000 samples"):
        _run_for(tmp_path, "hdemucs-tiny", model_config=bad).build(BatchSpec(44100, 6000, 0, ("a", "b"), "float16"))
