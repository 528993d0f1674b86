"""Aligned stem rendering with one persistent FluidSynth synth per process.

FluidSynth renders in blocks of 64 samples and applies events only at block starts; a write of a
length that is not a multiple of 64 leaves the rest of the block buffered for the next write.
So every event time is put on an absolute 64-sample grid (``BLOCK``), every render starts and
ends on that grid, and between stems the synth is silenced and checked to be silent. The same
event lands on the same sample in every stem and in every excerpt of a song: stems are
sample-aligned and chunked renders equal one long render.

An excerpt sounds as the song does at that point: each stem's render begins at the earliest
onset of the notes still sounding at the excerpt start (held, pedalled or in their release, as
the soundfont's envelopes and samples bound them; ``sf2``), at least ``preroll`` and at most
``preroll_cap`` seconds early, and the controller history before it is replayed in time order.
What remains different is the first 64-sample block after a note onset: FluidSynth 2.3 ramps a
new voice's output gains over that block from the gains of the voice that last used its voice
slot, and which slot a note gets depends on the whole history (so two whole-song renders after
different histories differ there too). Outside those blocks an excerpt matches the whole-song
render to > 90 dB, mostly bit for bit.

Create a :class:`Renderer` only after the process has started (FluidSynth is not fork-safe).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ctypes import c_int, c_void_p
from pathlib import Path

import numpy as np

from synth_server.config import AudioConfig, InstrumentClass, RenderConfig, class_instruments
from synth_server.synth.augment import StemVoice
from synth_server.synth.events import (BLOCK, BEND, CONTROL, NOTE_OFF, NOTE_ON, EventError, InstrumentEvents,
                                       earliest_sounding, grid_events, instrument_raw, note_ends, stem_events)
from synth_server.synth.sf2 import PresetTails, SoundfontFileError
from synth_server.synth.soundfont import SoundfontInfo, song_hash

_DRUM_BANK = 128
_FLUID_WARN, _FLUID_INFO = 2, 3   # fluid_log_level


class RenderError(RuntimeError):
    """A song that cannot be rendered (too many events, unknown presets, ...)."""


@dataclass(frozen=True)
class _Track:
    """One instrument of a stem as rendered with one soundfont: its events, the preset it plays
    and the sample by which each of its notes has stopped sounding."""

    events: InstrumentEvents
    bank: int
    program: int
    ends: np.ndarray
    drum: bool


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

    ``render(midi, start, length, soundfont, counters)`` -> ``(stems, length)`` float32, mono, at
    ``audio.sample_rate``. ``bank[i]`` describes loaded soundfont i (presets, kits) for
    augmentation draws; ``render`` also takes per-stem voices, a MIDI transform and a per-stem
    post-processing step (``pipeline.render_augmented``).
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
        self._sfids, self._tails, self.bank = [], [], []
        for path in self.soundfonts:
            sfid = self.synth.sfload(str(path))
            if sfid < 0:
                raise RenderError(f"FluidSynth could not load soundfont {path}")
            try:
                self._tails.append(PresetTails(path))
            except (OSError, SoundfontFileError) as exc:
                raise RenderError(f"cannot read the presets of soundfont {path}: {exc}") from None
            self._sfids.append(sfid)
            self.bank.append(SoundfontInfo.scan(path, lambda bank, prog: self.synth.sfpreset_name(sfid, bank, prog)))
        self._song, self._song_insts, self._song_raw, self._song_events, self._song_stems = None, [], [], [], {}
        self._silence()
        self._warm_up()

    # -- settings -----------------------------------------------------------------------------
    def _apply_settings(self) -> None:
        wanted = {
            "synth.reverb.active": int(self.cfg.reverb),
            "synth.chorus.active": int(self.cfg.chorus),
            "synth.polyphony": int(self.cfg.polyphony),
            "synth.sample-rate": float(self.audio.sample_rate),
            "synth.dynamic-sample-loading": int(self.cfg.dynamic_samples),
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

    def _preset(self, inst, voice: StemVoice) -> tuple[int, int]:
        """(bank, program) an instrument plays: the voice's, else its own program (bank 128 for
        drums), or program 0 of the bank when the soundfont lacks it."""
        soundfont = voice.soundfont
        bank = voice.bank if voice.bank is not None else _DRUM_BANK if inst.is_drum else 0
        own = voice.program if voice.program is not None else int(inst.program)
        for program in (own, 0):
            if self._tails[soundfont].tail(bank, program) is not None:
                return bank, program
        raise RenderError(f"soundfont {self.soundfonts[soundfont].name} has no preset in bank {bank}")

    def _setup_channel(self, ch: int, track: _Track, sfid: int) -> None:
        self._set_type(self.synth.synth, ch, 1 if track.drum else 0)
        if self.synth.program_select(ch, sfid, track.bank, track.program) < 0:
            raise RenderError(f"FluidSynth refuses preset {track.bank}:{track.program}")

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
        return song_hash(song_id) % len(self.soundfonts)

    def _stems(self, midi, voices: list[StemVoice] | int, transform=None) -> list[list[_Track]]:
        """Per class, its instruments as ``_Track``s for the stem's voice (an int: that soundfont
        for every stem, the song's presets). The raw and grid
        events are built once per song and kept while it is rendered, the tracks once per stem
        and voice; ``transform`` (raw tracks per stem -> raw tracks, e.g. ``midi_augment.apply``)
        makes fresh ones."""
        sr = self.audio.sample_rate
        if isinstance(voices, int):
            voices = [StemVoice(voices)] * len(self.classes)
        if self._song is not midi:
            groups = class_instruments(self.classes, midi.instruments)
            self._song_raw = [[instrument_raw(inst) for inst in insts] for insts in groups]
            self._song_events = [[grid_events(raw, sr) for raw in stem] for stem in self._song_raw]
            self._song, self._song_insts, self._song_stems = midi, groups, {}
        events = self._song_events
        if transform is not None:
            events = [[grid_events(raw, sr) for raw in stem] for stem in transform(self._song_raw)]
        out = []
        for i, (insts, voice) in enumerate(zip(self._song_insts, voices)):
            key = (i, voice)
            if transform is None and key in self._song_stems:
                out.append(self._song_stems[key])
                continue
            tracks = []
            for inst, ev in zip(insts, events[i]):
                bank, program = self._preset(inst, voice)
                tail = self._tails[voice.soundfont].tail(bank, program)
                tracks.append(_Track(ev, bank, program, note_ends(ev, tail.hold_limit, tail.release, sr),
                                     bool(inst.is_drum)))
            if transform is None:
                self._song_stems[key] = tracks
            out.append(tracks)
        return out

    def render_start(self, tracks: list[_Track], start: int) -> tuple[int, bool]:
        """Where a stem's render of an excerpt at ``start`` begins (a multiple of BLOCK), and
        whether ``preroll_cap`` cut it short of the earliest note still sounding at ``start``."""
        sr = self.audio.sample_rate
        least = int(round(self.cfg.preroll * sr))
        most = max(least, int(round(self.cfg.preroll_cap * sr)))
        want = max(0, min([start - least] + [earliest_sounding(t.events, t.ends, start) for t in tracks]))
        r0 = max(want, start - most) // BLOCK * BLOCK
        return r0, r0 > want

    def render(self, midi, start: int, length: int, soundfont: int = 0, counters: Counter | None = None,
               voices: list[StemVoice] | None = None, transform=None, post=None) -> np.ndarray:
        """Stems of samples [start, start + length) of a song -> ``(stems, length)`` float32.

        ``start`` may be any sample index (>= 0); each stem's render begins at ``render_start``.
        ``counters["preroll_capped"]`` counts excerpts where the cap cut a stem's pre-roll (the
        notes whose key is still down at the cut then strike again there).
        ``voices[i]`` (soundfont, preset) replaces ``soundfont`` per stem; ``transform`` changes
        the raw events (see ``_stems``); ``post(i, wave, a)`` gets stem i's whole render
        ``(n,)`` float32, pre-roll included, the excerpt at ``[a:a + length]``, and returns it
        processed (effects).
        """
        if start < 0 or length <= 0:
            raise ValueError(f"bad excerpt start={start} length={length}")
        r1 = -(-(start + length) // BLOCK) * BLOCK
        voices = voices or [StemVoice(soundfont)] * len(self.classes)
        out = np.zeros((len(self.classes), length), np.float32)
        capped = False
        for i, tracks in enumerate(self._stems(midi, voices, transform)):
            if not tracks:
                continue
            if len(tracks) > self.channels:
                raise RenderError(f"class {self.classes[i].name}: {len(tracks)} instruments > {self.channels} channels")
            r0, cut = self.render_start(tracks, start)
            capped |= cut
            try:
                events = stem_events([t.events for t in tracks], r0, r1, restart=cut)
            except EventError as exc:
                raise RenderError(str(exc)) from None
            for ch, track in enumerate(tracks):
                self._setup_channel(ch, track, self._sfids[voices[i].soundfont])
            buf = np.empty((2, r1 - r0), np.float32)
            cursor = r0
            for sample, kind, ch, a, b in events.tolist():
                self._write(buf, cursor - r0, sample - r0)
                cursor = sample
                self._play(kind, ch, a, b)
            self._write(buf, cursor - r0, r1 - r0)
            a = start - r0
            if post is None:
                np.add(buf[0, a:a + length], buf[1, a:a + length], out=out[i])
                out[i] *= 0.5
            else:
                wave = buf[0] + buf[1]
                wave *= 0.5
                out[i] = post(i, wave, a)[a:a + length]
            self._silence()
        if capped and counters is not None:
            counters["preroll_capped"] += 1
        return out
