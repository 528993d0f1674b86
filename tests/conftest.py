"""Shared fixtures: the real and nasty MIDI folders beside the checkout (skip when absent)."""
from pathlib import Path

import pytest

SHARED_MIDI = Path(__file__).resolve().parents[1].parent / "shared" / "midi"


@pytest.fixture(scope="session")
def real_midi_dir() -> Path:
    path = SHARED_MIDI / "real"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def nasty_midi_dir() -> Path:
    path = SHARED_MIDI / "nasty"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def make_busy_midi(seconds: float = 6.0, shift: int = 0):
    """Drums, piano, strings and bass playing together all the way through; ``shift`` varies pitches."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    for program, drum, base in [(0, True, 36), (0, False, 60), (48, False, 67), (33, False, 40)]:
        inst = pretty_midi.Instrument(program, is_drum=drum)
        t = 0.0
        while t < seconds:
            pitch = base + (int(t * 3) + shift) % 5
            inst.notes.append(pretty_midi.Note(90, pitch, t, t + 0.2 if drum else t + 0.45))
            t += 0.25
        midi.instruments.append(inst)
    return midi


@pytest.fixture(scope="session")
def busy_midi():
    """Factory fixture: ``busy_midi(seconds, shift) -> PrettyMIDI`` (see ``make_busy_midi``)."""
    return make_busy_midi
