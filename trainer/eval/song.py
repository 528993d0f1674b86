"""Excerpt-level evaluation: several checkpoints on the same excerpts, with baselines.

Per condition (in-distribution timbres; held-out timbres when asked; or the songs of a stems
folder) and per excerpt, each model separates the mixture with ``trainer separate``'s windowed
inference (``separate_waveform``), and every stem is scored (``scores.score_estimates``). The
baselines ``mixture`` (the mixture as every stem's estimate) and ``oracle`` (IRM) are scored on
the same excerpts. The result is one JSON-ready dict (schema in docs/evaluation.md).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..checkpoint import LoadedCheckpoint, load_separator
from ..config import EvalConfig, resolve_device
from ..logging_utils import git_commit
from ..separate import separate_waveform, stem_names
from .material import Excerpt, conditions_of
from .scores import BSS_FRAME_S, METRICS, SILENT_DBFS, museval_version, oracle_estimates, score_estimates, summarise

log = logging.getLogger(__name__)

SCHEMA, SCHEMA_VERSION = "stemstream-eval", 1
BASELINES = ("mixture", "oracle")          # names reserved next to the models' names
GAP_METRICS = ("si_sdr", "sdr")


@dataclass(frozen=True)
class Model:
    """A loaded checkpoint under its display name."""

    name: str
    module: nn.Module
    ckpt: LoadedCheckpoint

    def describe(self) -> dict:
        data = self.ckpt.data
        return {"name": self.name, "checkpoint": str(self.ckpt.path), "step": self.ckpt.step,
                "model_name": data.get("model_name"), "model_config": self.ckpt.model_config.to_dict(),
                "loss": self.ckpt.loss, "commit": data.get("commit", "unknown"),
                "train_config": data.get("train_config", {})}


def model_names(paths: tuple[Path, ...]) -> list[str]:
    """Display names: ``<folder>/<file stem>`` (e.g. ``tiny/last``), ``#k`` appended to repeats."""
    names, seen = [], Counter()
    for path in paths:
        base = f"{Path(path).parent.name}/{Path(path).stem}".lstrip("/")
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def load_models(paths: tuple[Path, ...], device: torch.device) -> list[Model]:
    """Load every checkpoint; ValueError unless they share sample rate and stem names."""
    models = []
    for name, path in zip(model_names(paths), paths):
        module, ckpt = load_separator(path, device)
        stem_names(module, ckpt)
        models.append(Model(name, module, ckpt))
    first = models[0].ckpt.spec
    for m in models[1:]:
        spec = m.ckpt.spec
        if (spec.sample_rate, tuple(spec.stems)) != (first.sample_rate, tuple(first.stems)):
            raise ValueError(f"checkpoints differ: {models[0].name} has {first.sample_rate} Hz {list(first.stems)}, "
                             f"{m.name} has {spec.sample_rate} Hz {list(spec.stems)}; compare models of one geometry")
    return models


def estimates_of(models: list[Model], excerpt: Excerpt, window: int, device: torch.device) -> dict[str, np.ndarray]:
    """Every model's estimate and the IRM oracle of one excerpt: name -> (stems, time) float32."""
    out = {m.name: separate_waveform(m.module, excerpt.mixture, window, device, gain=m.ckpt.gain) for m in models}
    out["oracle"] = oracle_estimates(excerpt.stems.astype(np.float64), excerpt.mixture).astype(np.float32)
    return out


OnExcerpt = Callable[[str, Excerpt, dict, dict], None]


def score_condition(name: str, excerpts: Iterable[Excerpt], models: list[Model], stems: list[str], cfg: EvalConfig,
                    device: torch.device, on_excerpt: OnExcerpt | None = None) -> dict:
    """Score one condition's excerpts: -> ``{"name", "excerpts": [...], "summary": {...}}``.

    ``on_excerpt(condition, excerpt, estimates, scores)`` sees each excerpt's audio once (the
    listening report), so no estimate is kept in memory.
    """
    rows, per_system = [], {m.name: [] for m in models} | {b: [] for b in BASELINES}
    for k, excerpt in enumerate(excerpts):
        t0 = time.perf_counter()
        estimates = estimates_of(models, excerpt, cfg.window, device)
        mixture = np.broadcast_to(excerpt.mixture, excerpt.stems.shape)
        scores = {system: score_estimates(excerpt.stems, estimates[system] if system != "mixture" else mixture,
                                          excerpt.mixture, excerpt.sample_rate, cfg.bss)
                  for system in per_system}
        for system, per_stem in scores.items():
            per_system[system].append(per_stem)
        rows.append(excerpt.describe(stems) | {"scores": {system: dict(zip(stems, per_stem))
                                                          for system, per_stem in scores.items()}})
        if on_excerpt is not None:
            on_excerpt(name, excerpt, estimates, scores)
        log.info("eval %s: excerpt %d %s (%.1f s)", name, k + 1, excerpt.id,
                 time.perf_counter() - t0)
    return {"name": name, "excerpts": rows,
            "summary": {system: summarise(values, stems) for system, values in per_system.items()}}


