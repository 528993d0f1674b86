"""MIDI-level augmentation on raw events in seconds (before the grid)."""
import numpy as np
import pretty_midi

from synth_server.synth.augment import MidiDraw
from synth_server.synth.events import BEND_KEY, instrument_raw
from synth_server.synth.midi_augment import apply, augment_instrument


def instrument(drum=False):
    inst = pretty_midi.Instrument(0, is_drum=drum)
    inst.notes = [pretty_midi.Note(v, p, t, t + 0.2) for v, p, t in [(20, 0, 0.0), (64, 60, 0.5), (127, 125, 1.0)]]
    inst.control_changes = [pretty_midi.ControlChange(7, 100, 0.75)]
    inst.pitch_bends = [pretty_midi.PitchBend(500, 1.25)]
    return instrument_raw(inst)


def test_identity_returns_the_same_tracks():
    tracks = [[instrument()]]
    assert apply(tracks, [False], MidiDraw()) is tracks


def test_transpose_pitched_only_and_drop_notes_off_the_keyboard():
    up = augment_instrument(instrument(), False, MidiDraw(transpose=4), None)
    assert up.notes[:, 2].tolist() == [4, 64] and up.notes[:, 0].tolist() == [0.0, 0.5]   # 125 + 4 > 127
    down = augment_instrument(instrument(), False, MidiDraw(transpose=-2), None)
    assert down.notes[:, 2].tolist() == [58, 123]
    drums = augment_instrument(instrument(True), True, MidiDraw(transpose=4), None)
    assert drums.notes[:, 2].tolist() == [0, 60, 125]
    assert instrument().notes[:, 2].tolist() == [0, 60, 125]                              # input untouched


def test_tempo_divides_every_time():
    ev = augment_instrument(instrument(), False, MidiDraw(tempo=1.25), None)
    np.testing.assert_allclose(ev.notes[:, 0], [0.0, 0.4, 0.8])
    np.testing.assert_allclose(ev.notes[:, 1], [0.16, 0.56, 0.96])
    np.testing.assert_allclose(ev.ctl[:, 0], [0.6, 1.0])
    assert ev.ctl[:, 1].tolist() == [7, BEND_KEY]


def test_velocity_curve_stays_in_range():
    ev = augment_instrument(instrument(), False, MidiDraw(velocity_scale=1.3, velocity_gamma=0.6), None)
    want = np.clip(np.rint(127 * 1.3 * (np.array([20, 64, 127]) / 127) ** 0.6), 1, 127)
    assert ev.notes[:, 3].tolist() == want.tolist() and ev.notes[:, 3].max() == 127
    soft = augment_instrument(instrument(), False, MidiDraw(velocity_scale=0.01), None)
    assert soft.notes[:, 3].min() == 1


def test_jitter_is_bounded_keeps_durations_and_onset_order():
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(80, 60, 1.0 + i, 1.3 + i) for i in range(2000)]   # far apart: order kept
    base = instrument_raw(inst)
    ev = augment_instrument(base, False, MidiDraw(jitter_ms=5.0), np.random.default_rng(0))
    shift = ev.notes[:, 0] - base.notes[:, 0]
    assert np.abs(shift).max() <= 0.015 + 1e-12 and 0.0045 < shift.std() < 0.0055
    np.testing.assert_allclose(ev.notes[:, 1] - ev.notes[:, 0], 0.3, atol=1e-9)
    dense = pretty_midi.Instrument(0)
    dense.notes = [pretty_midi.Note(80, 60 + i % 12, 0.001 * i, 0.001 * i + 0.3) for i in range(500)]
    ev = augment_instrument(instrument_raw(dense), False, MidiDraw(jitter_ms=5.0), np.random.default_rng(0))
    assert np.all(np.diff(ev.notes[:, 0]) >= 0) and ev.notes[:, 0].min() >= 0
    a = apply([[base]], [False], MidiDraw(jitter_ms=5.0, jitter_seed=3))[0][0]
    b = apply([[base]], [False], MidiDraw(jitter_ms=5.0, jitter_seed=3))[0][0]
    np.testing.assert_array_equal(a.notes, b.notes)
