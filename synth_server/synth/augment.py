"""What one excerpt's augmentation draws: soundfont and preset per stem, MIDI changes, effect
chains, level offsets. Pure draws from the caller's seeded generator (no audio, no FluidSynth).

``draw_excerpt`` consumes the generator in a fixed order, so a seed reproduces every draw;
``ExcerptDraw.meta`` is the record each chunk of the excerpt carries.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from synth_server.augment_config import EFFECTS, AugmentConfig
from synth_server.config import InstrumentClass
from synth_server.synth.soundfont import SoundfontInfo, named, song_hash


@dataclass(frozen=True)
class StemVoice:
    """How a stem's instruments are voiced: soundfont index in the bank; ``bank``/``program``
    override the song's (None keeps them: bank 128 for drums, 0 otherwise)."""

    soundfont: int
    bank: int | None = None
    program: int | None = None


@dataclass(frozen=True)
class MidiDraw:
    """MIDI-level changes of one excerpt (``midi_augment.apply``); the identity by default."""

    transpose: int = 0
    tempo: float = 1.0
    velocity_scale: float = 1.0
    velocity_gamma: float = 1.0
    jitter_ms: float = 0.0
    jitter_seed: int = 0

    @property
    def identity(self) -> bool:
        return (self.transpose == 0 and self.tempo == 1.0 and self.velocity_scale == 1.0
                and self.velocity_gamma == 1.0 and self.jitter_ms == 0.0)


Effect = tuple[str, dict]     # (name in EFFECTS, parameters)


@dataclass
class ExcerptDraw:
    """Per stem (in class order): ``voices``, ``effects`` chains, ``level_db`` offsets (None: levels
    off); ``gain_db`` is filled in by the pipeline with the gains it applied."""

    voices: list[StemVoice]
    midi: MidiDraw
    effects: list[list[Effect]]
    level_db: list[float] | None
    gain_db: list[float] | None = None
    names: list[str] = field(default_factory=list)        # soundfont name per stem
    preset_names: list[str | None] = field(default_factory=list)

    def meta(self, classes: tuple[InstrumentClass, ...], preset: str) -> dict:
        """JSON-able record of the draw (what a chunk's metadata carries)."""
        stems = {}
        for i, cls in enumerate(classes):
            v = self.voices[i]
            stems[cls.name] = {
                "soundfont": self.names[i], "bank": v.bank, "program": v.program, "preset_name": self.preset_names[i],
                "effects": [[name, params] for name, params in self.effects[i]],
                "level_offset_db": None if self.level_db is None else self.level_db[i],
                "gain_db": None if self.gain_db is None else self.gain_db[i]}
        m = self.midi
        return {"preset": preset, "transpose": m.transpose, "tempo": m.tempo,
                "velocity": [m.velocity_scale, m.velocity_gamma], "jitter_ms": m.jitter_ms, "stems": stems}


def _r(x: float) -> float:
    """Drawn values are rounded before use, so the recorded parameters reproduce the audio."""
    return float(f"{x:.4g}")


def usable_soundfonts(bank: list[SoundfontInfo], cfg: AugmentConfig, split: str) -> list[int]:
    """Bank indices a split may draw from: the train split never uses the held-out soundfonts."""
    held = [named(sf.path, cfg.soundfont.holdout) for sf in bank]
    return [i for i in range(len(bank)) if not (split == "train" and held[i])]


def _preferred(bank, cfg: AugmentConfig, split: str) -> tuple[list[int], list[int]]:
    usable = usable_soundfonts(bank, cfg, split)
    if cfg.soundfont.pool == "holdout" and split != "train":
        held = [i for i in usable if named(bank[i].path, cfg.soundfont.holdout)]
        return held, usable
    return usable, usable


def _pick(candidates: list[int], rng: np.random.Generator) -> int:
    return candidates[int(rng.integers(len(candidates)))]


def _draw_range(lo_hi, rng) -> float:
    return _r(rng.uniform(lo_hi[0], lo_hi[1]))


