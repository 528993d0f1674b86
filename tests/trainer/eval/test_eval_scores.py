"""Scores: museval's BSS-eval v4 loaded without ffmpeg, SDR/SIR facts on known mixtures, silent stems."""
import subprocess
import sys

import numpy as np
import pytest

from trainer.eval.scores import (SILENT_DBFS, bss_eval_v4, museval_metrics, oracle_estimates, score_estimates,
                                 summarise)

RATE = 8000


def noises(count: int, seconds: float, seed: int = 0) -> np.ndarray:
    return 0.05 * np.random.default_rng(seed).standard_normal((count, int(seconds * RATE)))


def test_museval_metrics_load_without_the_package_import_chain():
    code = ("import sys; from trainer.eval.scores import museval_metrics; m = museval_metrics(); "
            "assert callable(m.bss_eval); print(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('museval', 'musdb', 'stempeg')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"          # musdb/stempeg (ffmpeg check) never imported


def test_sdr_and_sir_follow_the_noise_and_the_leak():
    refs = noises(3, 4.0)
    noise = noises(3, 4.0, seed=1)
    # estimate 0: reference + noise 20 dB down (artifacts); estimate 1: reference + source 2 at -20 dB
    est = refs.copy()
    est[0] += 0.1 * noise[0]
    est[1] += 0.1 * refs[2]
    figures = bss_eval_v4(refs, est, RATE)
    assert figures["frames"].tolist() == [4, 4, 4]
    assert figures["sdr"][0] == pytest.approx(20, abs=1.0) and figures["sar"][0] == pytest.approx(20, abs=1.0)
    assert figures["sir"][0] > 30                       # noise barely projects onto the other sources
    assert figures["sir"][1] == pytest.approx(20, abs=1.0) and figures["sdr"][1] == pytest.approx(20, abs=1.0)
    assert figures["sdr"][2] > 60                       # exact estimate
    assert museval_metrics().bss_eval(refs[..., None], est[..., None], window=RATE, hop=RATE)[0].shape == (3, 4)


def test_silent_stems_are_not_scored_and_the_others_are():
    refs = noises(3, 2.0)
    refs[1] = 10 ** (SILENT_DBFS / 20) / 10 * np.sign(refs[1])    # 20 dB below the threshold
    mixture = refs.sum(0)
    est = refs + 0.1 * noises(3, 2.0, seed=2)
    scores = score_estimates(refs, est, mixture, RATE)
    assert scores[1] is None
    for s in (0, 2):
        assert scores[s]["si_sdr"] == pytest.approx(20, abs=1.0)
        assert scores[s]["sdr"] == pytest.approx(20, abs=1.5) and scores[s]["bss_frames"] == 2
        assert scores[s]["si_sdri"] > 20                 # the mixture of 2 equal noises is ~0 dB
    no_bss = score_estimates(refs, est, mixture, RATE, bss=False)
    assert set(no_bss[0]) == {"si_sdr", "si_sdri"}
    summary = summarise([scores, no_bss], ["a", "b", "c"])
    assert summary["b"] == {"excerpts": 0, "skipped_silent": 2}
    assert summary["a"]["excerpts"] == 2 and summary["a"]["sdr"]["median"] == pytest.approx(scores[0]["sdr"], abs=0.01)


def test_oracle_treats_sources_outside_the_stems_as_one_more_source():
    refs = noises(2, 2.0)
    rest = noises(1, 2.0, seed=3)[0]
    with_rest = oracle_estimates(refs, refs.sum(0) + rest)
    scores = score_estimates(refs, with_rest, refs.sum(0) + rest, RATE, bss=False)
    assert with_rest.shape == refs.shape
    assert all(s["si_sdri"] > 3 for s in scores)
