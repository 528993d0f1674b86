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


class ServeProcess:
    """A `synth-server serve` subprocess in its own process group, its log and its address."""

    def __init__(self, args: list, log_path):
        import re
        import subprocess
        import sys
        import time

        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "synth_server", "serve", *map(str, args), "--port", "0"],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = None
        deadline = time.monotonic() + 30
        while self.address is None and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.2)
            self.log.seek(0)
            found = re.search(r"broker on (tcp://[^\s:]+:\d+)", self.log.read())
            self.address = found.group(1) if found else None
        if self.address is None:
            self.stop(signal_name="SIGKILL")
            self.log.seek(0)
            pytest.fail("serve did not start:\n" + self.log.read())

    def stop(self, signal_name: str = "SIGTERM", timeout: float = 15) -> int:
        """Signal the process group; SIGKILL it after ``timeout``; returns the exit code."""
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, getattr(signal, signal_name))
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(5)
        self.log.close()
        return code


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def serve(tmp_path):
    """Factory fixture: ``serve(*flags) -> ServeProcess`` on a free port; stopped at teardown."""
    started = []

    def start(*args):
        started.append(ServeProcess(list(args), tmp_path / f"serve{len(started)}.log"))
        return started[-1]

    yield start
    for process in started:
        if not process.log.closed:
            process.stop(signal_name="SIGKILL", timeout=5)
