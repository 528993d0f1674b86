"""The contract every architecture shares: shapes, context, alignment, exactness, learning.

Tiny configs of every kind; Open-Unmix and Demucs come from optional packages and are skipped
when those are not installed (test_packages.py checks the error a user then gets).
"""
import importlib.util
import math

import pytest
import torch

from trainer.losses import mse_loss
from trainer.models import FlatConvConfig, build_model, check_context, preset

SR = 44100
TINY = {
    "wavenet": preset("tiny"),
    "flatconv": FlatConvConfig(kernel=9, channels=8),
    "waveunet": preset("waveunet-tiny"),
    "resunet": preset("resunet-tiny"),
    "specunet": preset("specunet-tiny"),
    "openunmix": preset("openunmix-tiny"),
    "htdemucs": preset("htdemucs-tiny"),
    "hdemucs": preset("hdemucs-tiny"),
}
EXACT = ("wavenet", "flatconv", "waveunet", "resunet")
PACKAGE = {"openunmix": "openunmix", "htdemucs": "demucs", "hdemucs": "demucs"}


def tiny_model(kind: str, window: int, seed: int = 0):
    """The tiny model of ``kind`` adapted to a stream window (skipped without its package)."""
    if kind in PACKAGE and importlib.util.find_spec(PACKAGE[kind]) is None:
        pytest.skip(f"{PACKAGE[kind]} is not installed")
    torch.manual_seed(seed)
    return build_model(TINY[kind].for_stream(SR, window, 4))


@pytest.mark.parametrize("kind", sorted(TINY))
def test_shape_contract_with_extra_context(kind):
    cfg = TINY[kind]
    for target, extra in ((1000, 3), (999, 0)):
        ctx = cfg.context() + extra
        model = tiny_model(kind, target + 2 * ctx)
        assert model.context == cfg.context()
        out = model(torch.randn(2, 1, target + 2 * ctx) * 0.1, target)
        assert out.shape == (2, 4, target) and torch.isfinite(out).all()
        assert model(torch.randn(1, 1, target + 2 * ctx) * 0.1).shape == (1, 4, target + 2 * extra)


@pytest.mark.parametrize("kind", sorted(k for k in TINY if TINY[k].context() > 0))
def test_too_little_context_is_refused(kind):
    cfg = TINY[kind]
    need = cfg.context()
    with pytest.raises(ValueError, match=f"needed by model '{kind}'.*--context {need}"):
        check_context(cfg, need - 1, model_name=kind)
    model = tiny_model(kind, 1000 + 2 * need)
    with pytest.raises(ValueError, match="cannot centre"):
        model(torch.zeros(1, 1, 1000 + 2 * need - 2), 1000)


def _impulse_response(model, target: int, position: int) -> torch.Tensor:
    """Output (stems, target) of a unit impulse at target sample ``position`` minus the
    output of silence; eval mode, float64."""
    ctx = model.context
    x = torch.zeros(2, 1, target + 2 * ctx, dtype=torch.float64)
    x[1, 0, ctx + position] = 1.0
    with torch.no_grad():
        y = model.double().eval()(x, target)
    return y[1] - y[0]


@pytest.mark.parametrize("kind", EXACT)
def test_exact_models_impulse_moves_the_output_by_the_same_shift(kind):
    """An impulse at target sample p changes only outputs within the receptive field around p;
    moving it by a multiple of the model's stride moves the response by exactly as much."""
    target = 4 * 128
    model = tiny_model(kind, target + 2 * TINY[kind].context())
    half = (model.receptive_field - 1) // 2
    p, shift = 100, 2 * max(model.stride, 64)
    a = _impulse_response(model, target, p)
    b = _impulse_response(model, target, p + shift)
    support = (a.abs().sum(0) > 1e-12).nonzero().flatten()
    assert support.numel() > 0 and p - half <= support.min() and support.max() <= p + half
    assert a[:, p].abs().max() > 0
    torch.testing.assert_close(b[:, shift:], a[:, :-shift], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["specunet", "openunmix", "htdemucs", "hdemucs"])
def test_padded_models_respond_around_the_impulse(kind):
    """Padded models have no exact receptive field: the response to an impulse must peak near
    it (within an STFT hop) and follow it when it moves; for the STFT models most of its energy
    lies within one FFT length. (Demucs normalises by the input's std, so at init a lone
    impulse changes its whole output; the peak still follows the impulse.)"""
    target = 8192
    model = tiny_model(kind, target + 2 * TINY[kind].context())
    for p in (2500, 5600):
        energy = _impulse_response(model, target, p).pow(2).sum(0)
        assert abs(int(energy.argmax()) - p) <= 256
        if kind in ("specunet", "openunmix"):
            near = energy[max(0, p - 1024):p + 1024].sum()
            assert near > 0.5 * energy.sum()


@pytest.mark.parametrize("kind", ["htdemucs", "hdemucs"])
def test_demucs_target_is_the_centre_of_the_package_output(kind):
    target, ctx = 3000, 500
    model = tiny_model(kind, target + 2 * ctx).eval()
    x = torch.randn(1, 1, target + 2 * ctx) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(x, target), model.net(x)[:, :, 0, ctx:ctx + target])


@pytest.mark.parametrize("kind", EXACT)
def test_exact_models_ignore_input_outside_their_context(kind):
    target, extra = 300, 50
    cfg = TINY[kind]
    ctx = cfg.context() + extra
    model = tiny_model(kind, target + 2 * ctx).double().eval()
    x = torch.randn(1, 1, target + 2 * ctx, dtype=torch.float64) * 0.1
    with torch.no_grad():
        base = model(x, target)
        outside = x.clone()
        outside[..., :extra] += 3.0
        outside[..., -extra:] += 3.0
        torch.testing.assert_close(model(outside, target), base, rtol=0, atol=1e-12)


def sine_batch(context: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two items of 4 sine stems at distinct frequencies: mixture (2, 1, n), stems (2, 4, target)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(target + 2 * context, dtype=torch.float32)
    freqs = torch.tensor([0.013, 0.05, 0.13, 0.31]).view(1, 4, 1)
    amp = 0.2 + 0.6 * torch.rand(2, 4, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(2, 4, 1, generator=gen)
    stems = amp * torch.sin(2 * math.pi * freqs * t + phase)
    return stems.sum(dim=1, keepdim=True), stems[..., context:context + target]


@pytest.mark.parametrize("kind", sorted(TINY))
def test_overfits_one_batch(kind):
    """100 Adam steps on one fixed batch of sine stems bring the MSE below 1/30 of its start."""
    target = 512
    model = tiny_model(kind, target + 2 * TINY[kind].context())
    mixture, stems = sine_batch(model.context, target)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, per_stem = mse_loss(model(mixture, target), stems)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert per_stem.shape == (4,)
    assert min(losses[-10:]) < losses[0] / 30, (losses[0], losses[-10:])
