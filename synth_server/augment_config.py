"""Typed knobs of synthesis-time augmentation (docs/augmentation.md), its presets and its TOML form.

Every knob fires per excerpt (per stem where it says so) with probability ``p`` and draws its
values uniformly from ``(low, high)`` ranges. ``AugmentConfig()`` is ``none``: every knob off,
the pipeline then renders exactly as without augmentation. ``PRESETS`` holds ``none``, ``light``
and ``full``; ``DEFAULT_PRESET`` is what the CLI uses. A TOML ``[augment.KNOB]`` table overrides
fields of a preset (``apply_table``); the same code rebuilds the config a worker gets in its welcome.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Range = tuple[float, float]
POOLS = ("all", "holdout")


@dataclass(frozen=True)
class SoundfontKnob:
    """Per stem: a soundfont from the bank (``p``), else the song's own (picked by hash).

    ``holdout``: soundfont names (file name or stem) the train split never uses. ``pool``
    ``"holdout"`` renders valid/test stems only from the held-out soundfonts (stems none of them
    can play fall back to the others).
    """

    p: float = 0.0
    holdout: tuple[str, ...] = ()
    pool: str = "all"


@dataclass(frozen=True)
class ProgramKnob:
    """Per pitched stem: one program drawn from its class's programs replaces the song's."""

    p: float = 0.0


@dataclass(frozen=True)
class DrumKitKnob:
    """Drum stem: a random kit among the chosen soundfont's bank-128 presets numbered in
    ``programs`` (the GS/GM2 drum kits: Standard, Room, Power, Electronic, TR-808, Jazz, Brush,
    Orchestra; other bank-128 presets, e.g. SFX or single-instrument sets, often leave GM drum
    notes silent)."""

    p: float = 0.0
    programs: tuple[int, ...] = (0, 8, 16, 24, 25, 32, 40, 48)


@dataclass(frozen=True)
class TransposeKnob:
    """All pitched stems by the same whole number of semitones in ``-semitones..semitones``."""

    p: float = 0.0
    semitones: int = 0


@dataclass(frozen=True)
class TempoKnob:
    """Event times divided by a factor from ``range`` (1.25: 25 % faster)."""

    p: float = 0.0
    range: Range = (1.0, 1.0)


@dataclass(frozen=True)
class VelocityKnob:
    """Velocities ``v -> 127 * scale * (v / 127) ** gamma``, clipped to 1..127."""

    p: float = 0.0
    scale: Range = (1.0, 1.0)
    gamma: Range = (1.0, 1.0)


@dataclass(frozen=True)
class JitterKnob:
    """Each note's on and off shifted by one normal draw of std ``ms`` (clipped to 3 std)."""

    p: float = 0.0
    ms: float = 0.0


@dataclass(frozen=True)
class LevelKnob:
    """Each stem's RMS over the excerpt to ``target_db`` dBFS plus an offset from
    ``(-offset_db, offset_db)``; a gain never exceeds ``max_boost_db`` (sparse stems)."""

    on: bool = False
    target_db: float = -30.0
    offset_db: float = 0.0
    max_boost_db: float = 24.0


@dataclass(frozen=True)
class EqKnob:
    """Low shelf, peak and high shelf filters with random gains and frequencies."""

    p: float = 0.0
    classes: tuple[str, ...] = ()              # empty: every stem
    low_hz: Range = (60.0, 250.0)
    mid_hz: Range = (300.0, 3000.0)
    high_hz: Range = (3000.0, 10000.0)
    gain_db: Range = (-6.0, 6.0)
    q: Range = (0.5, 2.0)


@dataclass(frozen=True)
class CompressorKnob:
    p: float = 0.0
    classes: tuple[str, ...] = ()
    threshold_db: Range = (-40.0, -20.0)       # stems sit near -35 dBFS before levelling
    ratio: Range = (2.0, 6.0)
    attack_ms: Range = (1.0, 30.0)
    release_ms: Range = (50.0, 300.0)


@dataclass(frozen=True)
class DistortionKnob:
    p: float = 0.0
    classes: tuple[str, ...] = ("bass",)
    drive_db: Range = (20.0, 40.0)             # tanh drive on a ~-35 dBFS stem