def draw_effects(cfg: AugmentConfig, cls_name: str, rng: np.random.Generator) -> list[Effect]:
    """The effect chain of one stem, in ``EFFECTS`` order; each effect fires with its ``p``."""
    chain = []
    for name in EFFECTS:
        knob = getattr(cfg, name)
        fires = rng.random() < knob.p
        if not fires or (knob.classes and cls_name not in knob.classes):
            continue
        params = {f.name: _draw_range(getattr(knob, f.name), rng) for f in dataclasses.fields(knob)
                  if f.name not in ("p", "classes")}
        chain.append((name, params))
    return chain


def draw_midi(cfg: AugmentConfig, rng: np.random.Generator) -> MidiDraw:
    t, tempo, vel, jit = cfg.transpose, cfg.tempo, cfg.velocity, cfg.jitter
    out = {}
    if rng.random() < t.p and t.semitones:
        out["transpose"] = int(rng.integers(-t.semitones, t.semitones + 1))
    if rng.random() < tempo.p:
        out["tempo"] = _draw_range(tempo.range, rng)
    if rng.random() < vel.p:
        out["velocity_scale"], out["velocity_gamma"] = _draw_range(vel.scale, rng), _draw_range(vel.gamma, rng)
    if rng.random() < jit.p and jit.ms > 0:
        out["jitter_ms"], out["jitter_seed"] = float(jit.ms), int(rng.integers(1 << 62))
    return MidiDraw(**out)


def _voice(cls: InstrumentClass, programs: set[int], cfg: AugmentConfig, bank, prefer, usable, base: int,
           rng: np.random.Generator) -> tuple[StemVoice, str | None]:
    """One stem's soundfont and preset (and the preset's name where known)."""
    substitute = rng.random() < (cfg.drum_kit.p if cls.is_drum else cfg.program.p)
    if cls.is_drum:
        ok = lambda i: bool(bank[i].kits)                                   # noqa: E731
    else:
        ok = lambda i: not bank[i].drum_only and (                          # noqa: E731
            bool(set(cls.programs) & bank[i].melodic) if substitute else programs <= bank[i].melodic)
    sf = base
    if rng.random() < cfg.soundfont.p or not ok(base):
        candidates = [i for i in prefer if ok(i)] or [i for i in usable if ok(i)]
        sf = _pick(candidates, rng) if candidates else base
    info = bank[sf]
    if cls.is_drum:
        kits = dict(info.kits)
        bank_no = 0 if info.drum_only else None
        choices = sorted(kits) if info.drum_only else sorted(set(kits) & set(cfg.drum_kit.programs))
        if substitute and choices:
            program = _pick(choices, rng)
        else:
            program = min(kits) if info.drum_only and kits else None
        return StemVoice(sf, bank_no, program), kits.get(program if program is not None else 0)
    if substitute:
        pool = sorted(set(cls.programs) & info.melodic)
        if pool:
            return StemVoice(sf, None, _pick(pool, rng)), None
    return StemVoice(sf), None


def draw_excerpt(cfg: AugmentConfig, bank: list[SoundfontInfo], classes: tuple[InstrumentClass, ...],
                 split: str, song_id: str, programs: list[set[int]], rng: np.random.Generator) -> ExcerptDraw:
    """Everything one excerpt varies. ``programs[i]``: the song's programs in stem i.

    Stems whose soundfont is not drawn use the song's own: one GM soundfont of the split's pool
    picked by the song's hash (stable across visits).
    """
    prefer, usable = _preferred(bank, cfg, split)
    gm = [i for i in prefer if not bank[i].drum_only] or [i for i in usable if not bank[i].drum_only] or usable
    if not gm:
        raise ValueError("no soundfont usable for this split (all held out?)")
    base = gm[song_hash(song_id) % len(gm)]
    midi = draw_midi(cfg, rng)
    voices, preset_names, effects = [], [], []
    for cls, progs in zip(classes, programs):
        voice, preset_name = _voice(cls, progs, cfg, bank, prefer, usable, base, rng)
        voices.append(voice)
        preset_names.append(preset_name)
        effects.append(draw_effects(cfg, cls.name, rng))
    level = cfg.level
    offsets = ([_r(v) for v in rng.uniform(-level.offset_db, level.offset_db, len(classes))]
               if level.on else None)
    return ExcerptDraw(voices, midi, effects, offsets, names=[bank[v.soundfont].name for v in voices],
                       preset_names=preset_names)
