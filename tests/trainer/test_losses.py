"""Losses on hand-made inputs: exact values, per-stem weights, diff-loss sign, STFT loss."""
import math

import pytest
import torch

from trainer.losses import (
    LOSSES,
    difference_loss,
    difference_matrix,
    get_loss,
    mae_loss,
    magnitude_spectrogram,
    mse_loss,
    stft_mae_loss,
)


def _constant_stems(values, batch=2, time=64) -> torch.Tensor:
    """(batch, stems, time) with stem s constant at values[s]."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1).expand(batch, -1, time).clone()


def _sines(shift: int = 0, time: int = 2048) -> torch.Tensor:
    """(1, 2, time) sines at 440 and 1000 Hz (44.1 kHz), delayed by ``shift`` samples."""
    t = (torch.arange(time) - shift) / 44100.0
    return torch.stack([torch.sin(2 * math.pi * 440 * t), 0.5 * torch.sin(2 * math.pi * 1000 * t)])[None]


@pytest.mark.parametrize("name", ["mse", "mae", "stft"])
def test_perfect_estimate_is_zero(name):
    target = torch.randn(3, 4, 1000)
    total, per_stem = get_loss(name)(target.clone(), target)
    assert total.item() == 0.0
    assert per_stem.shape == (4,) and torch.all(per_stem == 0)


def test_mse_and_mae_known_values_per_stem():
    target = _constant_stems([1.0, 2.0, 3.0, 4.0])
    estimate = torch.zeros_like(target)
    total, per_stem = mse_loss(estimate, target)
    torch.testing.assert_close(per_stem, torch.tensor([1.0, 4.0, 9.0, 16.0]))
    assert total.item() == pytest.approx(7.5)
    total, per_stem = mae_loss(estimate, target)
    torch.testing.assert_close(per_stem, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert total.item() == pytest.approx(2.5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weights_scale_total_not_per_stem(name):
    torch.manual_seed(0)
    estimate, target = torch.randn(2, 4, 2400), torch.randn(2, 4, 2400)
    loss = get_loss(name)
    plain, per_stem = loss(estimate, target)
    doubled, per_stem2 = loss(estimate, target, torch.full((4,), 2.0))
    assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-5)
    torch.testing.assert_close(per_stem2, per_stem)
    only_first, _ = loss(estimate, target, torch.tensor([4.0, 0.0, 0.0, 0.0]))
    assert only_first.item() == pytest.approx(per_stem[0].item(), rel=1e-5)


def test_difference_matrix_and_loss_known_values():
    target = _constant_stems([0.0, 1.0, 2.0, 3.0])
    a = difference_matrix(target, target)
    expected = torch.tensor([[abs(i - j) for j in range(4)] for i in range(4)], dtype=torch.float32)
    torch.testing.assert_close(a, expected)
    total, per_stem = difference_loss(target, target, lam=0.1)
    # Off-diagonal row means: 2, 4/3, 4/3, 2 -> per stem = -0.1 * row mean.
    torch.testing.assert_close(per_stem, -0.1 * torch.tensor([2.0, 4 / 3, 4 / 3, 2.0]))
    assert total.item() == pytest.approx(-0.1 * 5 / 3)
    assert total.item() < 0


def test_difference_loss_rewards_distance_from_other_stems():
    target = _constant_stems([0.0, 1.0, 2.0, 3.0])
    perfect, _ = difference_loss(target, target, lam=0.1)
    swapped = target[:, [1, 0, 2, 3]]
    wrong, _ = difference_loss(swapped, target, lam=0.1)
    assert wrong.item() > perfect.item()
    stronger, _ = difference_loss(target, target, lam=0.5)
    assert stronger.item() == pytest.approx(5 * perfect.item())
    estimate = target.clone().requires_grad_(True)
    difference_loss(estimate, target, lam=0.1)[0].backward()
    # Stem 0 (value 0) sits below every other target: the loss pushes it further down (grad > 0).
    assert estimate.grad[:, 0].gt(0).all()


def test_difference_loss_single_stem_is_mae():
    estimate, target = torch.randn(2, 1, 100), torch.randn(2, 1, 100)
    torch.testing.assert_close(difference_loss(estimate, target)[0], mae_loss(estimate, target)[0])


def test_stft_loss_positive_for_shifted_sine():
    target = _sines()
    total, per_stem = stft_mae_loss(_sines(shift=40), target)
    assert total.item() > 0 and torch.all(per_stem > 0)
    wave_only, _ = stft_mae_loss(_sines(shift=40), target, spectral_weight=0.0)
    assert wave_only.item() == pytest.approx(mae_loss(_sines(shift=40), target)[0].item())
    louder, _ = stft_mae_loss(2 * target, target, spectral_weight=1.0)
    assert louder.item() > mae_loss(2 * target, target)[0].item()


def test_magnitude_spectrogram_shape_and_silence_gradient():
    x = torch.zeros(2, 4, 1000, requires_grad=True)
    assert magnitude_spectrogram(x, 512, 128).shape == (2, 4, 257, 1000 // 128 + 1)
    total, _ = stft_mae_loss(x, torch.zeros(2, 4, 1000))
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        get_loss("l3")
    with pytest.raises(ValueError, match="batch, stems, time"):
        mse_loss(torch.zeros(2, 4, 10), torch.zeros(2, 3, 10))
    with pytest.raises(ValueError, match="one per stem"):
        mae_loss(torch.zeros(2, 4, 10), torch.zeros(2, 4, 10), torch.ones(3))
