"""The shared test harness. Fixtures (names are stable; other branches use them):

- ``real_midi_dir`` / ``nasty_midi_dir``: the real and broken MIDI folders in ``shared/midi/`` of
  the checkout or of a folder above it (/work/shared/midi for /work/main and for worktrees in
  /work/wt/); the test is skipped when absent.
- ``busy_midi(seconds, shift) -> PrettyMIDI``: four classes playing all the way through.
- ``zmq_ctx``: a ZeroMQ context, destroyed at teardown.
- ``peer(address, curve=None) -> harness.Peer``: a raw DEALER socket (fake worker, client, ctl).
- ``broker(songs=3, audio=SMALL_AUDIO, prefill=0, **BrokerConfig fields) -> harness.BrokerThread``:
  a real broker on a thread in ``tmp_path``; ``.address``, ``.broker``, ``.songs``, ``.thread``.
- ``serve(*flags) -> harness.ServeProcess``: a real `synth-server serve` subprocess on a free port;
  ``.address`` (from ``--ready-file``), ``.proc``, ``.output()``, ``.stop()``; its whole process group
  is killed at teardown.

Plain helpers and constants (``ROOT``, ``SMALL_AUDIO``, ``SMALL_SPEC``, ``wait_for``,
``synth_server_cli``, ``group_pids``, ...) are in tests/harness.py: ``from harness import ...``.
Subfolder conftests: tests/synth_server (``fake_broker``: a bare ROUTER socket) and tests/trainer
(autouse: torch on one thread).

Long end-to-end, fault and multi-process tests are marked ``@pytest.mark.slow``:
``pytest -m "not slow"`` (``make test-fast``) skips them; ``make test`` runs everything.
"""
from pathlib import Path

import pytest
import zmq

import harness
from harness import BrokerThread, Peer, ServeProcess

SHARED_MIDI = next((folder / "shared" / "midi" for folder in (harness.ROOT, *harness.ROOT.parents)
                    if (folder / "shared" / "midi").is_dir()), harness.ROOT.parent / "shared" / "midi")


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


@pytest.fixture
def zmq_ctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def peer(zmq_ctx):
    """Factory fixture: ``peer(address, curve=None) -> Peer``; sockets close with ``zmq_ctx``."""
    return lambda address, curve=None: Peer(zmq_ctx, address, curve)


@pytest.fixture
def broker(tmp_path):
    """Factory fixture: ``broker(**kw) -> BrokerThread`` in ``tmp_path``; closed at teardown."""
    made = []

    def start(**kw):
        made.append(BrokerThread(tmp_path, **kw))
        return made[-1]

    yield start
    for running in made:
        running.close()


@pytest.fixture
def serve(tmp_path):
    """Factory fixture: ``serve(*flags) -> ServeProcess`` on a free port; killed at teardown."""
    started = []

    def start(*args):
        started.append(ServeProcess(list(args), tmp_path / f"serve{len(started)}.log"))
        return started[-1]

    yield start
    for process in started:
        process.kill()
