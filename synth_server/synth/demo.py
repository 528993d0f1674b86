"""Synthetic General MIDI demo corpus: varied songs with drums, piano, strings, bass and distractors.

The server writes this corpus when its corpus folder holds no MIDI; tests use it too. A song is built
as a type-1 ``mido`` file in ticks (one meta track with tempo, meter and key, one track per part),
then returned as ``pretty_midi.PrettyMIDI``. A mid-song program change within a class shows up in
pretty_midi as a second Instrument of that class. All randomness comes from the caller's Generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import pretty_midi

TPB = 480                      # ticks per quarter note
STEP = TPB // 4                # one sixteenth note, the grid of every pattern
METERS = ((4, 4), (3, 4), (6, 8))
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
KEY_NAMES = (("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
             ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"))
# Chord progressions as 0-based scale degrees, [major, minor].
PROGRESSIONS = (((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 0, 4), (1, 4, 0, 0)),
                ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)))
CLASS_PROGRAMS = {"piano": tuple(range(0, 8)), "strings": tuple(range(40, 52)), "bass": tuple(range(32, 40))}
PART_NAMES = ("drums", "piano", "strings", "bass")
DISTRACTOR_FAMILIES = {"organ": tuple(range(16, 24)), "guitar": tuple(range(24, 32)),
                       "brass": tuple(range(56, 64)), "lead": tuple(range(80, 88))}
DISTRACTOR_PROGRAMS: tuple[int, ...] = tuple(p for progs in DISTRACTOR_FAMILIES.values() for p in progs)
# Drum and bass patterns: sixteenth-note steps within a bar, per meter.
KICKS = {(4, 4): ((0, 8), (0, 10), (0, 6, 8), (0, 7, 10), (0, 3, 8, 11)),
         (3, 4): ((0,), (0, 6), (0, 10)), (6, 8): ((0,), (0, 4), (0, 10))}
SNARES = {(4, 4): ((4, 12), (4, 12), (4, 12, 15)), (3, 4): ((4, 8), (8,)), (6, 8): ((6,), (6, 10))}
BASS_LINES = {(4, 4): ((0, 4, 8, 12), (0, 6, 8, 14), (0, 3, 8, 10, 12)),
              (3, 4): ((0, 4, 8), (0, 6, 8)), (6, 8): ((0, 6, 10), (0, 4, 6, 10))}
FILL_DRUMS = (38, 41, 43, 45, 47, 48, 50)


@dataclass(frozen=True)
class _Section:
    """A run of bars sharing tempo, active classes, dynamics and density (0 sparse .. 2 busy)."""

    start: int              # first tick
    first_bar: int          # index of its first bar in the song
    bars: int
    bpm: float
    active: frozenset[str]
    velocity: int           # base velocity
    crescendo: bool
    density: int


@dataclass(frozen=True)
class _Plan:
    """Song-wide harmony and form; a bar is ``steps`` sixteenths, a beat ``beat_steps``."""

    tonic: int              # pitch class 0..11
    minor: bool
    meter: tuple[int, int]
    steps: int
    beat_steps: int
    progression: tuple[int, ...]
    chord_bars: int         # bars per chord
    bars: int
    sections: tuple[_Section, ...]

    @property
    def bar_ticks(self) -> int:
        return self.steps * STEP


class _Part:
    """Timed events of one track; ``track()`` sorts them into delta-time mido messages."""

    def __init__(self, name: str, channel: int = 0, program: int | None = None) -> None:
        self.name, self.channel, self.program = name, channel, program
        self.events: list[tuple[int, int, mido.Message | mido.MetaMessage]] = []
        if program is not None:
            self.add(0, mido.Message("program_change", channel=channel, program=program))

    def add(self, tick: int, msg: mido.Message | mido.MetaMessage, order: int = 1) -> None:
        """Queue ``msg`` at ``tick``; at equal ticks note-offs (0) go before others (1) and note-ons (2)."""
        self.events.append((int(tick), order, msg))

    def note(self, start: int, dur: int, pitch: int, velocity: int) -> None:
        pitch, velocity = int(np.clip(pitch, 0, 127)), int(np.clip(velocity, 1, 127))
        self.add(start, mido.Message("note_on", channel=self.channel, note=pitch, velocity=velocity), 2)
        self.add(start + max(int(dur), 1), mido.Message("note_off", channel=self.channel, note=pitch), 0)

    def control(self, tick: int, control: int, value: int) -> None:
        self.add(tick, mido.Message("control_change", channel=self.channel, control=control, value=value))

    def bend_ramp(self, tick: int, dur: int, start: int, stop: int, points: int = 8) -> None:
        """Pitch wheel glides linearly from ``start`` to ``stop`` (-8192..8191) over ``dur`` ticks."""
        for k in range(points + 1):
            value = round(start + (stop - start) * k / points)
            self.add(tick + dur * k // points, mido.Message("pitchwheel", channel=self.channel, pitch=value))

    def track(self, end_tick: int) -> mido.MidiTrack:
        out = mido.MidiTrack([mido.MetaMessage("track_name", name=self.name)])
        now = 0
        for tick, _, msg in sorted(self.events, key=lambda e: (e[0], e[1])):
            out.append(msg.copy(time=tick - now))
            now = tick
        out.append(mido.MetaMessage("end_of_track", time=max(0, end_tick - now)))
        return out


def _velocity(rng: np.random.Generator, sec: _Section, frac: float, accent: int = 0) -> int:
    """Section base + crescendo ramp (``frac`` = position 0..1 in the section) + accent + jitter."""
    swell = (frac - 0.75) * 40 if sec.crescendo else 0.0
    return int(np.clip(sec.velocity + swell + accent + rng.integers(-6, 7), 1, 127))


def _chord(plan: _Plan, bar: int) -> tuple[int, int, int]:
    """Pitch classes (root, third, fifth) of the diatonic triad at song bar ``bar``; the last bar is the tonic."""
    degree = 0 if bar == plan.bars - 1 else plan.progression[(bar // plan.chord_bars) % len(plan.progression)]
    scale = MINOR if plan.minor else MAJOR
    return tuple((plan.tonic + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4))


def _voice(pcs: tuple[int, ...], low: int) -> list[int]:
    """Root-position close voicing: root in [low, low+11], the rest within the octave above it."""
    root = low + (pcs[0] - low) % 12
    return [root + (pc - root) % 12 for pc in pcs]


def _active_sets(rng: np.random.Generator, n: int) -> list[frozenset[str]]:
    """Classes sounding in each of ``n`` sections: each class in at least half of them, some rests."""
    sets = [set(PART_NAMES) for _ in range(n)]
    for s in sets:
        if rng.random() < 0.45:
            s.difference_update(rng.choice(PART_NAMES, size=int(rng.integers(1, 3)), replace=False).tolist())
    need = max(2, (n + 1) // 2)
    for name in PART_NAMES:
        missing = [i for i in range(n) if name not in sets[i]]
        for i in rng.permutation(missing)[: max(0, need - (n - len(missing)))]:
            sets[int(i)].add(name)
    if all(len(s) == len(PART_NAMES) for s in sets):
        sets[int(rng.integers(n))].discard(str(rng.choice(PART_NAMES)))
    return [frozenset(s) for s in sets]


def _plan(rng: np.random.Generator) -> _Plan:
    """Key, meter, progression and 4-bar sections (42-72 s, then one closing bar; tempo may change once)."""
    minor = bool(rng.random() < 0.4)
    meter = METERS[int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
    quarters = (4 if meter == (4, 4) else 3)
    bpm, target = float(rng.integers(70, 171)), rng.uniform(42, 72)
    change_at = int(rng.integers(2, 5)) if rng.random() < 0.3 else -1
    tempi, seconds = [], 0.0
    while seconds < target:
        if len(tempi) == change_at:
            bpm = float(np.clip(round(bpm * rng.uniform(0.8, 1.25)), 70, 170))
        tempi.append(bpm)
        seconds += 4 * quarters * 60 / bpm
    actives = _active_sets(rng, len(tempi)) + [frozenset(PART_NAMES)]
    tempi.append(bpm)
    density = int(rng.integers(0, 3))
    progs = PROGRESSIONS[int(minor)]
    sections, bar = [], 0
    for k, (bpm, active) in enumerate(zip(tempi, actives)):
        bars = 1 if k == len(tempi) - 1 else 4
        sec_density = 0 if bars == 1 else int(np.clip(density + rng.integers(-1, 2), 0, 2))
        sections.append(_Section(bar * quarters * TPB, bar, bars, bpm, active, int(rng.integers(55, 111)),
                                 bool(rng.random() < 0.3), sec_density))
        bar += bars
    return _Plan(int(rng.integers(12)), minor, meter, 4 * quarters, 6 if meter == (6, 8) else 4,
                 progs[int(rng.integers(len(progs)))], int(rng.choice((1, 1, 2))), bar, tuple(sections))


def _bar_starts(plan: _Plan, sec: _Section):
    """Yield (song bar, first tick) of each bar in ``sec``."""
    for bar in range(sec.bars):
        yield sec.first_bar + bar, sec.start + bar * plan.bar_ticks


def _meta_part(plan: _Plan, index: int) -> _Part:
    part = _Part(f"stemstream demo {index:03d}")
    part.add(0, mido.MetaMessage("time_signature", numerator=plan.meter[0], denominator=plan.meter[1]))
    part.add(0, mido.MetaMessage("key_signature", key=KEY_NAMES[int(plan.minor)][plan.tonic]))
    previous = None
    for sec in plan.sections:
        if sec.bpm != previous:
            part.add(sec.start, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(sec.bpm)))
            previous = sec.bpm
    return part


def _drum_part(rng: np.random.Generator, plan: _Plan) -> _Part:
    """Kick/snare/hat grooves per section, crash on each section start, sometimes a tom fill."""
    part = _Part("drums", 9)
    for sec in (s for s in plan.sections if "drums" in s.active):
        kicks, snares = KICKS[plan.meter], SNARES[plan.meter]
        hits = ((set(kicks[int(rng.integers(len(kicks)))]), 36, 10),
                (set(snares[int(rng.integers(len(snares)))]), 38, 5),
                (set(range(0, plan.steps, (plan.beat_steps, 2, 1)[sec.density])), int(rng.choice((42, 42, 44, 51))), -15))
        for bar, t0 in _bar_starts(plan, sec):
            fill = sec.bars > 1 and bar == sec.first_bar + sec.bars - 1 and rng.random() < 0.4
            if bar == sec.first_bar:
                part.note(t0, STEP, 49, _velocity(rng, sec, 0.0, 15))
            for s in range(plan.steps):
                t, frac = t0 + s * STEP, (bar - sec.first_bar + s / plan.steps) / sec.bars
                if fill and s >= plan.steps // 2:
                    part.note(t, STEP // 2, int(rng.choice(FILL_DRUMS)), _velocity(rng, sec, frac, 5))
                    continue
                for steps, pitch, accent in hits:
                    if s in steps:
                        part.note(t, STEP // 2, pitch, _velocity(rng, sec, frac, accent))
    return part


def _piano_part(rng: np.random.Generator, plan: _Plan, program: int) -> _Part:
    """Left-hand chords (40-59) and a right-hand arpeggio (60-79); sustain pedal re-pressed each bar."""
    part = _Part("piano", 0, program)
    pedal, shape = rng.random() < 0.6, int(rng.integers(3))
    for sec in (s for s in plan.sections if "piano" in s.active):
        step = (4, 2, 1)[sec.density] * STEP
        chord_len = plan.bar_ticks // (2 if sec.density and plan.meter != (3, 4) else 1)
        for bar, t0 in _bar_starts(plan, sec):
            pcs, frac = _chord(plan, bar), (bar - sec.first_bar) / sec.bars
            for t in range(t0, t0 + plan.bar_ticks, chord_len):
                for p in _voice(pcs, 40):
                    part.note(t, chord_len - 10, p, _velocity(rng, sec, frac, -5))
            tones = [p for p in range(60, 80) if p % 12 in pcs]
            order = (tones, tones[::-1], tones + tones[-2:0:-1])[shape]
            for k, t in enumerate(range(t0, t0 + plan.bar_ticks, step)):
                part.note(t, step - 10, order[k % len(order)], _velocity(rng, sec, frac, 5 if k == 0 else 0))
            if pedal:
                part.control(t0 + 10, 64, 127)
                part.control(t0 + plan.bar_ticks - 5, 64, 0)
    return part


def _strings_part(rng: np.random.Generator, plan: _Plan, program: int) -> _Part:
    """Sustained chords (52-75) re-bowed each bar or half bar, sometimes scooped with a pitch bend."""
    part = _Part("strings", 1, program)
    scoop = rng.random() < 0.35
    for sec in (s for s in plan.sections if "strings" in s.active):
        length = plan.bar_ticks // (2 if sec.density == 2 and plan.meter == (4, 4) else 1)
        for bar, t0 in _bar_starts(plan, sec):
            pcs, frac = _chord(plan, bar), (bar - sec.first_bar) / sec.bars
            pitches = _voice(pcs, 52)
            pitches += [pitches[0] + 12] if sec.density else []
            for t in range(t0, t0 + plan.bar_ticks, length):
                for p in pitches:
                    part.note(t, length - 5, p, _velocity(rng, sec, frac, -10))
                if scoop and rng.random() < 0.25:
                    part.bend_ramp(t, TPB, -1500, 0)
    return part


def _bass_part(rng: np.random.Generator, plan: _Plan, program: int) -> _Part:
    """Root/fifth/octave lines (28-51) following the chords, sometimes sliding into the downbeat."""
    part = _Part("bass", 2, program)
    slides = rng.random() < 0.5
    for sec in (s for s in plan.sections if "bass" in s.active):
        lines = BASS_LINES[plan.meter]
        line = tuple(range(0, plan.steps, 2)) if sec.density == 2 else lines[int(rng.integers(len(lines)))]
        for bar, t0 in _bar_starts(plan, sec):
            root, frac = 28 + (_chord(plan, bar)[0] - 28) % 12, (bar - sec.first_bar) / sec.bars
            for k, s in enumerate(line):
                end = line[k + 1] if k + 1 < len(line) else plan.steps
                pitch = root if k == 0 or rng.random() < 0.6 else root + int(rng.choice((7, 12)))
                part.note(t0 + s * STEP, (end - s) * STEP - 20, pitch, _velocity(rng, sec, frac, 10 if k == 0 else 0))
            if slides and rng.random() < 0.2:
                part.bend_ramp(t0, 2 * STEP, -4096, 0)
    return part


def _distractor_part(rng: np.random.Generator, plan: _Plan, family: str, channel: int) -> _Part:
    """An instrument of no class (organ pad, guitar strums, brass stabs or a lead melody) in some sections."""
    part = _Part(family, channel, int(rng.choice(DISTRACTOR_FAMILIES[family])))
    body = plan.sections[:-1]
    playing = rng.random(len(body)) < 0.65
    playing[int(rng.integers(len(body)))] = True
    scale = MINOR if plan.minor else MAJOR
    melody = [p for p in range(67, 87) if (p - plan.tonic) % 12 in scale]
    idx, beat = len(melody) // 2, plan.beat_steps * STEP
    for sec in (s for s, on in zip(body, playing) if on):
        for bar, t0 in _bar_starts(plan, sec):
            pcs, frac = _chord(plan, bar), (bar - sec.first_bar) / sec.bars
            vel = _velocity(rng, sec, frac, -15)
            if family == "organ":
                for p in _voice(pcs, 48):
                    part.note(t0, plan.bar_ticks - 10, p, vel)
            elif family == "guitar":
                strum = _voice(pcs, 52) + [_voice(pcs, 52)[0] + 12]
                for t in range(t0, t0 + plan.bar_ticks, beat):
                    for k, p in enumerate(strum):
                        part.note(t + 12 * k, beat - 12 * k - 20, p, vel)
            elif family == "brass":
                for t in range(t0 + beat // 2, t0 + plan.bar_ticks, beat):
                    for p in _voice(pcs, 55):
                        part.note(t, 2 * STEP - 10, p, vel)
            else:
                for t in range(t0, t0 + plan.bar_ticks, 2 * STEP):
                    idx = int(np.clip(idx + rng.integers(-2, 3), 0, len(melody) - 1))
                    if rng.random() < 0.7:
                        part.note(t, 2 * STEP - 10, melody[idx], vel)
    return part


def _change_program(rng: np.random.Generator, plan: _Plan, part: _Part) -> None:
    """Switch ``part`` to another program of its class at the start of a middle section."""
    sec = plan.sections[int(rng.integers(1, len(plan.sections) - 1))]
    program = int(rng.choice([p for p in CLASS_PROGRAMS[part.name] if p != part.program]))
    part.add(sec.start, mido.Message("program_change", channel=part.channel, program=program))


def make_demo_song(rng: np.random.Generator, index: int) -> pretty_midi.PrettyMIDI:
    """One General MIDI song of about 40-90 s: drums, piano, strings, bass and 1-2 distractors.

    ``index`` only names the song (meta track name); everything else is drawn from ``rng``.
    """
    plan = _plan(rng)
    parts = [_drum_part(rng, plan)]
    for name, build in (("piano", _piano_part), ("strings", _strings_part), ("bass", _bass_part)):
        parts.append(build(rng, plan, int(rng.choice(CLASS_PROGRAMS[name]))))
    families = rng.choice(list(DISTRACTOR_FAMILIES), size=int(rng.integers(1, 3)), replace=False)
    parts += [_distractor_part(rng, plan, str(fam), 3 + k) for k, fam in enumerate(families)]
    if rng.random() < 0.35:
        _change_program(rng, plan, parts[int(rng.integers(1, 4))])
    midi = mido.MidiFile(type=1, ticks_per_beat=TPB)
    midi.tracks.extend(p.track(plan.bars * plan.bar_ticks) for p in [_meta_part(plan, index), *parts])
    return pretty_midi.PrettyMIDI(mido_object=midi)


def write_demo_corpus(out: Path, songs: int, seed: int) -> list[Path]:
    """Write ``songs`` files ``out/demo_000.mid`` ...; same seed -> byte-identical files.

    Song ``i`` depends only on ``(seed, i)``, so a larger corpus extends a smaller one.
    Raises ValueError for ``songs < 1``.
    """
    if songs < 1:
        raise ValueError(f"songs must be >= 1, got {songs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, child in enumerate(np.random.SeedSequence(seed).spawn(songs)):
        path = out / f"demo_{index:03d}.mid"
        make_demo_song(np.random.default_rng(child), index).write(str(path))
        paths.append(path)
    return paths
