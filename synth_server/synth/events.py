"""MIDI events on FluidSynth's 64-sample block grid, per instrument, as arrays.

``instrument_events`` runs once per song and instrument; ``stem_events`` then cuts out the
events of one render window with numpy, so the cost of an excerpt does not grow with the length
of the song.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 64                # FluidSynth's internal block size (samples)
MAX_EVENTS = 500_000      # per excerpt and stem; more is hostile input

# event kinds, and the order of events that share a sample: offs, then controls, then ons
NOTE_OFF, CONTROL, BEND, NOTE_ON = 0, 1, 2, 3
_ORDER = np.array([0, 1, 1, 2])
COLUMNS = ("sample", "kind", "channel", "a", "b")   # a: pitch or controller; b: velocity, value, bend


class EventError(ValueError):
    """An excerpt with more events than any real song has."""


def to_grid(seconds, sample_rate: int):
    """Nearest multiple of BLOCK to ``seconds`` (absolute sample index); scalars or arrays."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * (sample_rate / BLOCK)).astype(np.int64) * BLOCK


@dataclass(frozen=True)
class InstrumentEvents:
    """One instrument's events on the grid: notes ``on``/``off``/``pitch``/``velocity``,
    controllers ``cc_time``/``cc_number``/``cc_value``, pitch bends ``bend_time``/``bend_value``
    (0..16383). Arrays of int64, each group in time order."""

    on: np.ndarray
    off: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    cc_time: np.ndarray
    cc_number: np.ndarray
    cc_value: np.ndarray
    bend_time: np.ndarray
    bend_value: np.ndarray


def instrument_events(inst, sample_rate: int) -> InstrumentEvents:
    """Grid events of a pretty_midi Instrument."""
    notes = np.array([(n.start, n.end, n.pitch, n.velocity) for n in inst.notes], np.float64).reshape(-1, 4)
    ccs = np.array([(c.time, c.number, c.value) for c in inst.control_changes], np.float64).reshape(-1, 3)
    bends = np.array([(b.time, b.pitch) for b in inst.pitch_bends], np.float64).reshape(-1, 2)
    cc_order = np.argsort(ccs[:, 0], kind="stable")
    bend_order = np.argsort(bends[:, 0], kind="stable")
    ccs, bends = ccs[cc_order], bends[bend_order]
    return InstrumentEvents(
        on=to_grid(notes[:, 0], sample_rate), off=to_grid(notes[:, 1], sample_rate),
        pitch=notes[:, 2].astype(np.int64), velocity=notes[:, 3].astype(np.int64),
        cc_time=to_grid(ccs[:, 0], sample_rate), cc_number=ccs[:, 1].astype(np.int64),
        cc_value=ccs[:, 2].astype(np.int64),
        bend_time=to_grid(bends[:, 0], sample_rate), bend_value=bends[:, 1].astype(np.int64) + 8192,
    )


def _rows(sample, kind, channel, a, b) -> np.ndarray:
    sample = np.asarray(sample, np.int64)
    n = sample.shape[0]
    return np.stack([sample, np.full(n, kind), np.full(n, channel), np.broadcast_to(a, n),
                     np.broadcast_to(b, n)], axis=1).astype(np.int64)


def _channel_events(ev: InstrumentEvents, ch: int, start: int, end: int) -> list[np.ndarray]:
    parts = []
    # controller state from before the window: the last value of each controller, at ``start``
    before = ev.cc_time < start
    if before.any():
        numbers, values = ev.cc_number[before][::-1], ev.cc_value[before][::-1]
        uniq, first = np.unique(numbers, return_index=True)       # first in reversed = last in time
        parts.append(_rows(np.full(len(uniq), start), CONTROL, ch, uniq, values[first]))
    inside = (ev.cc_time >= start) & (ev.cc_time < end)
    parts.append(_rows(ev.cc_time[inside], CONTROL, ch, ev.cc_number[inside], ev.cc_value[inside]))
    before = ev.bend_time < start
    if before.any():
        parts.append(_rows([start], BEND, ch, 0, ev.bend_value[before][-1]))
    inside = (ev.bend_time >= start) & (ev.bend_time < end)
    parts.append(_rows(ev.bend_time[inside], BEND, ch, 0, ev.bend_value[inside]))
    # notes sounding in the window; those held across ``start`` restart there
    keep = (ev.off >= start) & (ev.on < end) & ~((ev.off == start) & (ev.on < start))
    on, off, pitch = np.maximum(ev.on[keep], start), ev.off[keep], ev.pitch[keep]
    parts.append(_rows(on, NOTE_ON, ch, pitch, ev.velocity[keep]))
    ends = off < end
    parts.append(_rows(off[ends], NOTE_OFF, ch, pitch[ends], 0))
    return parts


def stem_events(tracks: list[InstrumentEvents], start: int, end: int) -> np.ndarray:
    """Events of a render of samples [start, end) of a stem -> ``(n, 5)`` int64 (``COLUMNS``).

    ``tracks[i]`` plays on channel i. ``start`` and ``end`` are multiples of BLOCK. Controller
    and pitch-bend state from before ``start`` is replayed at ``start``; notes sounding at
    ``start`` restart there; events at or after ``end`` are dropped. Sorted by sample, then
    note-offs before controls before note-ons.
    """
    parts = [p for ch, ev in enumerate(tracks) for p in _channel_events(ev, ch, start, end)]
    events = np.concatenate(parts) if parts else np.zeros((0, 5), np.int64)
    if len(events) > MAX_EVENTS:
        raise EventError(f"more than {MAX_EVENTS} events in one excerpt")
    order = np.lexsort((_ORDER[events[:, 1]], events[:, 0]))
    return events[order]
