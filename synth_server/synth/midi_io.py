"""Defensive MIDI loading and a generic per-call time limit.

``load_midi`` turns any file into either a ``pretty_midi.PrettyMIDI`` or a ``MidiError`` with a
short human reason; no other exception escapes. Hostile input (huge files, chunk lengths past
the end, absurd tempos, tick counts or note counts) is rejected before pretty_midi allocates
anything large: ``scan_events`` walks the raw track bytes (no objects) and rejects event, note,
tick and tempo counts before mido builds one Python object per event. ``load_midi_bytes`` does
the same for bytes received over the wire (no temp file). ``call_with_timeout`` cuts off a call that hangs (SIGALRM; it must run in the
main thread of its process, which is where ``concurrent.futures``/``multiprocessing`` pool
workers run their tasks).
"""
from __future__ import annotations

import io
import signal
import struct
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import mido
import pretty_midi

MAX_DURATION_S = 3600.0     # more than an hour of music is not a song
MAX_NOTES = 200_000         # more notes than any real song
MAX_TICKS = 10_000_000      # pretty_midi allocates one float64 per tick
MIN_TEMPO_US = 10_000       # microseconds per beat; faster than 6000 bpm is absurd
MAX_EVENTS = 500_000        # MIDI events in all tracks; mido needs ~300 bytes per event
_DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}   # by status high nibble
_SYSTEM_BYTES = {0xF1: 1, 0xF2: 2, 0xF3: 1}                               # system common

T = TypeVar("T")


class MidiError(ValueError):
    """A MIDI file that cannot be used; ``str(err)`` is a short reason such as 'no notes'."""


class CallTimeout(TimeoutError):
    """Raised inside a call that ran past its ``call_with_timeout`` limit."""


def call_with_timeout(fn: Callable[..., T], seconds: float, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)``; raise ``CallTimeout`` if it takes longer than ``seconds``.

    Uses SIGALRM, so it works in the main thread of any process (including pool workers started
    with 'spawn') and interrupts Python code; a single long C call is interrupted when it returns
    to the interpreter. A timer already armed by an outer caller is restored afterwards.
    """
    if seconds <= 0:
        raise ValueError(f"timeout must be positive, got {seconds}")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("call_with_timeout uses SIGALRM and must run in the main thread")
    name = getattr(fn, "__name__", repr(fn))

    def _on_alarm(signum: int, frame: Any) -> None:
        raise CallTimeout(f"{name} took longer than {seconds:g} s")

    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            left = old_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


def check_chunks(data: bytes) -> None:
    """Validate the SMF header and that every chunk's declared length fits in ``data``."""
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError("bad header: no MThd chunk")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if hlen < 6:
        raise MidiError(f"bad header: header length {hlen}")
    if fmt > 2:
        raise MidiError(f"bad header: format {fmt}")
    if ntracks == 0:
        raise MidiError("bad header: no tracks")
    if division & 0x8000:
        raise MidiError("bad header: SMPTE time division not supported")
    if division == 0:
        raise MidiError("bad header: zero ticks per beat")
    pos, found = 8 + hlen, 0
    while found < ntracks and pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        if pos + 8 + length > len(data):
            raise MidiError("declared track length past end of file")
        found += data[pos:pos + 4] == b"MTrk"
        pos += 8 + length
    if found < ntracks:
        raise MidiError(f"header declares {ntracks} tracks, file holds {found}")


