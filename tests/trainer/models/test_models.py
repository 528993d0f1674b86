"""Separator models: configs, shapes, receptive-field arithmetic vs measurement, valid crop."""
import math
from dataclasses import replace

import pytest
import torch

from trainer.losses import mse_loss
from trainer.models import (
    PRESETS,
    ModelConfig,
    build_model,
    check_context,
    count_parameters,
    preset,
    receptive_field,
    required_context,
)

GATED_TINY = replace(PRESETS["tiny"], gated=True)
SMALL_FLAT = ModelConfig(kind="flatconv", flat_kernel=9, flat_channels=8)


def test_presets_and_unknown_preset():
    assert preset("seed") == ModelConfig()
    with pytest.raises(ValueError, match="flatconv.*seed.*tiny"):
        preset("huge")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip(name):
    cfg = preset(name)
    data = cfg.to_dict()
    assert data["head"] == list(cfg.head)
    assert ModelConfig.from_dict(data) == cfg


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"kind": "wavenet", "layerz": 3})
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="transformer")
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(kernel=4)
    with pytest.raises(ValueError, match="channels"):
        ModelConfig(channels=0)


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


def _measured_receptive_field(cfg: ModelConfig) -> int:
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
    "cfg", [preset("tiny"), GATED_TINY, SMALL_FLAT, replace(SMALL_FLAT, flat_skip=False)],
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


def _sine_batch(context: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two items of 4 sine stems at distinct frequencies: mixture (2, 1, n), stems (2, 4, target)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(target + 2 * context, dtype=torch.float32)
    freqs = torch.tensor([0.013, 0.05, 0.13, 0.31]).view(1, 4, 1)
    amp = 0.2 + 0.6 * torch.rand(2, 4, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(2, 4, 1, generator=gen)
    stems = amp * torch.sin(2 * math.pi * freqs * t + phase)
    return stems.sum(dim=1, keepdim=True), stems[..., context : context + target]


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(preset("tiny"))
    target = 256
    mixture, stems = _sine_batch(model.context, target)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss, per_stem = mse_loss(model(mixture, target), stems)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert per_stem.shape == (4,)
    assert losses[-1] < losses[0] / 10
