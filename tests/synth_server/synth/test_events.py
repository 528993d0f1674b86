"""Grid events: controller history replayed in time order, pedals, where an excerpt's render begins."""
import numpy as np
import pretty_midi

from synth_server.synth.events import (BEND, BLOCK, CONTROL, NOTE_OFF, NOTE_ON, earliest_sounding,
                                       instrument_events, note_ends, stem_events, to_grid)

SR = 44100


def instrument(notes=(), ccs=(), bends=(), program=0):
    """notes: (pitch, start, end); ccs: (number, value, time); bends: (value -8192..8191, time)."""
    inst = pretty_midi.Instrument(program)
    inst.notes += [pretty_midi.Note(100, p, a, b) for p, a, b in notes]
    inst.control_changes += [pretty_midi.ControlChange(n, v, t) for n, v, t in ccs]
    inst.pitch_bends += [pretty_midi.PitchBend(v, t) for v, t in bends]
    return inst


def at(events, sample):
    return [(k, a, b) for t, k, ch, a, b in events.tolist() if t == sample]


def test_history_replays_in_time_order_with_order_dependent_controllers_in_full():
    inst = instrument(ccs=[(11, 40, 0.1), (7, 90, 0.12), (121, 0, 0.2), (11, 70, 0.3), (7, 100, 0.35),
                           (101, 0, 0.4), (100, 0, 0.41), (6, 12, 0.42), (11, 50, 0.5), (121, 0, 0.6),
                           (6, 5, 0.9)],
                      bends=[(1000, 0.55), (2000, 0.7)], notes=[(60, 2.5, 2.9)])
    start = int(to_grid(2.0, SR))
    replay = at(stem_events([instrument_events(inst, SR)], start, start + SR), start)
    # plain controllers and the bend keep only their last value, in its place in time
    assert replay == [(CONTROL, 121, 0), (CONTROL, 7, 100), (CONTROL, 101, 0), (CONTROL, 100, 0), (CONTROL, 6, 12),
                      (CONTROL, 11, 50), (CONTROL, 121, 0), (BEND, 0, 2000 + 8192), (CONTROL, 6, 5)]


def test_controller_and_bend_order_survives_a_reset_between_them():
    """A bend before a reset-all-controllers is undone by it; the replay must not put it after."""
    inst = instrument(ccs=[(121, 0, 0.5)], bends=[(4000, 0.2)], notes=[(60, 1.5, 1.9)])
    start = int(to_grid(1.0, SR))
    assert at(stem_events([instrument_events(inst, SR)], start, start + SR), start) == [
        (BEND, 0, 4000 + 8192), (CONTROL, 121, 0)]


def test_window_events_are_cut_and_sorted():
    inst = instrument(notes=[(60, 2.5, 2.9), (62, 1.5, 2.2), (64, 0.5, 1.0)], ccs=[(7, 20, 2.6)])
    start, end = int(to_grid(2.0, SR)), int(to_grid(3.0, SR))
    events = stem_events([instrument_events(inst, SR)], start, end)
    assert all(t % BLOCK == 0 for t in events[:, 0])
    # the note begun before the start is left out, but its note-off stays (it would release
    # a later note of the same key)
    assert [(k, a) for t, k, ch, a, b in events.tolist()] == [
        (NOTE_OFF, 62), (NOTE_ON, 60), (CONTROL, 7), (NOTE_OFF, 60)]
    restarted = stem_events([instrument_events(inst, SR)], start, end, restart=True)
    assert at(restarted, start) == [(NOTE_ON, 62, 100)]


def test_sustain_and_sostenuto_hold_notes_until_both_pedals_let_go():
    inst = instrument(notes=[(60, 0.0, 0.5), (62, 0.0, 1.5), (64, 2.0, 2.5), (65, 3.0, 3.2), (67, 4.0, 4.2)],
                      ccs=[(64, 127, 0.2), (66, 100, 0.8), (64, 0, 1.0), (66, 0, 1.8),
                           (64, 127, 2.2), (121, 0, 2.7), (64, 127, 4.0), (64, 0, 4.2)])
    ev = instrument_events(inst, SR)
    g = lambda s: float(to_grid(s, SR))  # noqa: E731
    assert list(ev.let_go) == [g(1.8), g(1.8), g(2.7), g(3.2), g(4.2)]


def test_a_pedal_never_lifted_holds_forever():
    ev = instrument_events(instrument(notes=[(60, 0.0, 0.5)], ccs=[(64, 127, 0.1)]), SR)
    assert np.isinf(ev.let_go[0])


def test_render_begins_at_the_earliest_note_still_sounding():
    inst = instrument(notes=[(60, 0.0, 0.4), (62, 1.0, 3.5), (64, 2.0, 2.8), (65, 4.5, 5.0)])
    ev = instrument_events(inst, SR)
    hold, release = np.full(128, np.inf), np.full(128, 0.5)
    ends = note_ends(ev, hold, release, SR)
    assert earliest_sounding(ev, ends, int(to_grid(3.0, SR))) == to_grid(1.0, SR)
    assert earliest_sounding(ev, ends, int(to_grid(3.9, SR))) == to_grid(1.0, SR)   # in its release
    assert earliest_sounding(ev, ends, int(to_grid(4.2, SR))) == to_grid(4.2, SR)   # nothing sounds
    # a one-shot sample that stops after 0.3 s no longer sounds, whatever its key does
    short = note_ends(ev, np.full(128, 0.3), release, SR)
    assert earliest_sounding(ev, short, int(to_grid(3.0, SR))) == to_grid(3.0, SR)


def test_a_downward_bend_stretches_one_shot_samples():
    plain = instrument_events(instrument(notes=[(60, 0.0, 0.1)]), SR)
    ranged = instrument_events(instrument(notes=[(60, 0.0, 0.1)], bends=[(-8192, 0.05)],
                                          ccs=[(101, 0, 0.0), (100, 0, 0.0), (6, 12, 0.0)]), SR)
    assert plain.bend_down == 0 and ranged.bend_down == 12
    hold, release = np.full(128, 1.0), np.full(128, 10.0)
    assert note_ends(ranged, hold, release, SR)[0] - note_ends(plain, hold, release, SR)[0] == SR


def test_portamento_tracks_need_the_whole_history():
    ev = instrument_events(instrument(notes=[(60, 0.0, 0.4), (62, 3.0, 3.5)], ccs=[(65, 127, 0.0)]), SR)
    assert ev.chained
    assert earliest_sounding(ev, note_ends(ev, np.zeros(128), np.zeros(128), SR), SR * 2) == 0
