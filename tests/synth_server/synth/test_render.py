"""Audio facts of the renderer: alignment, linearity (stems sum to the one-pass mixture), excerpts."""
import numpy as np
import pretty_midi
import pytest

from synth_server.config import DEFAULT_CLASSES, AudioConfig, InstrumentClass, RenderConfig
from synth_server.synth.events import BLOCK, to_grid
from synth_server.synth.render import Renderer
from synth_server.synth.soundfont import resolve_soundfonts

SR = 44100
PITCHED = DEFAULT_CLASSES[1:]  # piano, strings, bass


def snr_db(reference, estimate):
    return 10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - estimate) ** 2), 1e-30))


def make_renderer(classes=DEFAULT_CLASSES, **render):
    return Renderer(RenderConfig(**render), AudioConfig(), classes, resolve_soundfonts(None))


@pytest.fixture(scope="module")
def renderer():
    return make_renderer()


def song(notes):
    """notes: (program, is_drum, pitch, start, end) -> PrettyMIDI, one instrument per program."""
    midi = pretty_midi.PrettyMIDI()
    insts = {}
    for program, drum, pitch, start, end in notes:
        key = (program, drum)
        if key not in insts:
            insts[key] = pretty_midi.Instrument(program, is_drum=drum)
            midi.instruments.append(insts[key])
        insts[key].notes.append(pretty_midi.Note(100, pitch, start, end))
    return midi


FOUR = [(0, True, 36, 1.0, 1.2), (0, False, 60, 1.0, 1.8), (48, False, 67, 1.0, 1.9), (33, False, 40, 1.0, 1.7)]


def test_note_at_known_time_lands_in_every_stem(renderer):
    stems = renderer.render(song(FOUR), 0, 3 * SR)
    q = to_grid(1.0, SR)
    for i, cls in enumerate(DEFAULT_CLASSES):
        onset = np.flatnonzero(stems[i])[0]
        assert q <= onset < q + BLOCK, (cls.name, onset, q)
        assert not stems[i, :q].any(), f"{cls.name} sounds before its note"


def test_stems_sum_to_one_pass_mixture():
    """Rendering all pitched classes in one synth pass equals the sum of the separate stems."""
    midi = song([(0, False, 60, 0.5, 1.5), (0, False, 64, 0.7, 2.0), (48, False, 67, 0.3, 2.5),
                 (33, False, 40, 0.6, 1.1), (33, False, 43, 1.2, 2.2)])
    separate = make_renderer(PITCHED).render(midi, 0, 3 * SR)
    merged_class = InstrumentClass("all", tuple(sorted({p for c in PITCHED for p in c.programs})))
    together = make_renderer((merged_class,)).render(midi, 0, 3 * SR)[0]
    assert np.abs(separate).max() > 0.01
    # FluidSynth is linear: only float rounding and the first block of some onsets differ
    assert snr_db(together, separate.sum(0)) > 70
    assert np.abs(separate.sum(0) - together).max() < 5e-4


def test_excerpt_equals_long_render(renderer):
    """Equal up to FluidSynth's state carried across resets: a fresh synth is bit-exact, a reused
    one may differ in the first 64-sample block after an onset by < 1e-3 (> 50 dB SNR)."""
    midi = song(FOUR + [(0, False, 72, 2.0, 2.3), (33, False, 45, 2.1, 2.4)])
    full = renderer.render(midi, 0, 4 * SR)
    for start, length in [(30_000, SR), (SR + 17, 5000), (2 * SR - 3, 4410)]:
        part = renderer.render(midi, start, length)
        assert part.shape == (4, length)
        reference = full[:, start:start + length]
        for s in range(4):
            if reference[s].any():
                assert snr_db(reference[s], part[s]) > 50
        assert np.abs(part - reference).max() < 1e-3


def test_fresh_synth_renders_bit_exact():
    midi = song(FOUR)
    a = make_renderer().render(midi, SR // 2, SR)
    b = make_renderer().render(midi, 0, 2 * SR)
    np.testing.assert_array_equal(a, b[:, SR // 2:SR // 2 + SR])


def test_preroll_keeps_notes_held_across_start(renderer):
    midi = song([(48, False, 60, 0.5, 3.0)])
    part = renderer.render(midi, int(2.0 * SR), SR)
    assert np.sqrt(np.mean(part[2, :2000] ** 2)) > 1e-3, "held string note silent after excerpt start"


def test_distractor_never_reaches_the_stems(renderer):
    with_guitar = song([(0, False, 60, 0.2, 1.0), (25, False, 64, 0.1, 1.5), (60, False, 70, 0.3, 1.0)])
    without = song([(0, False, 60, 0.2, 1.0)])
    a = renderer.render(with_guitar, 0, 2 * SR)
    b = renderer.render(without, 0, 2 * SR)
    np.testing.assert_array_equal(a, b)
    only_guitar = renderer.render(song([(25, False, 64, 0.1, 1.5)]), 0, 2 * SR)
    assert not only_guitar.any()


def test_reverb_setting_is_verified_and_applied():
    r = make_renderer(PITCHED, reverb=True)
    assert r.synth.get_setting("synth.reverb.active") == 1


def test_voice_stealing_storm_is_rendered_quietly(renderer, capfd):
    """2500 simultaneous notes: FluidSynth steals voices without printing a warning per voice."""
    inst = pretty_midi.Instrument(0)
    inst.notes += [pretty_midi.Note(100, 30 + i % 60, 0.1, 0.5) for i in range(2500)]
    midi = pretty_midi.PrettyMIDI()
    midi.instruments.append(inst)
    stems = renderer.render(midi, 0, SR)
    assert np.isfinite(stems).all() and np.abs(stems[1]).max() > 0.01
    assert "warning" not in capfd.readouterr().err.lower()
