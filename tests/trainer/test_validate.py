"""Validation figures on a fixed set, and bf16 autocast against fp32 with gain staging."""
import numpy as np
import pytest
import torch
from torch import nn

from synth_server.fixed_set import FixedSet, FixedSetKey
from trainer.gain import GainStaging, apply_separator
from trainer.models import build_model, preset
from trainer.validate import Validator, excerpt_scores, summarise_scores

NAMES = ("drums", "piano", "strings", "bass")


class QuarterMixture(nn.Module):
    """Each stem estimate = mixture / 4 over the centre: SI-SDRi exactly 0 (a scaled mixture)."""

    context = 5

    def forward(self, x, target):
        return (x[..., self.context:self.context + target] / 4).expand(-1, 4, -1)


class Oracle(nn.Module):
    """Returns the true stems of the excerpt it is fed (found by its mixture): a perfect separator."""

    context = 5

    def __init__(self, stems):
        super().__init__()
        self.stems = stems

    def forward(self, x, target):
        centre = x[0, 0, self.context:self.context + self.stems.shape[-1]]
        mixtures = self.stems.sum(dim=1)
        item = int((mixtures - centre).abs().sum(dim=-1).argmin())
        scale = centre.pow(2).sum().sqrt() / mixtures[item].pow(2).sum().sqrt()
        return self.stems[item:item + 1, :, :target] * scale


def fixed(stems):
    key = FixedSetKey("valid", len(stems), stems.shape[-1] / 1000, 0)
    return FixedSet(key, stems.numpy(), [{"song": "s", "path": "s.mid", "offset": 0}] * len(stems), NAMES, 1000, "d")


def test_scaled_mixture_scores_zero_and_oracle_scores_high():
    torch.manual_seed(0)
    stems = torch.randn(2, 4, 400)
    stems[1, 3] = 0.0                                               # bass silent in item 1: left out
    scores = excerpt_scores(QuarterMixture(), stems, GainStaging(), torch.device("cpu"))
    assert scores["model"].shape == (2, 4) and not scores["active"][1, 3]
    figures = summarise_scores(scores, NAMES)
    assert abs(figures["valid_sisdri"]) < 1e-6 and abs(figures["valid_sisdri_bass"]) < 1e-6
    validator = Validator(fixed(stems), NAMES)
    oracle, improved = validator(Oracle(stems), GainStaging(mode="none"), torch.device("cpu"))
    assert improved and oracle["valid_sisdri"] > 50 and validator.best == oracle["valid_sisdri"]
    _, again = validator(QuarterMixture(), GainStaging(), torch.device("cpu"))
    assert not again
    with pytest.raises(ValueError, match="stems"):
        Validator(fixed(stems), ("a", "b", "c", "d"))


def _snr(estimate, reference):
    return (10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum())).item()


def _bf16_vs_fp32(model, mixture, gain, target):
    with torch.no_grad():
        reference = apply_separator(model, mixture, target, gain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            estimate = apply_separator(model, mixture, target, gain).float()
    return _snr(estimate, reference)


@pytest.mark.slow
def test_seed_bf16_matches_fp32_with_gain_staging_at_init_and_after_training(real_chunks):
    torch.manual_seed(0)
    model = build_model(preset("seed")).eval()
    stems = torch.from_numpy(real_chunks[:2])
    mixture = stems[:1].sum(dim=1, keepdim=True)    # one chunk: bf16 is emulated, 30x slower, on CPUs without it
    staged = _bf16_vs_fp32(model, mixture, GainStaging(), 4410)
    raw = _bf16_vs_fp32(model, mixture, GainStaging(mode="none"), 4410)
    assert staged >= 35.0 and staged > raw + 2.0, (staged, raw)
    # a few Adam steps at a high rate move the weights well away from init
    from trainer.losses import get_loss
    from trainer.step import StepRunner

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    crop = stems[..., 4096 - 4095:4096 + 256 + 4095]                # target 256 with the seed's context
    runner = StepRunner(model, opt, get_loss("mae", balance=True), context=4095, target=256)
    for _ in range(8):
        runner(crop)
    model.eval()
    assert _bf16_vs_fp32(model, mixture, GainStaging(), 4410) >= 35.0
