"""Soundfont resolution: the one soundfont of plain rendering, and the bank augmentation draws from.

Plain (``--augment none``) order: ``--soundfont PATH`` (a .sf2 file, or a folder of them: one is
picked per song) -> ``soundfonts/*.sf2`` in the project -> ``/usr/share/sounds/sf2/FluidR3_GM.sf2``
-> the TimGM6mb.sf2 shipped inside pretty_midi. Nothing found -> one error naming all four.

Bank (augmentation on): ``--soundfont PATH`` (a file, or every .sf2/.sf3 of a folder), else the
project's ``soundfonts/`` plus ``DEFAULT_BANK`` (Debian packages; a missing one is skipped with one
log line), else the plain resolution. ``SoundfontInfo`` says what a loaded soundfont can play.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SYSTEM_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DEFAULT_BANK = (  # (path, Debian package)
    (SYSTEM_SOUNDFONT, "fluid-soundfont-gm"),
    (Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), "timgm6mb-soundfont"),
    (Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"), "musescore-general-soundfont-small"),
    (Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"), "avldrums.lv2-soundfont"),
    (Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"), "avldrums.lv2-soundfont"),
)
DRUM_ONLY_MAX_PRESETS = 4   # no bank-128 kit and at most this many bank-0 presets: a drum kit (avldrums)
PROJECT_SOUNDFONTS = Path(__file__).resolve().parents[1] / "soundfonts"


class SoundfontError(FileNotFoundError):
    pass


def _pretty_midi_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def _sf2_in(folder: Path, suffixes: tuple[str, ...] = (".sf2",)) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def song_hash(song_id: str) -> int:
    """A stable number per song (picks a song's own soundfont)."""
    return int.from_bytes(hashlib.sha1(song_id.encode()).digest()[:4], "little")


def soundfont_name(path: Path) -> str:
    """The name a soundfont goes by in metadata and ``--holdout-soundfont``: its file stem."""
    return Path(path).stem


def named(path: Path, names) -> bool:
    """Whether ``path`` is one of ``names`` (file name or stem, case-insensitive)."""
    path = Path(path)
    return any(n.lower() in (path.name.lower(), path.stem.lower()) for n in names)


def resolve_bank(explicit: Path | None, project_dir: Path = PROJECT_SOUNDFONTS) -> list[Path]:
    """The soundfonts augmentation draws from (see the module docstring); non-empty."""
    suffixes = (".sf2", ".sf3")
    if explicit is not None and Path(explicit).is_dir():
        found = _distinct(_sf2_in(Path(explicit), suffixes))
        if not found:
            raise SoundfontError(f"--soundfont {explicit}: folder holds no .sf2/.sf3 file")
        return found
    if explicit is not None:
        return resolve_soundfonts(explicit, project_dir)
    found = _sf2_in(project_dir, suffixes) if project_dir.is_dir() else []
    for path, package in DEFAULT_BANK:
        if path.is_file():
            found.append(path)
        else:
            log.info("soundfont bank: %s missing, skipped (apt install %s)", path, package)
    return _distinct(found) or resolve_soundfonts(None, project_dir)


def _distinct(paths: list[Path]) -> list[Path]:
    """Each file once (Debian's default-GM.sf2 is a link to FluidR3_GM.sf2)."""
    seen, out = set(), []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


@dataclass(frozen=True)
class SoundfontInfo:
    """What one loaded soundfont holds: ``melodic`` bank-0 programs, ``kits`` bank-128 presets
    ``(program, name)``; ``drum_only`` for a drum-kit soundfont (its bank-0 presets are kits)."""

    name: str
    path: Path
    melodic: frozenset[int]
    kits: tuple[tuple[int, str], ...]
    drum_only: bool

    @classmethod
    def scan(cls, path: Path, preset_name) -> "SoundfontInfo":
        """From ``preset_name(bank, program) -> str | None`` of a loaded soundfont."""
        melodic = frozenset(p for p in range(128) if preset_name(0, p))
        kits = tuple((p, preset_name(128, p)) for p in range(128) if preset_name(128, p))
        drum_only = not kits and 0 < len(melodic) <= DRUM_ONLY_MAX_PRESETS
        if drum_only:
            kits = tuple((p, preset_name(0, p)) for p in sorted(melodic))
        return cls(soundfont_name(path), Path(path), frozenset() if drum_only else melodic, kits, drum_only)


def resolve_soundfonts(explicit: Path | None, project_dir: Path = PROJECT_SOUNDFONTS) -> list[Path]:
    """The soundfont files to load, following the resolution order above.

    Returns a non-empty list (several only when a folder of soundfonts was chosen).
    """
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_dir():
            found = _sf2_in(explicit)
            if not found:
                raise SoundfontError(f"--soundfont {explicit}: folder holds no .sf2 file")
            return found
        if explicit.is_file():
            return [explicit]
        raise SoundfontError(f"--soundfont {explicit}: no such file or folder")
    if project_dir.is_dir():
        found = _sf2_in(project_dir)
        if found:
            return found
    if SYSTEM_SOUNDFONT.is_file():
        return [SYSTEM_SOUNDFONT]
    bundled = _pretty_midi_soundfont()
    if bundled.is_file():
        return [bundled]
    raise SoundfontError(
        "no soundfont found; looked for (1) --soundfont PATH, (2) "
        f"{project_dir}/*.sf2, (3) {SYSTEM_SOUNDFONT} (apt install fluid-soundfont-gm), "
        f"(4) {bundled} (inside pretty_midi)"
    )


def soundfonts_for(explicit: Path | None, augment: bool) -> list[Path]:
    """What a renderer loads: the bank with augmentation on, else the plain resolution."""
    return resolve_bank(explicit) if augment else resolve_soundfonts(explicit)


def find_soundfonts(spec: str | Path, project_dir: Path = PROJECT_SOUNDFONTS) -> list[Path]:
    """One ``--holdout-soundfont`` value -> files: a soundfont file, every .sf2/.sf3 of a folder,
    or the bank's soundfonts (``resolve_bank(None)``) of that name (file name or stem, as
    ``serve --holdout-soundfont`` takes it). SoundfontError when it is none of these."""
    path = Path(spec)
    if path.is_file() or path.is_dir():
        return resolve_bank(path, project_dir)
    bank = resolve_bank(None, project_dir)
    found = [p for p in bank if named(p, [str(spec)])]
    if not found:
        raise SoundfontError(f"--holdout-soundfont {spec}: no such file or folder, and no soundfont of the bank "
                             f"has that name ({', '.join(soundfont_name(p) for p in bank)})")
    return found


def check_holdout(paths: list[Path], names) -> None:
    """Every held-out name must be in the bank (a typo would hold nothing out); and something
    must be left for training. Raises SoundfontError."""
    for name in names:
        if not any(named(p, [name]) for p in paths):
            raise SoundfontError(f"--holdout-soundfont {name}: not in the bank "
                                 f"({', '.join(soundfont_name(p) for p in paths)})")
    if names and all(named(p, names) for p in paths):
        raise SoundfontError("every soundfont of the bank is held out; nothing left for training")
