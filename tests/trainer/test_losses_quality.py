"""Losses that do what they say: the stft spectral share on real chunks, mrstft against auraloss,
SI-SDR, combinations by name, and level balance across stems."""
import pytest
import torch

from trainer.losses import (LOSSES, get_loss, magnitude_spectrogram, mae_loss, mrstft_loss, neg_si_sdr_loss,
                            parse_loss, stem_levels)

CONTEXT, TARGET = 4096, 4410


def _normalised(real_chunks):
    """Target regions of real chunks divided by their mixture RMS (what training compares)."""
    stems = torch.from_numpy(real_chunks)[:, :, CONTEXT:CONTEXT + TARGET]
    mixture = stems.sum(dim=1, keepdim=True)
    return stems / mixture.pow(2).mean(dim=-1, keepdim=True).sqrt(), mixture


def test_stft_spectral_term_carries_a_real_share_of_the_gradient(real_chunks):
    target, mixture = _normalised(real_chunks)
    mixture = mixture / mixture.pow(2).mean(dim=-1, keepdim=True).sqrt()
    estimate = (0.5 * target + 0.25 * mixture).requires_grad_(True)    # a half-separated output
    wave = (estimate - target).abs().mean(dim=(0, 2)).mean()
    (g_wave,) = torch.autograd.grad(wave, estimate)
    total, _ = get_loss("stft")(estimate, target)
    (g_total,) = torch.autograd.grad(total, estimate)
    g_spec = g_total - g_wave
    share = g_spec.norm() / (g_spec.norm() + g_wave.norm())
    assert 0.3 < share.item() < 0.7, share
    # and the spectral term is not negligible in value either (it was 1 % of MAE before)
    spectral = (total - wave).item()
    assert spectral > 0.1 * wave.item()


def test_mrstft_matches_auraloss_per_stem():
    auraloss = pytest.importorskip("auraloss")
    torch.manual_seed(0)
    estimate, target = torch.randn(3, 2, 4410), torch.randn(3, 2, 4410)
    _, per_stem = mrstft_loss(estimate, target)
    reference = auraloss.freq.MultiResolutionSTFTLoss()
    for s in range(2):
        want = reference(estimate[:, s:s + 1], target[:, s:s + 1])
        assert per_stem[s].item() == pytest.approx(want.item(), rel=1e-4)
    assert mrstft_loss(target, target)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_mrstft_is_scale_invariant_and_needs_enough_samples():
    torch.manual_seed(1)
    estimate, target = torch.randn(2, 4, 3000), torch.randn(2, 4, 3000)
    a, _ = mrstft_loss(estimate, target)
    b, _ = mrstft_loss(10 * estimate, 10 * target)
    assert a.item() == pytest.approx(b.item(), rel=1e-3)
    with pytest.raises(ValueError, match="more than 1024 samples"):
        mrstft_loss(torch.zeros(1, 1, 900), torch.zeros(1, 1, 900))


def test_neg_si_sdr_loss_values_scale_invariance_and_silent_stems():
    torch.manual_seed(2)
    target = torch.randn(4, 2, 2000)
    noise = torch.randn(4, 2, 2000)
    estimate = target + 0.1 * noise                                     # about 20 dB
    total, per_stem = neg_si_sdr_loss(estimate, target)
    assert -22 < per_stem.min().item() and per_stem.max().item() < -18
    scaled, _ = neg_si_sdr_loss(3.0 * estimate, target)
    assert scaled.item() == pytest.approx(total.item(), rel=1e-4)      # scale of the estimate is free
    silent = target.clone()
    silent[:2, 1] = 0.0                                                 # stem 1 silent in items 0-1
    _, part = neg_si_sdr_loss(silent + 0.1 * noise, silent)
    _, only = neg_si_sdr_loss(target[2:, 1:] + 0.1 * noise[2:, 1:], target[2:, 1:])
    assert part[1].item() == pytest.approx(only[0].item(), rel=1e-5)  # silent items are left out
    estimate = estimate.clone().requires_grad_(True)
    neg_si_sdr_loss(estimate, silent)[0].backward()
    assert torch.isfinite(estimate.grad).all()


def test_combinations_by_name_add_weighted_terms():
    assert parse_loss("mae+0.5*mrstft") == [(1.0, "mae"), (0.5, "mrstft")]
    torch.manual_seed(3)
    estimate, target = torch.randn(2, 4, 3000), torch.randn(2, 4, 3000)
    total, per_stem = get_loss("mae+0.5*mrstft")(estimate, target)
    want = mae_loss(estimate, target)[1] + 0.5 * mrstft_loss(estimate, target)[1]
    torch.testing.assert_close(per_stem, want)
    assert total.item() == pytest.approx(want.mean().item(), rel=1e-6)
    for name in ("mse", "mae", "stft", "diff"):                         # the seed's four, by name
        assert get_loss(name) is LOSSES[name].fn
    for bad, message in (("l3", "unknown loss 'l3'"), ("mae+x*sisdr", "bad loss weight"),
                         ("mae+-1*sisdr", "must be > 0"), ("mae+mae", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_loss(bad)


@pytest.mark.parametrize("name", ["mae", "mse", "stft", "mae+mrstft"])   # diff compares stems with each other
def test_balance_makes_a_stems_share_independent_of_its_level(name):
    torch.manual_seed(4)
    target = torch.randn(2, 4, 3000)
    estimate = target + 0.3 * torch.randn(2, 4, 3000)
    loss = get_loss(name, balance=True)
    _, even = loss(estimate, target)
    quiet = torch.tensor([0.05, 1.0, 1.0, 1.0]).view(1, 4, 1)            # drums 26 dB quieter
    _, uneven = loss(estimate * quiet, target * quiet)
    torch.testing.assert_close(uneven, even, rtol=2e-3, atol=1e-4)
    _, plain = get_loss(name)(estimate * quiet, target * quiet)
    if name != "mae+mrstft":                                            # the raw loss favours loud stems
        assert plain[0] < 0.2 * plain[1]


def test_stem_levels_floor_silent_stems():
    target = torch.zeros(2, 3, 100)
    target[:, 0] = 0.5
    levels = stem_levels(target)
    assert levels[0].item() == pytest.approx(0.5) and levels[1].item() == pytest.approx(1e-3)
    assert get_loss("mae", balance=True)(torch.zeros(2, 3, 100), target)[1][0].item() == pytest.approx(1.0)


def test_magnitude_spectrogram_is_unchanged_for_callers():
    assert magnitude_spectrogram(torch.zeros(1, 2, 1000)).shape == (1, 2, 257, 8)