@dataclass(frozen=True)
class ChorusKnob:
    p: float = 0.0
    classes: tuple[str, ...] = ("piano", "strings")
    rate_hz: Range = (0.3, 2.0)
    depth: Range = (0.1, 0.4)
    mix: Range = (0.2, 0.5)


@dataclass(frozen=True)
class ReverbKnob:
    p: float = 0.0
    classes: tuple[str, ...] = ()
    room_size: Range = (0.1, 0.8)
    damping: Range = (0.2, 0.8)
    wet_level: Range = (0.05, 0.35)
    width: Range = (0.5, 1.0)


EFFECTS = ("eq", "compressor", "distortion", "chorus", "reverb")   # chain order


@dataclass(frozen=True)
class AugmentConfig:
    preset: str = "none"          # the preset this was built from (recorded, not read)
    soundfont: SoundfontKnob = field(default_factory=SoundfontKnob)
    program: ProgramKnob = field(default_factory=ProgramKnob)
    drum_kit: DrumKitKnob = field(default_factory=DrumKitKnob)
    transpose: TransposeKnob = field(default_factory=TransposeKnob)
    tempo: TempoKnob = field(default_factory=TempoKnob)
    velocity: VelocityKnob = field(default_factory=VelocityKnob)
    jitter: JitterKnob = field(default_factory=JitterKnob)
    level: LevelKnob = field(default_factory=LevelKnob)
    eq: EqKnob = field(default_factory=EqKnob)
    compressor: CompressorKnob = field(default_factory=CompressorKnob)
    distortion: DistortionKnob = field(default_factory=DistortionKnob)
    chorus: ChorusKnob = field(default_factory=ChorusKnob)
    reverb: ReverbKnob = field(default_factory=ReverbKnob)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            knob = getattr(self, f.name)
            if dataclasses.is_dataclass(knob):
                _check_knob(f.name, knob)

    @property
    def enabled(self) -> bool:
        """Whether anything is drawn at all (False: today's rendering, bit for bit)."""
        return self.level.on or any(getattr(getattr(self, f.name), "p", 0.0) > 0
                                    for f in dataclasses.fields(self) if f.name != "preset")

    @property
    def effects_enabled(self) -> bool:
        return any(getattr(self, name).p > 0 for name in EFFECTS)


def _check_knob(name: str, knob) -> None:
    for f in dataclasses.fields(knob):
        value = getattr(knob, f.name)
        if f.name == "p" and not 0.0 <= value <= 1.0:
            raise ValueError(f"augment.{name}.p must be in 0..1, got {value}")
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            if value[0] > value[1]:
                raise ValueError(f"augment.{name}.{f.name}: low {value[0]} > high {value[1]}")
    if name == "soundfont" and knob.pool not in POOLS:
        raise ValueError(f"augment.soundfont.pool must be one of {POOLS}, got {knob.pool!r}")
    if name == "tempo" and knob.range[0] <= 0:
        raise ValueError("augment.tempo.range must be > 0")
    if name == "transpose" and not 0 <= knob.semitones <= 24:
        raise ValueError("augment.transpose.semitones must be in 0..24")
    if name == "jitter" and knob.ms < 0:
        raise ValueError("augment.jitter.ms must be >= 0")