def timbre_gap(reference: dict, other: dict, systems: list[str]) -> dict:
    """``reference`` minus ``other`` median, per system, stem and ``GAP_METRICS`` (dB; None when
    either side has no value). Positive: the model is worse on ``other``'s timbres."""
    out = {}
    for system in systems:
        out[system] = {}
        for stem, ref in reference["summary"][system].items():
            held = other["summary"][system][stem]
            out[system][stem] = {
                metric: (None if ref.get(metric, {}).get("median") is None or held.get(metric, {}).get("median") is None
                         else round(ref[metric]["median"] - held[metric]["median"], 2))
                for metric in GAP_METRICS}
    return out


def run_song_eval(cfg: EvalConfig, on_excerpt: OnExcerpt | None = None, curve=None) -> dict:
    """Score ``cfg.checkpoints`` on the configured material -> the result dict (docs/evaluation.md);
    ``curve``: CURVE keys for ``cfg.connect``."""
    if cfg.bss:
        from .scores import museval_metrics

        museval_metrics()                          # fail before the long part when museval is missing
    device = resolve_device(cfg.device)
    models = load_models(cfg.checkpoints, device)
    stems = list(models[0].ckpt.spec.stems)
    sample_rate = models[0].ckpt.spec.sample_rate
    counters: Counter = Counter()
    t0 = time.perf_counter()
    material, provenance = conditions_of(cfg, stems, sample_rate, counters, curve)
    conditions = [score_condition(name, excerpts, models, stems, cfg, device, on_excerpt)
                  for name, excerpts in material]
    if len(conditions) == 2:
        conditions[1]["gap_db"] = timbre_gap(conditions[0], conditions[1], [m.name for m in models] + ["oracle"])
    seconds = sum(row["seconds"] for cond in conditions for row in cond["excerpts"])
    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION, "unit": "excerpt",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(Path(__file__).resolve().parent),
        "source": {"corpus": None if cfg.corpus is None else str(cfg.corpus),
                   "stems_dir": None if cfg.stems_dir is None else str(cfg.stems_dir),
                   "split": cfg.split, "seed": cfg.seed, "n": cfg.n, "seconds": cfg.seconds,
                   "soundfont": None if cfg.soundfont is None else str(cfg.soundfont),
                   "holdout_soundfonts": [str(p) for p in cfg.holdout_soundfonts],
                   "connect": cfg.connect, **provenance},
        "sample_rate": sample_rate, "stems": stems, "window": cfg.window,
        "silent_threshold_dbfs": SILENT_DBFS,
        "bss": ({"implementation": f"museval {museval_version()} metrics.bss_eval (v4, images)",
                 "frame_s": BSS_FRAME_S, "hop_s": BSS_FRAME_S, "filters_len": 512,
                 "aggregate": "median over frames per excerpt"} if cfg.bss else None),
        "models": [m.describe() for m in models], "baselines": list(BASELINES),
        "conditions": conditions, "counters": dict(sorted(counters.items())),
        "seconds_scored": round(seconds, 2), "wall_s": round(time.perf_counter() - t0, 2),
    }


def _cell(entry: dict, metric: str) -> str:
    value = entry.get(metric, {}).get("median")
    return f"{value:7.2f}" if value is not None else "    n/a"


def format_table(result: dict) -> str:
    """Text table: per condition, stem and system the median of each metric, then the gaps."""
    metrics = [m for m in METRICS if m in ("si_sdr", "si_sdri") or result["bss"] is not None]
    systems = [m["name"] for m in result["models"]] + list(BASELINES)
    label = {"mixture": "mixture", "oracle": "IRM oracle"}
    width = max(12, *(len(s) for s in systems)) + 2
    src = result["source"]
    what = (f"songs of {src['stems_dir']}" if src["stems_dir"] else
            f"{src['n']} x {src['seconds']:g} s excerpts, split {src['split']!r}, seed {src['seed']}"
            + (f", fixed sets of {src['connect']}" if src.get("connect") else ""))
    lines = [f"median over excerpts (dB) of {what}; BSS-eval: "
             f"{'museval v4, 1 s frames' if result['bss'] else 'off'}"]
    for cond in result["conditions"]:
        lines.append(f"\n[{cond['name']}] {len(cond['excerpts'])} excerpts")
        lines.append(f"{'stem':<9}{'system':<{width}}" + "".join(f"{m.upper():>8}" for m in metrics)
                     + f"{'n':>5}{'skip':>5}")
        for stem in result["stems"]:
            for system in systems:
                entry = cond["summary"][system][stem]
                lines.append(f"{stem:<9}{label.get(system, system):<{width}}"
                             + "".join(f" {_cell(entry, m)}" for m in metrics)
                             + f"{entry['excerpts']:>5}{entry['skipped_silent']:>5}")
        if "gap_db" in cond:
            lines.append("timbre gap (in-distribution minus held-out median, dB; SI-SDR / SDR):")
            for stem in result["stems"]:
                cells = []
                for system in [m["name"] for m in result["models"]] + ["oracle"]:
                    gap = cond["gap_db"][system][stem]
                    cells.append(f"{label.get(system, system)} " + " / ".join(
                        "n/a" if gap[m] is None else f"{gap[m]:+.2f}" for m in GAP_METRICS))
                lines.append(f"  {stem:<9}" + "   ".join(cells))
    lines.append(f"stems below {result['silent_threshold_dbfs']:g} dBFS in an excerpt are skipped (skip column); "
                 f"counters {result['counters']}")
    return "\n".join(lines)


def _finite(value):
    """JSON has no NaN/Infinity: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=1) + "\n")
