"""Deliberate stem levels: each stem's RMS over the excerpt brought to a target plus its offset.

Without it a stem's level is whatever the soundfont and the song's velocities give (drums are
usually the quietest); with it, which stem is loudest is itself drawn. Silent stems keep gain 1.
"""
from __future__ import annotations

import numpy as np

from synth_server.augment_config import LevelKnob

_SILENT_RMS = 1e-7   # -140 dBFS: nothing to scale


def level_gains_db(stems: np.ndarray, knob: LevelKnob, offsets_db: list[float]) -> np.ndarray:
    """Gains (dB) that bring each stem of ``stems`` ``(stems, time)`` to ``target_db + offset``
    dBFS RMS, at most ``max_boost_db``; 0 for silent stems. ``(stems,)`` float64."""
    power = np.einsum("st,st->s", stems, stems, dtype=np.float64) / max(stems.shape[1], 1)
    rms = np.sqrt(power)
    want = knob.target_db + np.asarray(offsets_db, np.float64)
    gains = np.where(rms > _SILENT_RMS, want - 20 * np.log10(np.maximum(rms, _SILENT_RMS)), 0.0)
    return np.minimum(gains, knob.max_boost_db)


def apply_gains(stems: np.ndarray, gains_db: np.ndarray) -> None:
    """Scale each stem of ``stems`` ``(stems, time)`` float32 in place by its gain."""
    stems *= (10.0 ** (gains_db / 20.0)).astype(np.float32)[:, None]
