"""Preset tails read from soundfont files bound how long FluidSynth's notes really sound."""
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from synth_server.config import AudioConfig, InstrumentClass, RenderConfig
from synth_server.synth.render import Renderer
from synth_server.synth.sf2 import PresetTails, SoundfontFileError
from synth_server.synth.soundfont import resolve_soundfonts

SR = 44100
SF3 = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")


def test_every_preset_of_the_soundfont_has_bounds_per_key():
    tails = PresetTails(resolve_soundfonts(None)[0])
    assert (0, 0) in tails.presets() and (128, 0) in tails.presets()
    for bank, program in tails.presets():
        t = tails.tail(bank, program)
        assert t.hold_limit.shape == t.release.shape == (128,)
        assert (t.hold_limit >= 0).all() and (t.release >= 0).all() and np.isfinite(t.release).all()
    assert tails.tail(5, 200) is None
    drums = tails.tail(128, 0)
    assert np.isfinite(drums.hold_limit[35:82]).all(), "drum hits are one-shot samples: they end"


@pytest.mark.skipif(not SF3.is_file(), reason="musescore-general-soundfont-small not installed")
def test_sf3_sample_lengths_are_read_from_the_ogg_stream():
    drums = PresetTails(SF3).tail(128, 0)
    assert 0.05 < drums.hold_limit[38] < 30      # a snare: finite, from the compressed sample's frame count


def test_a_file_that_is_no_soundfont_is_refused(tmp_path):
    bad = tmp_path / "x.sf2"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(SoundfontFileError):
        PresetTails(bad)


@pytest.mark.parametrize("program,drum,notes", [
    (0, True, [(36, 0.1, 0.2), (42, 0.5, 0.6), (49, 1.0, 1.1), (38, 1.5, 1.6)]),   # kick, hi-hat, crash, snare
    (0, False, [(60, 0.1, 0.6), (36, 0.2, 2.0)]),                                  # piano
    (48, False, [(60, 0.1, 1.0)]),                                                 # strings
    (45, False, [(55, 0.1, 0.3)]),                                                 # pizzicato
])
def test_notes_fall_silent_before_their_bound(program, drum, notes):
    cls = InstrumentClass("x", (), True) if drum else InstrumentClass("x", (program,))
    r = Renderer(RenderConfig(), AudioConfig(), (cls,), resolve_soundfonts(None))
    for pitch, a, b in notes:   # one song per note, to see each one's end
        midi = pretty_midi.PrettyMIDI()
        midi.instruments = [pretty_midi.Instrument(program, is_drum=drum)]
        midi.instruments[0].notes.append(pretty_midi.Note(127, pitch, a, b))
        track = r._stems(midi, 0)[0][0]
        bound = int(track.ends[0])
        wave = r.render(midi, 0, bound + SR)[0]
        last = np.flatnonzero(wave)[-1]
        assert last < bound, (pitch, last / SR, bound / SR)
        if drum:   # one-shot hits ring to their sample's end: the bound is tight
            assert bound - last < 0.15 * (last - a * SR) + 0.05 * SR, (pitch, last / SR, bound / SR)
