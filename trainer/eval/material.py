"""What the excerpt-level evaluation scores: ``Excerpt``s, grouped into named conditions.

``conditions_of`` picks the source: excerpts rendered here from a MIDI corpus (``excerpts``,
FluidSynth), the songs of a stems folder (``stems_dir``) or a running server's fixed sets
(``served``, no FluidSynth). Each source is imported only when chosen, so ``--connect`` never
loads the synthesis code.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sized
from dataclasses import dataclass

import numpy as np

from ..config import EvalConfig
from .scores import rms_dbfs


@dataclass(frozen=True)
class Excerpt:
    """One scored excerpt. ``stems`` (stems, time) float32 references in class order; ``mixture``
    (time,) float32: their sum for rendered excerpts, the song's mix for real multitracks (it may
    hold sources outside the classes). ``start`` in samples of the song; ``soundfont``: the
    soundfont names that voiced it ("+"-joined when the stems differ)."""

    id: str
    song: str
    path: str
    start: int
    sample_rate: int
    stems: np.ndarray
    mixture: np.ndarray
    soundfont: str | None = None

    def describe(self, stem_names: list[str]) -> dict:
        """JSON-ready description (no audio)."""
        return {"id": self.id, "song": self.song, "path": self.path,
                "start_s": round(self.start / self.sample_rate, 3),
                "seconds": round(self.stems.shape[-1] / self.sample_rate, 3), "soundfont": self.soundfont,
                "rms_dbfs": {n: round(float(v), 2) for n, v in zip(stem_names, rms_dbfs(self.stems))},
                "mixture_rms_dbfs": round(float(rms_dbfs(self.mixture)), 2)}


def excerpt_id(song: str, start: int, sample_rate: int) -> str:
    """``<song id>@<start in s>``: the same excerpt has the same id whoever rendered it."""
    return f"{song}@{start / sample_rate:.2f}"


def voiced_by(names: list[str]) -> str | None:
    """One soundfont label for an excerpt whose stems were voiced by ``names``."""
    return "+".join(dict.fromkeys(names)) or None


Conditions = list[tuple[str, Sized]]


def conditions_of(cfg: EvalConfig, stems: list[str], sample_rate: int, counters: Counter,
                  curve=None) -> tuple[Conditions, dict]:
    """The material: ``([(condition name, excerpts)], extra "source" fields for the result)``."""
    if cfg.connect is not None:
        from .served import served_conditions

        return served_conditions(cfg, stems, sample_rate, curve)
    from .chunks import classes_for

    if cfg.stems_dir is not None:
        from .stems_dir import StemsDir

        return [("stems-dir", StemsDir(cfg.stems_dir, classes_for(stems), sample_rate, cfg.stems_map,
                                       cfg.exclude_other, counters, cfg.n))], {}
    from synth_server.synth.soundfont import find_soundfonts

    from .excerpts import corpus_excerpts

    held = [p for spec in cfg.holdout_soundfonts for p in find_soundfonts(spec)]     # SoundfontError: exit 2
    sets = corpus_excerpts(cfg.corpus, classes_for(stems), cfg.split, cfg.n, cfg.seconds, cfg.seed,
                           sample_rate, cfg.soundfont, held, counters)
    return list(zip(("in-distribution", "held-out timbre"), sets)), {"holdout_files": [str(p) for p in held]}
