"""Scores of one excerpt: SI-SDR, SI-SDRi and BSS-eval v4 SDR/SIR/SAR per stem, and their summaries.

BSS-eval is museval's own implementation (the code of SiSEC 2018 and the MUSDB18 leaderboards)
called with ``museval.evaluate``'s settings: ``bss_eval_images`` variant, distortion filters of
512 taps computed once over the whole excerpt (v4), criteria on 1 s frames with 1 s hop, no
permutation; a stem's figure is the median over its frames (NaN frames left out), as
SiSEC/MUSDB report it. museval sets a frame to NaN when any reference or estimate in it is
exactly zero. Stems whose reference is below ``SILENT_DBFS`` over the excerpt are not scored
(SI-SDR and SDR against silence are meaningless, museval refuses them) and are counted.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..metrics import irm_oracle, si_sdr

SILENT_DBFS = -60.0         # reference RMS over the excerpt below this: the stem is not scored
BSS_FRAME_S = 1.0           # museval / SiSEC frame and hop, seconds
METRICS = ("si_sdr", "si_sdri", "sdr", "sir", "sar")
BSS_METRICS = ("sdr", "sir", "sar")


@functools.cache
def museval_metrics():
    """museval's ``metrics`` module (BSS-eval v4), loaded from its file without ``import museval``.

    ``import museval`` runs the package's ``__init__``, which imports musdb -> stempeg, and
    stempeg raises at import when no ffmpeg binary is installed. ``museval/metrics.py`` itself
    needs only numpy and scipy. Loading that one file keeps the exact reference code while the
    trainer image needs no ffmpeg (~100 MB of codecs for an audio decoder eval never calls) and
    works the same whether or not ffmpeg happens to be present.
    """
    spec = importlib.util.find_spec("museval")       # locates the package; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("BSS-eval needs museval: pip install museval (or use --bss off)")
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("_stemstream_museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def museval_version() -> str:
    return importlib.metadata.version("museval")


def rms_dbfs(x: np.ndarray) -> np.ndarray:
    """RMS in dBFS over the last axis: (..., time) -> (...), floored at -200."""
    power = np.mean(np.square(x, dtype=np.float64), axis=-1)
    return 10 * np.log10(np.maximum(power, 1e-20))


def bss_eval_v4(references: np.ndarray, estimates: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """BSS-eval v4 with museval's settings: references, estimates (sources, time) ->
    ``{"sdr", "sir", "sar"}`` each (sources,) median over 1 s frames, plus ``"frames"``
    (sources,) the number of frames that were scored (NaN medians when none was)."""
    win = int(round(BSS_FRAME_S * sample_rate))
    sdr, _isr, sir, sar, _perm = museval_metrics().bss_eval(
        np.asarray(references, np.float64)[..., None], np.asarray(estimates, np.float64)[..., None],
        window=win, hop=win, compute_permutation=False, framewise_filters=False,
        bsseval_sources_version=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN rows: no frame scored
        out = {name: np.nanmedian(v, axis=1) for name, v in (("sdr", sdr), ("sir", sir), ("sar", sar))}
    out["frames"] = np.sum(~np.isnan(sdr), axis=1)
    return out


def oracle_estimates(references: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """IRM oracle (magnitude ratio mask, STFT 2048/512) of ``references`` (stems, time) applied to
    ``mixture`` (time,). When the mixture holds more than the stems (real songs with sources
    outside our classes), that rest is one more source of the mask and is then dropped."""
    rest = np.asarray(mixture, np.float64) - references.sum(0)
    sources = np.concatenate([references, rest[None]]) if np.any(rest) else references
    return irm_oracle(torch.from_numpy(np.asarray(sources, np.float64))).numpy()[:len(references)]


def score_estimates(references: np.ndarray, estimates: np.ndarray, mixture: np.ndarray,
                    sample_rate: int, bss: bool = True) -> list[dict | None]:
    """Scores of one estimate set: references, estimates (stems, time), mixture (time,) -> one
    entry per stem: None for a silent reference, else ``{"si_sdr", "si_sdri"}`` (dB) plus, with
    ``bss``, ``{"sdr", "sir", "sar"}`` (dB, None when no frame could be scored) and
    ``bss_frames``. BSS-eval sees only the scored stems (a silent source makes museval NaN
    every frame)."""
    references = np.asarray(references, np.float64)
    estimates = np.asarray(estimates, np.float64)
    if references.shape != estimates.shape or references.shape[-1] != len(mixture):
        raise ValueError(f"references {references.shape}, estimates {estimates.shape} and mixture "
                         f"{np.shape(mixture)} do not line up")
    active = rms_dbfs(references) >= SILENT_DBFS
    ref_t = torch.from_numpy(references)
    model = si_sdr(torch.from_numpy(estimates), ref_t).numpy()
    floor = si_sdr(torch.from_numpy(np.asarray(mixture, np.float64)).expand_as(ref_t), ref_t).numpy()
    out: list[dict | None] = [None] * len(references)
    for i in np.flatnonzero(active):
        out[i] = {"si_sdr": float(model[i]), "si_sdri": float(model[i] - floor[i])}
    if bss and active.any():
        figures = bss_eval_v4(references[active], estimates[active], sample_rate)
        for k, i in enumerate(np.flatnonzero(active)):
            for name in BSS_METRICS:
                value = float(figures[name][k])
                out[i][name] = value if math.isfinite(value) else None
            out[i]["bss_frames"] = int(figures["frames"][k])
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    """Median and mean rounded to 0.01 dB (None when empty); +inf (a perfect frame) stays out of
    the mean."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"median": None, "mean": None}
    return {"median": round(float(np.median(finite)), 2), "mean": round(float(np.mean(finite)), 2)}


def summarise(per_excerpt: list[list[dict | None]], stems: list[str]) -> dict[str, dict]:
    """Per stem over the excerpts: ``excerpts`` scored, ``skipped_silent`` and median/mean of
    every metric present. ``per_excerpt[e][s]`` is ``score_estimates``' entry for stem s."""
    out = {}
    for s, name in enumerate(stems):
        rows = [row[s] for row in per_excerpt if row[s] is not None]
        entry = {"excerpts": len(rows), "skipped_silent": len(per_excerpt) - len(rows)}
        for metric in METRICS:
            if any(metric in row for row in rows):
                entry[metric] = _stats([row.get(metric) for row in rows])
        out[name] = entry
    return out
