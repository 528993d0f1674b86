"""Real multitrack songs from folders, mapped onto our instrument classes.

``DIR`` is one song folder or holds song folders up to three levels down (e.g.
``MUSDB18-HQ/test/<song>/`` or ``slakh2100/test/TrackXXXXX/``). Layouts:

* MUSDB18-HQ: ``mixture.wav`` and ``drums.wav``, ``bass.wav``, ``other.wav``, ``vocals.wav``; a file
  whose name is a class name is that class (``drums``, ``bass``).
* Slakh2100: ``mix.flac``, ``stems/Sxx.flac`` and ``metadata.yaml`` (``stems: {Sxx: {program_num,
  is_drum, inst_class, audio_rendered}}``); a stem is the class its MIDI program belongs to, exactly
  as the renderer assigns instruments (``InstrumentClass.matches``).

A mapping file (TOML) overrides the defaults by source name (MUSDB file stem, Slakh ``inst_class``
or stem id)::

    [map]
    Piano = "piano"          # source -> class
    vocals = ""              # "" : outside the classes

Sources outside the classes stay in the mixture (the model must ignore them) unless
``exclude_other``, which makes the mixture the sum of the mapped stems. Several sources of one
class are summed; a class with no source is a silent reference (skipped and counted when scored).
Audio is averaged to mono and resampled to the model's rate with ``trainer separate``'s resampler.
Each song is one excerpt, scored whole, loaded only when it is scored.
"""
from __future__ import annotations

import logging
import tomllib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from synth_server.config import InstrumentClass, class_of

from ..separate import read_mono, resample
from .material import Excerpt

log = logging.getLogger(__name__)

MUSDB_MIX, SLAKH_MIX, SLAKH_META = "mixture.wav", "mix.flac", "metadata.yaml"
SEARCH_DEPTH = 3        # e.g. DIR/musdb18hq/test/<song>/


def layout_of(folder: Path) -> str | None:
    """``"musdb"``, ``"slakh"`` or None for a folder that is neither."""
    if (folder / SLAKH_META).is_file() and (folder / "stems").is_dir():
        return "slakh"
    if (folder / MUSDB_MIX).is_file():
        return "musdb"
    return None


def song_folders(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Song folders at ``root`` or up to ``depth`` levels below it (not inside a song), sorted by
    path; ValueError when none."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--stems-dir {root}: no such folder")
    found, level = [], [root]
    for _ in range(depth + 1):
        songs = [p for p in level if layout_of(p)]
        found += songs
        level = sorted(q for p in level if p not in songs for q in p.iterdir() if q.is_dir())
    found.sort()
    if not found:
        raise ValueError(f"--stems-dir {root}: no song folder in MUSDB18-HQ ({MUSDB_MIX} + stem wavs) or "
                         f"Slakh2100 ({SLAKH_MIX}, stems/, {SLAKH_META}) layout")
    return found


def load_mapping(path: Path | None) -> dict[str, str | None]:
    """Source name -> class name (None: outside the classes) from a ``[map]`` TOML table."""
    if path is None:
        return {}
    try:
        table = tomllib.loads(Path(path).read_text()).get("map")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read stems map {path}: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError(f"{path}: expected a [map] table of source = \"class\" (\"\" for none)")
    return {str(k): (v or None) for k, v in table.items()}


def sources_of(folder: Path, classes: tuple[InstrumentClass, ...],
               mapping: dict[str, str | None]) -> tuple[list[tuple[Path, str | None]], Path | None]:
    """(audio file, class name or None) per source, and the mixture file (None: sum the sources)."""
    names = {c.name for c in classes}
    if layout_of(folder) == "musdb":
        files = sorted(p for p in folder.glob("*.wav") if p.name != MUSDB_MIX)
        pairs = [(p, mapping.get(p.stem, p.stem if p.stem in names else None)) for p in files]
        mix = folder / MUSDB_MIX
    else:
        import yaml

        try:
            meta = yaml.safe_load((folder / SLAKH_META).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{folder / SLAKH_META}: {exc}") from None
        pairs = []
        for stem_id, info in sorted((meta.get("stems") or {}).items()):
            path = folder / "stems" / f"{stem_id}.flac"
            if not path.is_file() or not info.get("audio_rendered", True):
                continue
            default = class_of(classes, int(info.get("program_num", 0)), bool(info.get("is_drum", False)))
            key = stem_id if stem_id in mapping else str(info.get("inst_class"))
            pairs.append((path, mapping.get(key, default)))
        mix = folder / SLAKH_MIX
    unknown = {c for _, c in pairs if c is not None and c not in names}
    if unknown:
        raise ValueError(f"{folder}: stems map names classes {sorted(unknown)}, the model has {sorted(names)}")
    return pairs, (mix if mix.is_file() else None)


def _mono_at(path: Path, rate: int) -> np.ndarray:
    mono, src, _channels = read_mono(path)
    return (mono if src == rate else resample(mono, src, rate)).astype(np.float32)


def load_song(folder: Path, classes: tuple[InstrumentClass, ...], rate: int, mapping: dict[str, str | None],
              exclude_other: bool, counters: Counter) -> Excerpt:
    """One song folder -> an Excerpt: references (classes, time) and the mixture, at ``rate``."""
    pairs, mix_file = sources_of(folder, classes, mapping)
    waves = [(_mono_at(path, rate), cls) for path, cls in pairs]
    if not waves:
        raise ValueError(f"{folder}: no stem file")
    length = min(len(w) for w, _ in waves)
    mixture = None if (exclude_other or mix_file is None) else _mono_at(mix_file, rate)
    if mixture is not None:
        length = min(length, len(mixture))
    stems = np.zeros((len(classes), length), np.float32)
    index = {c.name: i for i, c in enumerate(classes)}
    rest = np.zeros(length, np.float32)
    for wave, cls in waves:
        if cls is None:
            counters["sources_outside_classes"] += 1
            rest += wave[:length]
        else:
            stems[index[cls]] += wave[:length]
    if mixture is None:
        mixture = stems.sum(0) + (0 if exclude_other else rest)
    else:
        mixture = mixture[:length]
    counters["songs"] += 1
    return Excerpt(id=folder.name, song=folder.name, path=str(folder), start=0, sample_rate=rate,
                   stems=stems, mixture=np.ascontiguousarray(mixture, np.float32), soundfont=None)


class StemsDir:
    """The songs of a stems folder as a sized iterable of Excerpts, each loaded when reached."""

    def __init__(self, root: Path, classes: tuple[InstrumentClass, ...], rate: int, mapping_file: Path | None,
                 exclude_other: bool, counters: Counter, limit: int | None = None) -> None:
        self.folders = song_folders(root)[:limit]
        self.classes, self.rate, self.exclude_other, self.counters = classes, rate, exclude_other, counters
        self.mapping = load_mapping(mapping_file)

    def __len__(self) -> int:
        return len(self.folders)

    def __iter__(self) -> Iterator[Excerpt]:
        for folder in self.folders:
            yield load_song(folder, self.classes, self.rate, self.mapping, self.exclude_other, self.counters)
