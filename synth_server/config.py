"""Typed configuration for the synthesis server.

The CLI (``synth_server.cli.main``) parses flags once into these dataclasses and passes them down;
no module below the CLI reads argparse or environment variables.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from synth_server.augment_config import AugmentConfig

# AugmentConfig (the augmentation knobs) has its own file, augment_config.py; ChunkSourceConfig carries it
MAX_MIDI_BYTES = 16 << 20     # a MIDI file larger than this is not a song (corpus index, broker, worker)
PARSE_TIMEOUT_S = 20.0       # seconds to parse one MIDI file
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class InstrumentClass:
    """One stem: the MIDI instruments that are rendered together.

    ``programs`` are pretty_midi's 0-based General MIDI program numbers; a drum class matches
    every instrument with ``is_drum`` and ignores programs.
    """

    name: str
    programs: tuple[int, ...] = ()
    is_drum: bool = False

    def matches(self, program: int, is_drum: bool) -> bool:
        if self.is_drum:
            return is_drum
        return (not is_drum) and program in self.programs


DEFAULT_CLASSES: tuple[InstrumentClass, ...] = (
    InstrumentClass("drums", (), True),
    InstrumentClass("piano", tuple(range(0, 8))),
    InstrumentClass("strings", tuple(range(40, 52))),
    InstrumentClass("bass", tuple(range(32, 40))),
)


def class_of(classes: tuple[InstrumentClass, ...], program: int, is_drum: bool) -> str | None:
    """Name of the first class an instrument belongs to, or None (never rendered)."""
    for cls in classes:
        if cls.matches(program, is_drum):
            return cls.name
    return None


def class_instruments(classes: tuple[InstrumentClass, ...], instruments) -> list[list]:
    """Instruments (with ``program``/``is_drum``) grouped per class, in ``classes`` order; an
    instrument of no class is dropped."""
    names = [cls.name for cls in classes]
    groups: list[list] = [[] for _ in classes]
    for inst in instruments:
        name = class_of(classes, inst.program, inst.is_drum)
        if name is not None:
            groups[names.index(name)].append(inst)
    return groups


def parse_programs(text: str) -> tuple[int, ...]:
    """'0-7,16' -> (0, 1, ..., 7, 16). Raises ValueError with the offending part."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad program range {part!r} (expected e.g. '0-7' or '24')") from None
        if not (0 <= a <= b <= 127):
            raise ValueError(f"program range {part!r} outside 0-127")
        out.extend(range(a, b + 1))
    return tuple(out)


def parse_class_spec(spec: str) -> InstrumentClass:
    """'guitar=24-31' or 'drums=drums' -> InstrumentClass."""
    name, sep, progs = spec.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"bad class {spec!r} (expected NAME=PROGRAMS, e.g. guitar=24-31, or drums=drums)")
    if progs.strip() == "drums":
        return InstrumentClass(name.strip(), (), True)
    return InstrumentClass(name.strip(), parse_programs(progs))


def load_classes_toml(path: Path) -> tuple[InstrumentClass, ...]:
    """Read classes from TOML::

        [classes.drums]
        drums = true
        [classes.piano]
        programs = "0-7"
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read classes file {path}: {exc}") from None
    table = data.get("classes")
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a [classes.NAME] table per class")
    out = []
    for name, spec in table.items():
        if spec.get("drums"):
            out.append(InstrumentClass(name, (), True))
        else:
            progs = spec.get("programs", "")
            progs = ",".join(map(str, progs)) if isinstance(progs, list) else str(progs)
            out.append(InstrumentClass(name, parse_programs(progs)))
    return tuple(out)


@dataclass(frozen=True)
class AudioConfig:
    """Sample rate and chunk geometry. A chunk is ``context + target + context`` samples."""

    sample_rate: int = 44100
    target: int = 4410
    context: int = 4096

    @property
    def window(self) -> int:
        return self.context + self.target + self.context


@dataclass(frozen=True)
class RenderConfig:
    """FluidSynth settings. ``soundfont`` is None until resolved (see ``soundfont.resolve``)."""

    soundfont: Path | None = None
    reverb: bool = False
    chorus: bool = False
    gain: float = 0.3
    polyphony: int = 256
    preroll: float = 0.0          # seconds rendered before an excerpt at least (and thrown away)
    preroll_cap: float = 30.0     # seconds at most, though a note sounding at the start began earlier
    excerpt: float = 8.0          # seconds of target audio per excerpt render
    render_timeout: float = 60.0  # seconds; a render that takes longer is cut off
    dynamic_samples: bool = False  # FluidSynth loads samples on preset selection (less RAM, slow switches)


@dataclass(frozen=True)
class FilterConfig:
    """Energy-difference filter on the target region of a chunk.

    - ``silence_db``: reject when the mixture RMS is below this (dBFS).
    - ``single_class_db``: reject when, for some stem s, ``10 log10(|mix - s|^2 / |mix|^2)`` is
      below this (the mixture is nearly that one stem: only one class sounding).
    - ``active_db``: a stem counts as active when its energy relative to the mixture is above this.
    - ``min_active``: reject when fewer stems are active.
    """

    silence_db: float = -45.0
    single_class_db: float = -15.0
    active_db: float = -30.0
    min_active: int = 2


@dataclass(frozen=True)
class CorpusConfig:
    root: Path
    classes: tuple[InstrumentClass, ...] = DEFAULT_CLASSES
    min_notes: int = 8                     # per requested class, for a song to be eligible
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    cache: Path | None = None              # index cache file; None -> ROOT/.stemstream-index.json
    jobs: int = 0                          # parser processes; 0 -> os.cpu_count()
    parse_timeout: float = PARSE_TIMEOUT_S  # seconds per file
    max_file_bytes: int = MAX_MIDI_BYTES

    @property
    def cache_path(self) -> Path:
        return self.cache if self.cache is not None else Path(self.root) / ".stemstream-index.json"


@dataclass(frozen=True)
class ChunkSourceConfig:
    """Everything a worker (or a standalone dump) needs to turn songs into kept chunks."""

    corpus: CorpusConfig
    audio: AudioConfig = field(default_factory=AudioConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # default: none (today's audio)
    split: str = "train"
    max_chunks_per_song: int = 64
    seed: int = 0



def heldout_timbres(source: ChunkSourceConfig, split: str = "test") -> ChunkSourceConfig:
    """``source`` rendering ``split`` (valid or test) with its held-out soundfonts on every stem
    they can play (``augment.soundfont.holdout``): the excerpts of unseen timbres that measure
    generalisation. The other knobs stay as they are."""
    aug = source.augment
    if not aug.soundfont.holdout:
        raise ValueError("no held-out soundfont (set augment.soundfont.holdout / --holdout-soundfont)")
    if split == "train" or split not in SPLITS:
        raise ValueError(f"held-out timbres are for valid or test, not {split!r}")
    knob = dataclasses.replace(aug.soundfont, p=1.0, pool="holdout")
    return dataclasses.replace(source, split=split, augment=dataclasses.replace(aug, soundfont=knob))
