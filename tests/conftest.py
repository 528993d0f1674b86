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
