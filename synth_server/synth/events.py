"""MIDI events on FluidSynth's 64-sample block grid, per instrument, as arrays.

``instrument_events`` runs once per song and instrument (``instrument_raw`` then ``grid_events``;
MIDI augmentation changes the raw events in between). Per excerpt, ``note_ends`` and
``earliest_sounding`` tell where rendering must begin so that every note still sounding at the
excerpt start is played from its real onset, and ``stem_events`` cuts out the events of that
render window with numpy, the controller history before it compressed to a replay that leaves
the synth in the same state. The cost of an excerpt does not grow with the length of the song.
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

BEND_KEY = 128            # ``ctl_key`` of a pitch bend; controllers are 0..127
SUSTAIN, SOSTENUTO, RESET_ALL = 64, 66, 121
RPN_MSB, RPN_LSB, NRPN_MSB, DATA_MSB = 101, 100, 99, 6
# Controllers whose effect depends on the ones before them (RPN/NRPN selection, data entry and
# increment) or that reset the others: replayed in full and in order. Every other controller
# (and the pitch bend) only sets its own value, so its last value before the window suffices.
_IN_ORDER = np.array([6, 38, 96, 97, 98, 99, 100, 101, RESET_ALL])
# Controllers that make a note depend on the note before it in FluidSynth (portamento, legato,
# mono mode): a track using them is rendered from the song start (up to the cap).
_NOTE_CHAINING = (65, 68, 84, 126, 127)
_SF2_NRPN = 120           # NRPN MSB of SoundFont generator offsets (envelope, sample offsets)
MIN_NOTE = 0.010          # seconds; FluidSynth's synth.min-note-length delays earlier note-offs
_MARGIN = 2 * BLOCK       # samples added to a note's end bound for FluidSynth's block rounding


class EventError(ValueError):
    """An excerpt with more events than any real song has."""


def to_grid(seconds, sample_rate: int):
    """Nearest multiple of BLOCK to ``seconds`` (absolute sample index); scalars or arrays."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * (sample_rate / BLOCK)).astype(np.int64) * BLOCK


@dataclass(frozen=True)
class InstrumentEvents:
    """One instrument's events on the grid (int64 sample arrays unless said otherwise).

    Notes in onset order: ``on``, ``off``, ``pitch``, ``velocity``, and ``let_go`` (float64): when
    the key and the sustain and sostenuto pedals have all let go (>= ``off``; inf when a pedal
    stays down). Controllers and pitch bends as one stream in time order: ``ctl_time``,
    ``ctl_key`` (controller number, ``BEND_KEY`` for a bend) and ``ctl_value`` (bends 0..16383).
    ``bend_down``: the deepest downward bend in semitones, at the largest bend range the track
    sets. ``chained``: notes depend on earlier notes (portamento, legato, mono mode, SoundFont
    NRPNs), so only a render from the song start is exact.
    """

    on: np.ndarray
    off: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    let_go: np.ndarray
    ctl_time: np.ndarray
    ctl_key: np.ndarray
    ctl_value: np.ndarray
    bend_down: float = 0.0
    chained: bool = False


