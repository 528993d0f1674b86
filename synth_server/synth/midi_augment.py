"""MIDI-level augmentation on seconds-level events, before the 64-sample grid.

Transposition (pitched stems only, the same for all), tempo (every time divided by the factor),
velocity curve and per-note timing jitter act on ``events.RawEvents`` arrays with numpy, so an
excerpt costs no Python loop over the song's notes. The grid comes after (``events.grid_events``),
so every stem stays sample-aligned.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from synth_server.synth.augment import MidiDraw
from synth_server.synth.events import RawEvents


def _velocity(v: np.ndarray, draw: MidiDraw) -> np.ndarray:
    curved = 127.0 * draw.velocity_scale * (v / 127.0) ** draw.velocity_gamma
    return np.clip(np.rint(curved), 1, 127)


def augment_instrument(ev: RawEvents, is_drum: bool, draw: MidiDraw, rng: np.random.Generator | None) -> RawEvents:
    """One instrument's raw events (seconds) with ``draw`` applied; ``rng`` for jitter."""
    notes, ctl = ev.notes.copy(), ev.ctl
    if draw.jitter_ms > 0 and rng is not None and len(notes):
        sigma = draw.jitter_ms / 1000.0
        shift = np.clip(rng.normal(0.0, sigma, len(notes)), -3 * sigma, 3 * sigma)
        notes[:, :2] = np.maximum(notes[:, :2] + shift[:, None], 0.0)
        notes = notes[np.argsort(notes[:, 0], kind="stable")]      # notes stay in onset order
    if draw.transpose and not is_drum:
        notes[:, 2] += draw.transpose
        notes = notes[(notes[:, 2] >= 0) & (notes[:, 2] <= 127)]  # notes moved off the keyboard are dropped
    if draw.velocity_scale != 1.0 or draw.velocity_gamma != 1.0:
        notes[:, 3] = _velocity(notes[:, 3], draw)
    if draw.tempo != 1.0:
        notes[:, :2] /= draw.tempo
        ctl = ctl.copy()
        ctl[:, 0] /= draw.tempo
    return dataclasses.replace(ev, notes=notes, ctl=ctl)


def apply(tracks: list[list[RawEvents]], drums: list[bool], draw: MidiDraw) -> list[list[RawEvents]]:
    """Per stem (``drums[i]``: stem i is a drum stem), its instruments' events with ``draw`` applied."""
    if draw.identity:
        return tracks
    rng = np.random.default_rng(draw.jitter_seed) if draw.jitter_ms > 0 else None
    return [[augment_instrument(ev, drum, draw, rng) for ev in insts] for insts, drum in zip(tracks, drums)]
