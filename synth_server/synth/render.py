"""Aligned stem rendering with one persistent FluidSynth synth per process.

FluidSynth renders in blocks of 64 samples and applies events only at block starts; a write of a
length that is not a multiple of 64 leaves the rest of the block buffered for the next write.
So every event time is put on an absolute 64-sample grid (``BLOCK``), every render starts and
ends on that grid, and between stems the synth is silenced and checked to be silent. The same
event lands on the same sample in every stem and in every excerpt of a song: stems are
sample-aligned and chunked renders equal one long render.

Create a :class:`Renderer` only after the process has started (FluidSynth is not fork-safe).
"""
from __future__ import annotations

import hashlib
from ctypes import c_int, c_void_p
from pathlib import Path

import numpy as np

from synth_server.config import AudioConfig, InstrumentClass, RenderConfig, class_instruments
from synth_server.synth.events import BLOCK, BEND, CONTROL, NOTE_OFF, NOTE_ON, EventError, instrument_events, stem_events

_DRUM_BANK = 128
_FLUID_WARN, _FLUID_INFO = 2, 3   # fluid_log_level


class RenderError(RuntimeError):
    """A song that cannot be rendered (too many events, unknown presets, ...)."""


def _bind_c_functions():
    import fluidsynth as fs

    write_float = fs.cfunc("fluid_synth_write_float", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
                           ("lout", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
                           ("rout", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1))
    set_type = fs.cfunc("fluid_synth_set_channel_type", c_int, ("synth", c_void_p, 1),
                        ("chan", c_int, 1), ("type", c_int, 1))
    if write_float is None or set_type is None:
        raise RenderError("libfluidsynth lacks fluid_synth_write_float/set_channel_type (need >= 2.0)")
    set_log = fs.cfunc("fluid_set_log_function", c_void_p, ("level", c_int, 1), ("fun", c_void_p, 1),
                       ("data", c_void_p, 1))
    if set_log is not None:
        # a hostile song (thousands of simultaneous notes) makes FluidSynth print a warning per
        # stolen voice; those go nowhere useful and can fill a pipe nobody reads. Errors still print.
        for level in (_FLUID_WARN, _FLUID_INFO):
            set_log(level, None, None)
    return fs, write_float, set_type


class Renderer:
    """Renders the stems of song excerpts. One instance per process.

    ``render(midi, start, length)`` -> ``(stems, length)`` float32, mono, at ``audio.sample_rate``.
    """

    def __init__(self, render: RenderConfig, audio: AudioConfig, classes: tuple[InstrumentClass, ...],
                 soundfonts: list[Path]):
        if not soundfonts:
            raise RenderError("no soundfont given")
        self.cfg, self.audio, self.classes = render, audio, classes
        self._fs, self._write_float, self._set_type = _bind_c_functions()
        self.channels = 256
        self.synth = self._fs.Synth(gain=render.gain, samplerate=float(audio.sample_rate),
                                    channels=self.channels)
        self._apply_settings()
        self.soundfonts = [Path(p) for p in soundfonts]
        self._sfids = []
        for path in self.soundfonts:
            sfid = self.synth.sfload(str(path))
            if sfid < 0:
                raise RenderError(f"FluidSynth could not load soundfont {path}")
            self._sfids.append(sfid)
        self._song, self._song_tracks = None, []
        self._silence()
        self._warm_up()

    # -- settings -----------------------------------------------------------------------------
    def _apply_settings(self) -> None:
        wanted = {
            "synth.reverb.active": int(self.cfg.reverb),
            "synth.chorus.active": int(self.cfg.chorus),
            "synth.polyphony": int(self.cfg.polyphony),
            "synth.sample-rate": float(self.audio.sample_rate),
        }
        for key, value in wanted.items():
            self.synth.setting(key, value)
            got = self.synth.get_setting(key)
            if got is None or abs(float(got) - float(value)) > 1e-6:
                raise RenderError(f"FluidSynth setting {key}={value} did not take (reads {got!r})")

    # -- low level ------------------------------------------------------------------------------
    def _write(self, out: np.ndarray, begin: int, end: int) -> None:
        """Render samples [begin, end) of ``out`` ``(2, frames)`` float32 (left, right rows, each
        C-contiguous) in place; both multiples of BLOCK."""
        if end > begin:
            left, right = out[0].ctypes.data + begin * 4, out[1].ctypes.data + begin * 4
            self._write_float(self.synth.synth, end - begin, left, 0, 1, right, 0, 1)

    def _silence(self, max_blocks: int = 2_000) -> None:
        """Stop every voice at once and render until a block is silent.

        Exactly silent without effects; with reverb or chorus on, their tails decay below
        -120 dBFS (1e-6) before the next stem starts.
        """
        # reset first: FluidSynth 2.3 drops voice-off events still queued when a system reset
        # follows them, and the voices then ring on for seconds. Channel -1 is every channel.
        self._fs.fluid_synth_system_reset(self.synth.synth)
        self._fs.fluid_synth_all_sounds_off(self.synth.synth, -1)
        floor = 1e-6 if (self.cfg.reverb or self.cfg.chorus) else 0.0
        block = np.zeros((2, BLOCK * 16), np.float32)
        for _ in range(max_blocks):
            self._write(block, 0, block.shape[1])
            if np.abs(block).max() <= floor:
                return
        raise RenderError("synth did not fall silent after a reset")

    def _warm_up(self) -> None:
        buf = np.zeros((2, BLOCK * 256), np.float32)
        self._fs.fluid_synth_noteon(self.synth.synth, 0, 60, 100)
        self._write(buf, 0, buf.shape[1])
        self._silence()

    def _setup_channel(self, ch: int, inst, sfid: int) -> None:
        drum = bool(inst.is_drum)
        self._set_type(self.synth.synth, ch, 1 if drum else 0)
        bank = _DRUM_BANK if drum else 0
        if self.synth.program_select(ch, sfid, bank, inst.program) < 0:
            # soundfont lacks that preset: fall back to the first one of the bank
            if self.synth.program_select(ch, sfid, bank, 0) < 0:
                raise RenderError(f"soundfont has no preset in bank {bank}")

    def _play(self, kind: int, ch: int, a: int, b: int) -> None:
        s = self.synth.synth
        if kind == NOTE_ON:
            self._fs.fluid_synth_noteon(s, ch, a, b)
        elif kind == NOTE_OFF:
            self._fs.fluid_synth_noteoff(s, ch, a)
        elif kind == CONTROL:
            self._fs.fluid_synth_cc(s, ch, a, b)
        elif kind == BEND:
            self._fs.fluid_synth_pitch_bend(s, ch, b)

    # -- public ---------------------------------------------------------------------------------
    def soundfont_for(self, song_id: str) -> int:
        """Index of the soundfont used for a song (stable per song when several are loaded)."""
        digest = hashlib.sha1(song_id.encode()).digest()
        return int.from_bytes(digest[:4], "little") % len(self.soundfonts)

    def _tracks(self, midi) -> list[list]:
        """Per class, the grid events of its instruments (``events.InstrumentEvents``); built
        once per song and kept while the same song is rendered."""
        if self._song is not midi:
            sr = self.audio.sample_rate
            self._song_tracks = [[instrument_events(inst, sr) for inst in insts]
                                 for insts in class_instruments(self.classes, midi.instruments)]
            self._song = midi
        return self._song_tracks

    def render(self, midi, start: int, length: int, soundfont: int = 0) -> np.ndarray:
        """Stems of samples [start, start + length) of a song -> ``(stems, length)`` float32.

        ``start`` may be any sample index (>= 0); rendering begins ``preroll`` seconds earlier
        on the block grid so that notes held across ``start`` sound right.
        """
        if start < 0 or length <= 0:
            raise ValueError(f"bad excerpt start={start} length={length}")
        preroll = int(round(self.cfg.preroll * self.audio.sample_rate))
        r0 = max(0, (start - preroll) // BLOCK * BLOCK)
        r1 = -(-(start + length) // BLOCK) * BLOCK
        sfid = self._sfids[soundfont]
        out = np.zeros((len(self.classes), length), np.float32)
        buf = np.empty((2, r1 - r0), np.float32)
        tracks = self._tracks(midi)
        for i, insts in enumerate(class_instruments(self.classes, midi.instruments)):
            if not insts:
                continue
            if len(insts) > self.channels:
                raise RenderError(f"class {self.classes[i].name}: {len(insts)} instruments > {self.channels} channels")
            try:
                events = stem_events(tracks[i], r0, r1)
            except EventError as exc:
                raise RenderError(str(exc)) from None
            for ch, inst in enumerate(insts):
                self._setup_channel(ch, inst, sfid)
            cursor = r0
            for sample, kind, ch, a, b in events.tolist():
                self._write(buf, cursor - r0, sample - r0)
                cursor = sample
                self._play(kind, ch, a, b)
            self._write(buf, cursor - r0, r1 - r0)
            a = start - r0
            np.add(buf[0, a:a + length], buf[1, a:a + length], out=out[i])
            out[i] *= 0.5
            self._silence()
        return out
