"""The training step: gain staging, re-pairing across the batch, guarded updates, clipping, LR schedule."""
import math

import numpy as np
import pytest
import torch

from trainer.gain import GainStaging, apply_separator
from trainer.losses import get_loss, mae_loss
from trainer.models import build_model, preset
from trainer.step import StepRunner, lr_factor, shuffle_stems

from test_train import CONTEXT, TARGET, WINDOW, stems_batch  # the same tone batch


def runner(fused=True, **kwargs):
    torch.manual_seed(0)
    model = build_model(preset("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    return model, opt, StepRunner(model, opt, kwargs.pop("loss", mae_loss), context=CONTEXT, target=TARGET, **kwargs)


def test_gain_staging_feeds_unit_rms_and_makes_the_step_level_free():
    seen = []
    model, _, run = runner()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    stems = stems_batch()
    out = run(stems)
    rms = seen[0].pow(2).mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))
    # the estimate comes back at the stream's level; the loss does not depend on that level
    _, _, quiet = runner()
    _, _, loud = runner()
    a, b = quiet(stems), loud(100 * stems)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-4)
    torch.testing.assert_close(b.estimate, 100 * a.estimate, rtol=1e-3, atol=1e-6)
    assert torch.equal(out.target, stems[:, :, CONTEXT:CONTEXT + TARGET])


def test_apply_separator_and_records():
    model = build_model(preset("tiny")).eval()
    x = 0.02 * torch.randn(2, 1, WINDOW)
    with torch.no_grad():
        a = apply_separator(model, x, TARGET, GainStaging())
        b = apply_separator(model, 7 * x, TARGET, GainStaging())
        raw = apply_separator(model, x, TARGET, GainStaging(mode="none"))
        torch.testing.assert_close(raw, model(x, TARGET))
    torch.testing.assert_close(b, 7 * a, rtol=1e-4, atol=1e-7)
    assert GainStaging.from_dict(None).mode == "none"
    assert GainStaging.from_dict(GainStaging().to_dict()) == GainStaging()
    with pytest.raises(ValueError, match="gain mode"):
        GainStaging(mode="peak")
    silent = GainStaging().scale(torch.zeros(1, 1, 10))
    assert silent.item() == pytest.approx(1e-4)


def test_shuffle_stems_repairs_across_the_batch():
    stems = torch.arange(6 * 4, dtype=torch.float32).view(6, 4, 1).expand(6, 4, 5).clone()
    out = shuffle_stems(stems, torch.Generator().manual_seed(0))
    for s in range(4):   # each stem of the batch used exactly once, kept in its stem slot
        assert sorted(out[:, s, 0].tolist()) == sorted(stems[:, s, 0].tolist())
    assert not torch.equal(out, stems)
    items = {tuple((out[i, :, 0] - torch.arange(4)).div(4).long().tolist()) for i in range(6)}
    assert any(len(set(item)) > 1 for item in items)         # some item mixes stems of several chunks
    _, _, run = runner(remix_across=True, generator=torch.Generator().manual_seed(1))
    result = run(stems_batch(batch=6))
    torch.testing.assert_close(result.mixture[:, 0, CONTEXT:CONTEXT + TARGET], result.target.sum(dim=1))


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_step_is_skipped_and_counted(fused):
    model, opt, run = runner(fused=fused)
    run(stems_batch())
    before = _params(model)
    state = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    bad = stems_batch()
    bad[0, 1, 7] = float("nan")
    out = run(bad)
    assert out.skipped.item() == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = opt.state[next(model.parameters())]
    assert all(torch.equal(state[k], after[k]) for k in state)    # Adam's moments and step untouched
    good = run(stems_batch())
    assert good.skipped.item() == 0.0 and torch.isfinite(good.grad_norm)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_clip_grad_bounds_the_gradient_norm():
    model, _, run = runner(clip_grad=1e-3)
    out = run(stems_batch())
    assert out.grad_norm.item() > 1e-3
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="clip_grad"):
        runner(clip_grad=0.0)


def test_lr_factor_schedules():
    assert [lr_factor(s, 100, "constant", warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(10, 110, "cosine", warmup=10) == pytest.approx(1.0)
    assert lr_factor(60, 110, "cosine", warmup=10) == pytest.approx(0.5)
    assert lr_factor(110, 110, "cosine", warmup=10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, 100, "step", step_every=10, gamma=0.5) == pytest.approx(0.25)
    assert lr_factor(5, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "linear")
    assert math.isfinite(lr_factor(0, 1, "cosine"))


def test_level_balanced_combined_loss_trains():
    model, _, run = runner(loss=get_loss("mae+0.1*sisdr", balance=True))
    first = run(stems_batch(batch=4)).loss.item()
    for _ in range(15):
        last = run(stems_batch(batch=4)).loss.item()
    assert np.isfinite(first) and last < first


def test_run_stops_after_k_skipped_steps_in_a_row():
    from types import SimpleNamespace

    from trainer.train import _check_streak

    run = SimpleNamespace(streak=torch.zeros(()), cfg=SimpleNamespace(max_bad_steps=3), step=0, saved_step=0)
    for skipped in (1.0, 1.0, 0.0, 1.0, 1.0):          # the loop's on-device update of the run
        run.streak = (run.streak + 1) * torch.tensor(skipped)
    _check_streak(run)                                 # 2 in a row: go on
    run.streak = (run.streak + 1) * torch.tensor(1.0)
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        _check_streak(run)
