"""WaveNet and FlatConv: configs, shapes, receptive-field arithmetic vs measurement, valid crop.
(Every architecture's shared contract: test_contract.py.)"""
from dataclasses import replace

import pytest
import torch

from trainer.models import (
    PRESETS,
    FlatConvConfig,
    WaveNetConfig,
    build_model,
    config_from_dict,
    check_context,
    count_parameters,
    preset,
    receptive_field,
    required_context,
)

GATED_TINY = replace(PRESETS["tiny"], gated=True)
SMALL_FLAT = FlatConvConfig(kernel=9, channels=8)


def test_presets_and_unknown_preset():
    assert preset("seed") == WaveNetConfig()
    with pytest.raises(ValueError, match="flatconv.*seed.*tiny"):
        preset("huge")


def test_config_dict_round_trip_keeps_head_as_list():
    data = preset("seed").to_dict()
    assert data["kind"] == "wavenet" and data["head"] == [512, 256]
    assert config_from_dict(data) == preset("seed")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown wavenet config keys"):
        config_from_dict({"kind": "wavenet", "layerz": 3})
    with pytest.raises(ValueError, match="kind"):
        config_from_dict({"kind": "transformer"})
    with pytest.raises(ValueError, match="odd"):
        WaveNetConfig(kernel=4)
    with pytest.raises(ValueError, match="channels"):
        WaveNetConfig(channels=0)


def test_seed_receptive_field_and_parameter_count():
    cfg = preset("seed")
    assert receptive_field(cfg) == 8191
    assert required_context(cfg) == 4095
    assert 3_500_000 <= count_parameters(build_model(cfg)) <= 4_300_000


def test_receptive_field_arithmetic():
    assert receptive_field(preset("tiny")) == 1 + 2 + 2 * 2 * 15 + 2 * 2
    assert receptive_field(preset("flatconv")) == 1 + 4 * 64
    assert required_context(preset("flatconv")) == 128


def test_seed_forward_shape():
    model = build_model(preset("seed"))
    context = required_context(preset("seed"))
    with torch.no_grad():
        out = model(torch.randn(1, 1, 2 * context + 32), 32)
    assert out.shape == (1, 4, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cfg", [preset("tiny"), GATED_TINY, preset("flatconv")], ids=["tiny", "gated", "flat"])
def test_forward_shapes_with_extra_context(cfg):
    model = build_model(cfg)
    context, target = required_context(cfg) + 7, 100
    out = model(torch.randn(3, 1, 2 * context + target), target)
    assert out.shape == (3, cfg.stems, target)
    full = model(torch.randn(2, 1, 2 * context + target))
    assert full.shape == (2, cfg.stems, target + 14)


def test_forward_rejects_bad_shapes():
    model = build_model(preset("tiny"))
    with pytest.raises(ValueError, match="batch, 1, time"):
        model(torch.randn(2, 2, 500))
    with pytest.raises(ValueError, match="cannot centre"):
        model(torch.randn(1, 1, 50))
    with pytest.raises(ValueError, match="cannot centre"):
        model(torch.randn(1, 1, 200), 200)
    with pytest.raises(ValueError, match="cannot centre"):
        model(torch.randn(1, 1, 200), 133)          # 67 samples left: not the same on both sides


def _measured_receptive_field(cfg) -> int:
    """Width of the input span with nonzero gradient of one output sample (over a few inputs)."""
    torch.manual_seed(0)
    model = build_model(cfg).double()
    rf = receptive_field(cfg)
    length = rf + 40
    seen = torch.zeros(length, dtype=torch.bool)
    for _ in range(4):
        x = torch.randn(1, 1, length, dtype=torch.float64, requires_grad=True)
        model(x)[0, :, 20].sum().backward()
        seen |= x.grad[0, 0] != 0
    hits = seen.nonzero().flatten()
    assert hits.numel() == hits[-1] - hits[0] + 1, "gradient support must be contiguous"
    assert hits[0] == 20, "output 20 must see input 20 .. 20+rf-1 (centred on input 20+context)"
    return hits.numel()


@pytest.mark.parametrize(
    "cfg", [preset("tiny"), GATED_TINY, SMALL_FLAT, replace(SMALL_FLAT, skip=False)],
    ids=["tiny", "gated", "flat", "flat-noskip"],
)
def test_receptive_field_matches_gradient_support(cfg):
    assert _measured_receptive_field(cfg) == receptive_field(cfg)


@pytest.mark.parametrize("cfg", [preset("tiny"), SMALL_FLAT], ids=["tiny", "flat"])
def test_valid_crop_ignores_samples_outside_receptive_field(cfg):
    torch.manual_seed(1)
    model = build_model(cfg).double()
    need, extra, target = required_context(cfg), 5, 16
    context = need + extra
    x = torch.randn(1, 1, 2 * context + target, dtype=torch.float64)
    with torch.no_grad():
        base = model(x, target)[0, :, 0]
        lo, hi = context - need, context + need + 1  # input span of output sample 0
        outside = x.clone()
        outside[..., :lo] += 5.0
        outside[..., hi:] += 5.0
        torch.testing.assert_close(model(outside, target)[0, :, 0], base, rtol=0, atol=1e-12)
        inside = x.clone()
        inside[..., lo:hi] += 5.0
        assert (model(inside, target)[0, :, 0] - base).abs().max() > 1e-6


def test_check_context():
    cfg = preset("seed")
    check_context(cfg, 4095)
    with pytest.raises(ValueError, match=r"stream context 1000 < 4095 needed by model 'seed'.*--context 4095"):
        check_context(cfg, 1000, model_name="seed")
    with pytest.raises(ValueError, match=r"--ctx 33 or more"):
        check_context(preset("tiny"), 10, flag="--ctx")