def _preset(name: str, **knobs) -> AugmentConfig:
    return AugmentConfig(preset=name, **knobs)


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # timbre variety (cheap: soundfonts, programs, kits), mild MIDI changes, deliberate levels and
    # a few cheap effects; costs little over none (docs/benchmarks.md)
    "light": _preset(
        "light", soundfont=SoundfontKnob(p=1.0), program=ProgramKnob(p=0.3), drum_kit=DrumKitKnob(p=0.3),
        transpose=TransposeKnob(p=0.5, semitones=2), tempo=TempoKnob(p=0.5, range=(0.9, 1.1)),
        velocity=VelocityKnob(p=0.5, scale=(0.85, 1.15), gamma=(0.8, 1.25)), jitter=JitterKnob(p=0.3, ms=3.0),
        level=LevelKnob(on=True, offset_db=3.0), eq=EqKnob(p=0.3, gain_db=(-4.0, 4.0)),
        compressor=CompressorKnob(p=0.2), distortion=DistortionKnob(p=0.1), chorus=ChorusKnob(p=0.1),
        reverb=ReverbKnob(p=0.2)),
    # everything, often and wide
    "full": _preset(
        "full", soundfont=SoundfontKnob(p=1.0), program=ProgramKnob(p=0.7), drum_kit=DrumKitKnob(p=0.7),
        transpose=TransposeKnob(p=0.8, semitones=4), tempo=TempoKnob(p=0.8, range=(0.8, 1.25)),
        velocity=VelocityKnob(p=0.8, scale=(0.7, 1.3), gamma=(0.6, 1.6)), jitter=JitterKnob(p=0.5, ms=8.0),
        level=LevelKnob(on=True, offset_db=6.0), eq=EqKnob(p=0.6), compressor=CompressorKnob(p=0.5),
        distortion=DistortionKnob(p=0.3), chorus=ChorusKnob(p=0.3), reverb=ReverbKnob(p=0.6)),
}
DEFAULT_PRESET = "light"


def _coerce(where: str, current: Any, value: Any) -> Any:
    """``value`` in the type of ``current`` (TOML lists -> tuples); ValueError naming ``where``."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false")
        return value
    if isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number")
        if isinstance(current, int):
            if not float(value).is_integer():
                raise ValueError(f"{where} must be a whole number")
            return int(value)
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list")
        is_range = len(current) == 2 and all(isinstance(v, float) for v in current)
        if is_range:
            if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{where} must be [low, high]")
            return (float(value[0]), float(value[1]))
        if current and all(isinstance(v, int) for v in current):
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 127 for v in value):
                raise ValueError(f"{where} must be a list of programs 0..127")
            return tuple(value)
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} must be a list of strings")
        return tuple(value)
    raise ValueError(f"{where}: unsupported setting")


def apply_table(base: AugmentConfig, table: Any, where: str = "augment") -> AugmentConfig:
    """``base`` with the knobs of ``table`` (``{knob: {field: value}}``) replaced; unknown names,
    wrong types and out-of-range values raise ValueError naming the setting."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    changes: dict[str, Any] = {}
    for name, sub in table.items():
        if name == "preset":
            if not isinstance(sub, str):
                raise ValueError(f"{where}.preset must be a string")
            changes["preset"] = sub
            continue
        knob = getattr(base, name, None)
        if not dataclasses.is_dataclass(knob):
            raise ValueError(f"{where}: unknown knob {name!r} (knobs: {', '.join(knob_names())})")
        if not isinstance(sub, dict):
            raise ValueError(f"{where}.{name} must be a table")
        fields = {f.name for f in dataclasses.fields(knob)}
        updates = {}
        for key, value in sub.items():
            if key not in fields:
                raise ValueError(f"{where}.{name}: unknown setting {key!r} (settings: {', '.join(sorted(fields))})")
            updates[key] = _coerce(f"{where}.{name}.{key}", getattr(knob, key), value)
        changes[name] = dataclasses.replace(knob, **updates)
    return dataclasses.replace(base, **changes)


def knob_names() -> list[str]:
    return [f.name for f in dataclasses.fields(AugmentConfig) if f.name != "preset"]


def load_augment_toml(path: Path, base: AugmentConfig) -> AugmentConfig:
    """``base`` with the ``[augment.KNOB]`` tables of a TOML file applied."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read augmentation file {path}: {exc}") from None
    if "augment" not in data:
        raise ValueError(f"{path}: expected an [augment.KNOB] table (knobs: {', '.join(knob_names())})")
    return apply_table(base, data["augment"], f"{path}: augment")


def augment_to_dict(cfg: AugmentConfig) -> dict:
    """JSON-able form (for the welcome and run records); ``augment_from_dict`` inverts it."""
    return dataclasses.asdict(cfg)


def augment_from_dict(data: Any) -> AugmentConfig:
    return apply_table(AugmentConfig(), data, "welcome: augment")
