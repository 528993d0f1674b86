"""Soundfont resolution.

Order: ``--soundfont PATH`` (a .sf2 file, or a folder of them: one is picked per song) ->
``soundfonts/*.sf2`` in the project -> ``/usr/share/sounds/sf2/FluidR3_GM.sf2`` -> the
TimGM6mb.sf2 shipped inside pretty_midi. Nothing found -> one error naming all four.
"""
from __future__ import annotations

from pathlib import Path

SYSTEM_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PROJECT_SOUNDFONTS = Path(__file__).resolve().parents[1] / "soundfonts"


class SoundfontError(FileNotFoundError):
    pass


def _pretty_midi_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def _sf2_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".sf2" and p.is_file())


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
