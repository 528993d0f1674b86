"""Excerpts from a running server (``trainer eval --connect``): its fixed sets, no FluidSynth here.

The in-distribution condition is the fixed set of ``(split, n, seconds, seed)``; with
``holdout_timbres`` also the server's held-out-timbre version of it (same songs and first
samples, voiced by its held-out soundfonts), so both are scored and compared exactly as
excerpts rendered here. The server's stems must be the checkpoints' (any order) at their rate.
"""
from __future__ import annotations

from synth_server.fixed_set import FixedSet, fetch_fixed_set

from ..config import EvalConfig
from .material import Conditions, Excerpt, excerpt_id, voiced_by

CONDITIONS = (("in-distribution", "default"), ("held-out timbre", "holdout"))


def fixed_set_excerpts(fs: FixedSet, stems: list[str], sample_rate: int) -> list[Excerpt]:
    """One ``Excerpt`` per item of ``fs``, stems in the order ``stems`` (the checkpoints'), the
    mixture their sum. ValueError when the set does not fit the checkpoints."""
    if set(fs.stem_names) != set(stems) or fs.sample_rate != sample_rate:
        raise ValueError(f"the server's fixed set has stems {list(fs.stem_names)} at {fs.sample_rate} Hz; the "
                         f"checkpoints separate {stems} at {sample_rate} Hz")
    order = [fs.stem_names.index(name) for name in stems]
    return [Excerpt(id=excerpt_id(e["song"], e["offset"], fs.sample_rate), song=e["song"], path=e["path"],
                    start=e["offset"], sample_rate=fs.sample_rate, stems=fs.stems[k, order],
                    mixture=fs.stems[k].sum(0), soundfont=voiced_by(e.get("soundfonts", [])))
            for k, e in enumerate(fs.excerpts)]


def served_conditions(cfg: EvalConfig, stems: list[str], sample_rate: int, curve=None) -> tuple[Conditions, dict]:
    """``([(condition, excerpts)], "source" fields: the server's config and each set's digest)``.

    Raises ValueError (a refusal, e.g. held-out timbres from a server without held-out
    soundfonts, or a set that does not fit) and TimeoutError (no answer within ``cfg.timeout``).
    """
    wanted = CONDITIONS if cfg.holdout_timbres else CONDITIONS[:1]
    conditions, digests, server = [], {}, {}
    for name, timbres in wanted:
        fs = fetch_fixed_set(cfg.connect, cfg.split, cfg.n, cfg.seconds, cfg.seed, timbres=timbres,
                             timeout=cfg.timeout, curve=curve)
        conditions.append((name, fixed_set_excerpts(fs, stems, sample_rate)))
        digests[name], server = fs.digest, fs.server
    return conditions, {"fixed_sets": digests, "server": server}
