"""SI-SDR, SI-SDR improvement and the ideal-ratio-mask oracle."""
import math

import pytest
import torch

from trainer.metrics import irm_oracle, si_sdr, si_sdr_improvement


def _noise_at_snr(reference: torch.Tensor, snr_db: float, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean noise orthogonal to ``reference`` (time,) with |r|^2 / |n|^2 = 10^(snr/10)."""
    r = reference - reference.mean()
    n = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    n = n - n.mean()
    n = n - (n @ r) / (r @ r) * r
    return n * torch.sqrt((r @ r) / (n @ n) / 10 ** (snr_db / 10))


def _two_sines(time: int = 8820) -> torch.Tensor:
    """(2, time): 220 Hz and 1760 Hz sines at 44.1 kHz."""
    t = torch.arange(time, dtype=torch.float64) / 44100.0
    return torch.stack([torch.sin(2 * math.pi * 220 * t), 0.5 * torch.sin(2 * math.pi * 1760 * t)])


def test_si_sdr_scale_invariant_and_perfect():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 4410, generator=gen, dtype=torch.float64)
    estimate = reference + 0.3 * torch.randn(3, 4410, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(si_sdr(3 * estimate, reference), si_sdr(estimate, reference))
    torch.testing.assert_close(si_sdr(estimate + 0.7, reference), si_sdr(estimate, reference))
    assert torch.all(si_sdr(reference.clone(), reference, eps=1e-12) > 100)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 20.0])
def test_si_sdr_known_snr(snr):
    gen = torch.Generator().manual_seed(1)
    reference = torch.randn(8000, generator=gen, dtype=torch.float64)
    noisy = reference + _noise_at_snr(reference, snr, gen)
    assert si_sdr(noisy, reference).item() == pytest.approx(snr, abs=0.1)
    # White noise scaled to the exact power ratio but not orthogonalised: only chance correlation.
    white = torch.randn(8000, generator=gen, dtype=torch.float64)
    white = white * torch.sqrt(reference.pow(2).sum() / white.pow(2).sum() / 10 ** (snr / 10))
    assert si_sdr(reference + white, reference).item() == pytest.approx(snr, abs=0.1)


def test_si_sdr_shapes_and_errors():
    out = si_sdr(torch.randn(2, 3, 500), torch.randn(2, 3, 500))
    assert out.shape == (2, 3) and out.dtype == torch.float64
    with pytest.raises(ValueError, match="differ"):
        si_sdr(torch.randn(2, 500), torch.randn(3, 500))


def test_si_sdr_improvement():
    stems = _two_sines()[None]  # (1, 2, time)
    mixture = stems.sum(dim=1, keepdim=True)
    gain = si_sdr_improvement(stems, stems, mixture)
    assert gain.shape == (1, 2)
    expected = si_sdr(stems, stems) - si_sdr(mixture.expand_as(stems), stems)
    torch.testing.assert_close(gain, expected)
    # The louder sine is 6.02 dB above the quieter one in the mixture.
    baseline = si_sdr(mixture.expand_as(stems), stems)[0]
    assert baseline[0].item() == pytest.approx(10 * math.log10(4), abs=0.05)
    assert baseline[1].item() == pytest.approx(-10 * math.log10(4), abs=0.05)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_irm_oracle_separates_two_sines(power):
    stems = _two_sines()
    estimates = irm_oracle(stems, n_fft=2048, hop=512, power=power)
    assert estimates.shape == stems.shape
    mixture = stems.sum(dim=0, keepdim=True).expand_as(stems)
    gain = si_sdr(estimates, stems) - si_sdr(mixture, stems)
    assert torch.all(gain > 15)
    # Masks sum to one wherever there is energy, so the estimates add back up to the mixture.
    torch.testing.assert_close(estimates.sum(dim=0), stems.sum(dim=0), atol=1e-6, rtol=0)


def test_irm_oracle_batched_and_short_inputs():
    stems = torch.stack([_two_sines(3000), _two_sines(3000).flip(0)]).float()
    estimates = irm_oracle(stems, n_fft=512, hop=128)
    assert estimates.shape == (2, 2, 3000) and estimates.dtype == torch.float32
    assert irm_oracle(torch.randn(3, 100), n_fft=512, hop=128).shape == (3, 100)
    with pytest.raises(ValueError, match="stems, time"):
        irm_oracle(torch.randn(100))
