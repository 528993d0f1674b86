"""Per-stem audio effects with Spotify's pedalboard, from a drawn chain (``augment.draw_effects``).

A chain is processed over the whole render of a stem, pre-roll included, so the effects' state at
the excerpt start comes from the real preceding audio and tails run on continuously through every
chunk cut from the excerpt. A silent stem is not processed (it stays exactly silent).
"""
from __future__ import annotations

import numpy as np

from synth_server.synth.augment import Effect


def _plugins(name: str, p: dict) -> list:
    import pedalboard as pb

    if name == "eq":
        return [pb.LowShelfFilter(p["low_hz"], _gain(p, "low"), 0.707),
                pb.PeakFilter(p["mid_hz"], _gain(p, "mid"), p["q"]),
                pb.HighShelfFilter(p["high_hz"], _gain(p, "high"), 0.707)]
    if name == "compressor":
        return [pb.Compressor(threshold_db=p["threshold_db"], ratio=p["ratio"], attack_ms=p["attack_ms"],
                              release_ms=p["release_ms"])]
    if name == "distortion":
        return [pb.Distortion(drive_db=p["drive_db"])]
    if name == "chorus":
        return [pb.Chorus(rate_hz=p["rate_hz"], depth=p["depth"], mix=p["mix"])]
    if name == "reverb":
        wet = p["wet_level"]
        return [pb.Reverb(room_size=p["room_size"], damping=p["damping"], wet_level=wet, dry_level=1.0 - wet,
                          width=p["width"])]
    raise ValueError(f"unknown effect {name!r}")


def _gain(p: dict, band: str) -> float:
    """EQ band gains: one drawn ``gain_db`` spread as +g, -g/2, +g/2 over low, mid, high (a tilt
    and a bump rather than three independent draws, which mostly cancel)."""
    g = p["gain_db"]
    return {"low": g, "mid": -g / 2, "high": g / 2}[band]


def apply_chain(wave: np.ndarray, chain: list[Effect], sample_rate: int) -> np.ndarray:
    """``wave`` ``(time,)`` float32 through ``chain`` -> ``(time,)`` float32 (the same array when the
    chain is empty or the wave silent)."""
    if not chain or not wave.any():
        return wave
    import pedalboard as pb

    board = pb.Pedalboard([plugin for name, params in chain for plugin in _plugins(name, params)])
    out = board(wave[None, :], float(sample_rate), reset=True)[0]
    if out.shape != wave.shape:
        raise RuntimeError(f"effect chain changed the length {wave.shape} -> {out.shape}")
    return np.ascontiguousarray(out, dtype=np.float32)