def _vlq(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Variable-length quantity at ``pos`` -> (value, next position); (-1, end) when cut off."""
    value = 0
    for _ in range(4):
        if pos >= end:
            return -1, end
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos
    return -1, end


def _scan_track(data: bytes, pos: int, end: int, budget: int) -> tuple[int, int, int, int]:
    """Walk one MTrk body -> (events, note-ons with velocity > 0, ticks, lowest tempo or -1).

    Stops at ``budget`` events and at the first malformed event (mido then reports it).
    """
    events = notes = ticks = 0
    tempo, status = -1, 0
    while pos < end and events < budget:
        delta, pos = _vlq(data, pos, end)
        if delta < 0 or pos >= end:
            break
        ticks += delta
        events += 1
        byte = data[pos]
        if byte >= 0x80:
            pos += 1
            if byte < 0xF0:
                status = byte
        elif status == 0:
            break                                   # running status with no status: malformed
        if byte == 0xFF:                            # meta: type, length, data
            if pos >= end:
                break
            kind = data[pos]
            length, start = _vlq(data, pos + 1, end)
            if length < 0:
                break
            if kind == 0x51 and length == 3 and start + 3 <= end:
                value = int.from_bytes(data[start:start + 3], "big")
                tempo = value if tempo < 0 else min(tempo, value)
            pos = start + length
        elif byte in (0xF0, 0xF7):                  # sysex: length, data
            length, pos = _vlq(data, pos, end)
            if length < 0:
                break
            pos += length
        elif byte >= 0xF0:
            pos += _SYSTEM_BYTES.get(byte, 0)
        else:
            size = _DATA_BYTES[status >> 4]
            if status >> 4 == 0x9 and pos + 1 < end and data[pos + 1] > 0:
                notes += 1
            pos += size
    return events, notes, ticks, tempo


def track_stats(data: bytes, max_events: int = MAX_EVENTS) -> list[tuple[int, int, int, int]]:
    """Per MTrk chunk of a file that passed ``check_chunks``: (events, note-ons with velocity > 0,
    ticks, lowest tempo or -1), from the raw bytes; stops once ``max_events`` are counted."""
    hlen = struct.unpack(">I", data[4:8])[0]
    pos, events, out = 8 + hlen, 0, []
    while pos + 8 <= len(data) and events <= max_events:
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        if data[pos:pos + 4] == b"MTrk":
            out.append(_scan_track(data, pos + 8, min(len(data), pos + 8 + length), max_events + 1 - events))
            events += out[-1][0]
        pos += 8 + length
    return out


def scan_events(data: bytes, max_notes: int = MAX_NOTES, max_events: int = MAX_EVENTS) -> None:
    """Reject, from the raw bytes, what would make mido or pretty_midi blow up: more than
    ``max_events`` events, more than ``max_notes`` notes, a track longer than ``MAX_TICKS``
    ticks, a tempo faster than ``MIN_TEMPO_US``. Call after ``check_chunks``."""
    events = notes = 0
    for n, k, ticks, tempo in track_stats(data, max_events):
        events, notes = events + n, notes + k
        if events > max_events:
            raise MidiError(f"too many events (more than {max_events})")
        if 0 <= tempo < MIN_TEMPO_US:
            raise MidiError(f"absurd tempo ({tempo} us per beat)")
        if ticks > MAX_TICKS:
            raise MidiError(f"absurd length ({ticks} ticks)")
    if notes > max_notes:
        raise MidiError(f"too many notes ({notes})")


def check_events(mid: mido.MidiFile, max_notes: int = MAX_NOTES) -> None:
    """Reject tick counts, tempos and note counts that would make pretty_midi blow up."""
    n_notes = 0
    for track in mid.tracks:
        ticks = 0
        for msg in track:
            ticks += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                n_notes += 1
            elif msg.type == "set_tempo" and msg.tempo < MIN_TEMPO_US:
                raise MidiError(f"absurd tempo ({msg.tempo} us per beat)")
        if ticks > MAX_TICKS:
            raise MidiError(f"absurd length ({ticks} ticks)")
    if n_notes > max_notes:
        raise MidiError(f"too many notes ({n_notes})")


def note_count(pm: pretty_midi.PrettyMIDI) -> int:
    return sum(len(inst.notes) for inst in pm.instruments)


def _parse(data: bytes, max_duration: float, max_notes: int) -> pretty_midi.PrettyMIDI:
    check_chunks(data)
    scan_events(data, max_notes)
    mid = mido.MidiFile(file=io.BytesIO(data), clip=True)
    check_events(mid, max_notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(mido_object=mid)
    if note_count(pm) == 0:
        raise MidiError("no notes")
    end = pm.get_end_time()
    if end > max_duration:
        raise MidiError(f"too long ({end:.0f} s)")
    return pm


def load_midi(path: Path | str, max_bytes: int, max_duration: float = MAX_DURATION_S,
              max_notes: int = MAX_NOTES) -> pretty_midi.PrettyMIDI:
    """Parse one MIDI file or raise ``MidiError(reason)``.

    ``CallTimeout`` from an enclosing ``call_with_timeout`` passes through unchanged; every other
    failure (OSError, mido/pretty_midi errors, MemoryError, ...) becomes a ``MidiError``.
    """
    try:
        size = Path(path).stat().st_size
        if size == 0:
            raise MidiError("empty file")
        if size > max_bytes:
            raise MidiError(f"file too large ({size} bytes)")
        data = Path(path).read_bytes()
    except MidiError:
        raise
    except OSError as exc:
        raise MidiError(f"cannot read: {exc.strerror or exc}") from None
    return load_midi_bytes(data, max_bytes, max_duration, max_notes)


def load_midi_bytes(data: bytes, max_bytes: int, max_duration: float = MAX_DURATION_S,
                    max_notes: int = MAX_NOTES) -> pretty_midi.PrettyMIDI:
    """Parse the bytes of a MIDI file (e.g. received from the broker) or raise ``MidiError``.

    Same checks and the same reasons as ``load_midi``; ``CallTimeout`` passes through.
    """
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MidiError(f"not bytes but {type(data).__name__}")
        if len(data) == 0:
            raise MidiError("empty file")
        if len(data) > max_bytes:
            raise MidiError(f"file too large ({len(data)} bytes)")
        return _parse(bytes(data), max_duration, max_notes)
    except (MidiError, CallTimeout):
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input may raise anything
        raise MidiError(f"unreadable: {type(exc).__name__}: {exc}"[:200]) from None