def _pedals_let_go(off: np.ndarray, t: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per note-off, the first moment at or after it when neither pedal is down, if one was down
    just before it (events at the note-off's own sample come after it); else the note-off.

    Sostenuto counts like sustain (it holds only notes down when it was pressed: an upper bound).
    Reset-all-controllers lifts both pedals, and FluidSynth releases the voices they held.
    """
    pedal = np.isin(key, (SUSTAIN, SOSTENUTO, RESET_ALL))
    t, key, value = t[pedal], key[pedal], value[pedal]
    out = off.astype(np.float64)
    if not len(t):
        return out
    idx = np.arange(len(t))
    down = np.zeros(len(t), bool)
    for number in (SUSTAIN, SOSTENUTO):
        last = np.maximum.accumulate(np.where((key == number) | (key == RESET_ALL), idx, -1))
        at = np.maximum(last, 0)
        down |= (last >= 0) & (key[at] == number) & (value[at] >= 64)
    next_up = np.append(np.minimum.accumulate(np.where(down, np.inf, t)[::-1])[::-1], np.inf)
    j = np.searchsorted(t, off, "left")
    held = (j > 0) & down[np.maximum(j - 1, 0)]
    return np.where(held, next_up[j], out)


def _bend_range(key: np.ndarray, value: np.ndarray) -> int:
    """Largest pitch-bend range (semitones) set through RPN 0 (data entry MSB; FluidSynth ignores
    the LSB); FluidSynth's default is 2."""
    best, rpn, nrpn = 2, (127, 127), False
    family = np.isin(key, _IN_ORDER)
    for k, v in zip(key[family].tolist(), value[family].tolist()):
        if k == RPN_MSB:
            rpn, nrpn = (v, rpn[1]), False
        elif k == RPN_LSB:
            rpn, nrpn = (rpn[0], v), False
        elif k in (98, 99):
            nrpn = True
        elif k == RESET_ALL:
            rpn = (127, 127)
        elif k == DATA_MSB and not nrpn and rpn == (0, 0):
            best = max(best, v)
    return best


@dataclass(frozen=True)
class RawEvents:
    """One instrument's events in seconds, before the grid (MIDI augmentation acts here):
    ``notes`` ``(n, 4)`` [start, end, pitch, velocity] in onset order, ``ctl`` ``(m, 3)`` [time,
    controller or ``BEND_KEY``, value] in time order (controllers before bends at equal times)."""

    notes: np.ndarray
    ctl: np.ndarray


def instrument_raw(inst) -> RawEvents:
    """A pretty_midi Instrument's events in seconds (float64)."""
    notes = np.array([(n.start, n.end, n.pitch, n.velocity) for n in inst.notes], np.float64).reshape(-1, 4)
    notes = notes[np.argsort(notes[:, 0], kind="stable")]
    ccs = [(c.time, c.number, c.value) for c in inst.control_changes]
    ctl = np.array(ccs + [(b.time, BEND_KEY, b.pitch + 8192) for b in inst.pitch_bends], np.float64).reshape(-1, 3)
    return RawEvents(notes, ctl[np.argsort(ctl[:, 0], kind="stable")])


def grid_events(raw: RawEvents, sample_rate: int) -> InstrumentEvents:
    """``RawEvents`` on the grid, with pedal releases, bend depth and note chaining worked out."""
    notes, ctl = raw.notes, raw.ctl
    t, key, value = to_grid(ctl[:, 0], sample_rate), ctl[:, 1].astype(np.int64), ctl[:, 2].astype(np.int64)
    on, off = to_grid(notes[:, 0], sample_rate), to_grid(notes[:, 1], sample_rate)
    bends = value[key == BEND_KEY]
    deepest = (8192 - bends.min()) / 8192 if len(bends) and bends.min() < 8192 else 0.0
    chained = bool(np.isin(key, _NOTE_CHAINING).any() or ((key == NRPN_MSB) & (value == _SF2_NRPN)).any())
    return InstrumentEvents(
        on=on, off=off, pitch=notes[:, 2].astype(np.int64), velocity=notes[:, 3].astype(np.int64),
        let_go=_pedals_let_go(off, t, key, value), ctl_time=t, ctl_key=key, ctl_value=value,
        bend_down=float(deepest * _bend_range(key, value)), chained=chained)


def instrument_events(inst, sample_rate: int) -> InstrumentEvents:
    """Grid events of a pretty_midi Instrument."""
    return grid_events(instrument_raw(inst), sample_rate)


def note_ends(ev: InstrumentEvents, hold_limit: np.ndarray, release: np.ndarray, sample_rate: int) -> np.ndarray:
    """Upper bound of the sample at which each note of ``ev`` has stopped sounding (float64).

    ``hold_limit``/``release``: per MIDI key, seconds a note of the preset can sound from its
    onset and after it is let go (``sf2.PresetTail``). One-shot samples play slower under a
    downward bend, so ``hold_limit`` stretches by the track's deepest one.
    """
    stretch = 2.0 ** (ev.bend_down / 12)
    from_onset = ev.on + hold_limit[ev.pitch] * (sample_rate * stretch)
    after_release = np.maximum(ev.let_go, ev.on + MIN_NOTE * sample_rate) + release[ev.pitch] * sample_rate
    return np.minimum(from_onset, after_release) + _MARGIN


def earliest_sounding(ev: InstrumentEvents, ends: np.ndarray, start: int) -> int:
    """The earliest onset among notes that began before ``start`` and still sound there (``ends``
    from ``note_ends``); ``start`` when there are none, 0 for a ``chained`` track with history."""
    if ev.chained and ((ev.on < start).any() or (ev.ctl_time < start).any()):
        return 0
    n = int(np.searchsorted(ev.on, start, "left"))       # notes are in onset order
    sounding = np.flatnonzero(ends[:n] > start)
    return int(ev.on[sounding[0]]) if len(sounding) else start


def _rows(sample, kind, channel, a, b) -> np.ndarray:
    sample = np.asarray(sample, np.int64)
    n = sample.shape[0]
    return np.stack([sample, np.broadcast_to(kind, n), np.full(n, channel), np.broadcast_to(a, n),
                     np.broadcast_to(b, n)], axis=1).astype(np.int64)


def _control_rows(t, key, value, ch: int) -> np.ndarray:
    bend = key == BEND_KEY
    return _rows(t, np.where(bend, BEND, CONTROL), ch, np.where(bend, 0, key), value)


def _replay(ev: InstrumentEvents, start: int) -> np.ndarray:
    """Indices of the controller stream before ``start`` whose replay, in order, leaves the
    synth channel in the state the whole history does (no voices are sounding then): every
    order-dependent controller, and the last event of each other one."""
    n = int(np.searchsorted(ev.ctl_time, start, "left"))
    key = ev.ctl_key[:n]
    keep = np.isin(key, _IN_ORDER)
    _, last_reversed = np.unique(key[::-1], return_index=True)
    keep[n - 1 - last_reversed] = True
    return np.flatnonzero(keep)


def _channel_events(ev: InstrumentEvents, ch: int, start: int, end: int, restart: bool) -> list[np.ndarray]:
    replay = _replay(ev, start)
    a, b = np.searchsorted(ev.ctl_time, (start, end), "left")
    parts = [_control_rows(np.full(len(replay), start), ev.ctl_key[replay], ev.ctl_value[replay], ch),
             _control_rows(ev.ctl_time[a:b], ev.ctl_key[a:b], ev.ctl_value[a:b], ch)]
    keep = (ev.on >= start) & (ev.on < end)
    if restart:   # keys down at ``start`` strike again there
        keep |= (ev.on < start) & (ev.off > start)
    parts.append(_rows(np.maximum(ev.on[keep], start), NOTE_ON, ch, ev.pitch[keep], ev.velocity[keep]))
    # every note-off in the window, also of notes left out: in FluidSynth a note-off releases
    # all voices of its key, so an earlier note's off can end a later overlapping one
    offs = (ev.off >= start) & (ev.off < end)
    parts.append(_rows(ev.off[offs], NOTE_OFF, ch, ev.pitch[offs], 0))
    return parts


def stem_events(tracks: list[InstrumentEvents], start: int, end: int, restart: bool = False) -> np.ndarray:
    """Events of a render of samples [start, end) of a stem -> ``(n, 5)`` int64 (``COLUMNS``).

    ``tracks[i]`` plays on channel i. ``start`` and ``end`` are multiples of BLOCK. The
    controller and pitch-bend history before ``start`` is replayed at ``start`` (compressed, in
    time order); notes begun before ``start`` are left out (choose ``start`` with
    ``earliest_sounding`` so that none still sounds), or with ``restart`` those whose key is
    still down strike again at ``start``, but their note-offs are kept; events at or after
    ``end`` are dropped. Sorted by
    sample, then note-offs before controls before note-ons, controls in time order.
    """
    parts = [p for ch, ev in enumerate(tracks) for p in _channel_events(ev, ch, start, end, restart)]
    events = np.concatenate(parts) if parts else np.zeros((0, 5), np.int64)
    if len(events) > MAX_EVENTS:
        raise EventError(f"more than {MAX_EVENTS} events in one excerpt")
    order = np.lexsort((_ORDER[events[:, 1]], events[:, 0]))
    return events[order]
