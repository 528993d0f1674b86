"""Corpus index: scan a MIDI folder, parse files safely in parallel, cache, dedup, split.

Per-file results are cached at ``CorpusConfig.cache_path`` keyed by (relative path, size, mtime);
the cache holds only class-agnostic facts (per-instrument program, is_drum, note count), so
changing the instrument classes or split fractions never needs a re-parse. Broken files are
cached with their reason so they are not retried until they change.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pretty_midi
from tqdm import tqdm

from synth_server.config import SPLITS, CorpusConfig, InstrumentClass, class_of
from synth_server.synth.midi_io import CallTimeout, MidiError, call_with_timeout, load_midi

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
CACHE_VERSION = 1
_SONG_ID = re.compile(r"[0-9a-f]{16}")

Record = dict[str, Any]   # one cache entry; see ``parse_file`` and ``_valid_record``


@dataclass(frozen=True)
class SongInfo:
    """One parsed, usable song. ``path`` is relative to the corpus root (POSIX separators).

    ``instruments`` holds ``(program, is_drum, n_notes, class name or None)`` per instrument with
    notes; ``class_notes`` maps every configured class name to its note count (0 when absent).
    """

    path: str
    size: int
    mtime: float
    song_id: str
    duration: float
    class_notes: dict[str, int]
    instruments: tuple[tuple[int, bool, int, str | None], ...]
    split: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime": self.mtime,
                "song_id": self.song_id, "duration": self.duration,
                "class_notes": dict(self.class_notes),
                "instruments": [list(inst) for inst in self.instruments], "split": self.split}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SongInfo:
        return cls(path=str(data["path"]), size=int(data["size"]), mtime=float(data["mtime"]),
                   song_id=str(data["song_id"]), duration=float(data["duration"]),
                   class_notes={str(k): int(v) for k, v in data["class_notes"].items()},
                   instruments=tuple((int(p), bool(d), int(n), None if c is None else str(c))
                                     for p, d, n, c in data["instruments"]),
                   split=str(data["split"]))


def scan_midi_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every .mid/.midi/.kar file (any case) under ``root``, recursively, sorted by relative path.

    ``exclude`` (e.g. the index cache file) is skipped; symlinked folders are not followed.
    """
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() in MIDI_SUFFIXES and path.resolve() != skip:
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def song_id_of(pm: pretty_midi.PrettyMIDI) -> str:
    """16-hex-digit sha1 of the sorted notes (is_drum, program, pitch, start ms, end ms, velocity),
    times rounded to whole milliseconds, plus the sorted instrument programs.

    Class-agnostic and independent of file layout (track order, ticks per beat): same notes ->
    same id.
    """
    rows = [(inst.is_drum, inst.program, n.pitch, n.start, n.end, n.velocity)
            for inst in pm.instruments for n in inst.notes]
    notes = np.array(rows, dtype=np.float64).reshape(-1, 6)            # (n_notes, 6)
    notes[:, 3:5] = np.rint(notes[:, 3:5] * 1000.0)
    notes = notes.astype("<i8")
    notes = notes[np.lexsort(notes.T[::-1])]                           # sort rows, first column major
    programs = sorted((int(inst.is_drum), int(inst.program)) for inst in pm.instruments if inst.notes)
    digest = hashlib.sha1(repr(programs).encode())
    digest.update(notes.tobytes())
    return digest.hexdigest()[:16]


def describe_midi(pm: pretty_midi.PrettyMIDI) -> Record:
    """Class-agnostic facts: song_id, duration (s), instruments [[program, is_drum, n_notes]]."""
    instruments = [[int(inst.program), bool(inst.is_drum), len(inst.notes)]
                   for inst in pm.instruments if inst.notes]
    return {"song_id": song_id_of(pm), "duration": float(pm.get_end_time()),
            "instruments": instruments}


def _load_and_describe(path: str, max_bytes: int) -> Record:
    return describe_midi(load_midi(path, max_bytes))


def parse_file(path: str, timeout: float, max_bytes: int) -> Record:
    """Parse one file (in a worker process) into a record; never raises for bad input.

    Returns ``describe_midi``'s dict, or ``{"error": reason}``.
    """
    try:
        return call_with_timeout(_load_and_describe, timeout, path, max_bytes)
    except MidiError as exc:
        return {"error": str(exc)}
    except CallTimeout:
        return {"error": f"parse timed out (> {timeout:g} s)"}


def split_of(song_id: str, fractions: tuple[float, ...]) -> str:
    """Deterministic split from the content hash: ``int(id,16) % 10000 / 10000`` against the
    cumulative (normalised) ``fractions`` for ``SPLITS``."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be {len(SPLITS)} non-negative numbers, got {fractions}")
    u = _hash_position(song_id)
    total, acc = sum(fractions), 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac / total
        if u < acc and frac > 0:
            return name
    return [name for name, frac in zip(SPLITS, fractions) if frac > 0][-1]


def _hash_position(song_id: str) -> float:
    return int(song_id, 16) % 10000 / 10000


def fill_empty_splits(songs: list[SongInfo], cfg: CorpusConfig) -> list[SongInfo]:
    """Give every split (with a positive fraction) at least one eligible song when there are
    enough eligible songs: a split the content hash left empty takes, from the split holding
    the most eligible songs, the one whose hash lies nearest its interval. A corpus whose hash
    splits all hold eligible songs (every large one) is returned unchanged."""
    wanted = [s for s, frac in zip(SPLITS, cfg.split_fractions) if frac > 0]
    eligible = [s for s in songs if is_eligible(s, cfg.classes, cfg.min_notes)]
    if len(eligible) < len(wanted):
        return songs
    total = sum(cfg.split_fractions)
    bounds, acc = {}, 0.0
    for name, frac in zip(SPLITS, cfg.split_fractions):
        bounds[name] = (acc, acc + frac / total)
        acc += frac / total
    moved: dict[str, str] = {}
    members = {name: [s for s in eligible if s.split == name] for name in wanted}
    for name in wanted:
        if members[name]:
            continue
        donor = max(wanted, key=lambda n: (len(members[n]), n))
        lo, hi = bounds[name]
        pick = min(members[donor], key=lambda s: (max(lo - _hash_position(s.song_id),
                                                      _hash_position(s.song_id) - hi, 0.0), s.path))
        members[donor].remove(pick)
        members[name].append(pick)
        moved[pick.path] = name
    return [dataclasses.replace(s, split=moved[s.path]) if s.path in moved else s for s in songs]


def song_from_record(rel: str, rec: Record, cfg: CorpusConfig) -> SongInfo:
    """Attach the class-dependent parts (class names, class_notes, split) to a cached record."""
    instruments = tuple((p, d, n, class_of(cfg.classes, p, d)) for p, d, n in rec["instruments"])
    class_notes = {cls.name: 0 for cls in cfg.classes}
    for _p, _d, n, name in instruments:
        if name is not None:
            class_notes[name] += n
    return SongInfo(path=rel, size=rec["size"], mtime=rec["mtime"], song_id=rec["song_id"],
                    duration=rec["duration"], class_notes=class_notes, instruments=instruments,
                    split=split_of(rec["song_id"], cfg.split_fractions))


def is_eligible(song: SongInfo, classes: tuple[InstrumentClass, ...], min_notes: int) -> bool:
    """True when the song holds every class with at least ``min_notes`` notes."""
    return all(song.class_notes.get(cls.name, 0) >= min_notes for cls in classes)


@dataclass
class CorpusIndex:
    """Result of ``build_index``: unique usable songs (sorted by path) plus what was skipped."""

    cfg: CorpusConfig
    songs: list[SongInfo]
    broken: list[tuple[str, str]]        # (path, reason)
    duplicates: list[tuple[str, str]]    # (path, path of the kept song with the same id)
    files_scanned: int
    cache_hits: int
    parsed: int

    def eligible(self, split: str | None = None) -> list[SongInfo]:
        """Songs holding every configured class with >= ``cfg.min_notes`` notes, in ``split``
        (any split when None)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
        return [s for s in self.songs if (split is None or s.split == split)
                and is_eligible(s, self.cfg.classes, self.cfg.min_notes)]

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.cfg.root), "files": self.files_scanned, "songs": len(self.songs),
                "broken": len(self.broken), "duplicates": len(self.duplicates),
                "cache_hits": self.cache_hits, "parsed": self.parsed,
                "eligible": {split: len(self.eligible(split)) for split in SPLITS}}


def _valid_record(rec: Any) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("size"), int) \
            or not isinstance(rec.get("mtime"), (int, float)):
        return False
    if "error" in rec:
        return isinstance(rec["error"], str)
    insts = rec.get("instruments")
    return (isinstance(rec.get("song_id"), str) and bool(_SONG_ID.fullmatch(rec["song_id"]))
            and isinstance(rec.get("duration"), (int, float)) and isinstance(insts, list)
            and all(isinstance(i, list) and len(i) == 3 and isinstance(i[0], int)
                    and isinstance(i[1], bool) and isinstance(i[2], int) for i in insts))


def load_cache(path: Path) -> dict[str, Record]:
    """Cached records by relative path; a missing cache is empty, a corrupt one is ignored with a
    warning, and malformed entries are dropped (they get re-parsed)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring unreadable index cache %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION \
            or not isinstance(data.get("files"), dict):
        log.warning("ignoring index cache %s: unknown format", path)
        return {}
    return {rel: rec for rel, rec in data["files"].items() if _valid_record(rec)}


def save_cache(path: Path, records: dict[str, Record]) -> None:
    """Write atomically (tmp file + os.replace); an unwritable location only logs a warning."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": records}, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write index cache %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _parse_all(tasks: list[tuple[str, str]], cfg: CorpusConfig,
               progress: bool) -> Iterator[tuple[str, Record]]:
    """Yield ``(rel, record)`` for each ``(rel, absolute path)`` task, in completion order.

    Runs in-process for one worker (main thread only: the time limit needs SIGALRM), else in a
    'spawn' process pool. Infrastructure failures give records marked ``transient`` (not cached).
    """
    if not tasks:
        return
    jobs = min(cfg.jobs or os.cpu_count() or 1, len(tasks))
    bar = tqdm(total=len(tasks), disable=not progress, unit="file", desc="indexing MIDI")
    with bar:
        if jobs <= 1 and threading.current_thread() is threading.main_thread():
            for rel, path in tasks:
                yield rel, parse_file(path, cfg.parse_timeout, cfg.max_file_bytes)
                bar.update()
            return
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(parse_file, path, cfg.parse_timeout, cfg.max_file_bytes): rel
                       for rel, path in tasks}
            for fut in as_completed(futures):
                yield futures[fut], _result_or_failure(fut)
                bar.update()


def _result_or_failure(fut: Any) -> Record:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - a dead worker must not kill the whole index
        return {"error": f"parser process failed: {type(exc).__name__}", "transient": True}


def unguarded_main_script() -> str | None:
    """The ``__main__`` script's path when it lacks an ``if __name__ == "__main__":`` guard:
    'spawn' processes re-import it, so its top-level indexing call kills every parser process."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    return None if re.search(r"__name__\s*==\s*['\"]__main__['\"]", text) else str(path)


def _dedup(songs: list[SongInfo]) -> tuple[list[SongInfo], list[tuple[str, str]]]:
    """Keep the lexicographically first path per song_id; ``songs`` must be sorted by path."""
    kept: dict[str, SongInfo] = {}
    duplicates = []
    for song in songs:
        first = kept.setdefault(song.song_id, song)
        if first is not song:
            duplicates.append((song.path, first.path))
    return list(kept.values()), duplicates


def build_index(cfg: CorpusConfig, progress: bool = False) -> CorpusIndex:
    """Scan ``cfg.root``, reuse cached records, parse the rest in parallel, save the cache and
    return the deduplicated index. Raises ValueError when the root is not a folder."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise ValueError(f"corpus root {root} is not a directory")
    cache_path = cfg.cache_path
    cached = load_cache(cache_path)
    records: dict[str, Record] = {}
    tasks: list[tuple[str, str]] = []
    hits = 0
    files = scan_midi_files(root, exclude=cache_path)
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except OSError as exc:
            records[rel] = {"error": f"cannot stat: {exc.strerror or exc}", "transient": True}
            continue
        rec = cached.get(rel)
        if rec is not None and rec["size"] == st.st_size and rec["mtime"] == st.st_mtime:
            records[rel] = rec
            hits += 1
        else:
            records[rel] = {"size": st.st_size, "mtime": st.st_mtime}
            tasks.append((rel, str(path)))
    pool_died = 0
    for rel, rec in _parse_all(tasks, cfg, progress):
        records[rel] = {**records[rel], **rec}
        pool_died += "BrokenProcessPool" in rec.get("error", "")
    if tasks and pool_died == len(tasks) and (script := unguarded_main_script()):
        raise ValueError(f"every parser process died at start: {script} indexes a corpus without an "
                         "`if __name__ == \"__main__\":` guard, and the spawned parser processes re-import it; "
                         "put the call under that guard (or use jobs=1)")
    keep = {rel: rec for rel, rec in records.items() if not rec.get("transient")}
    if keep != cached:
        save_cache(cache_path, keep)
    return _assemble(cfg, records, len(files), hits, len(tasks))


def _assemble(cfg: CorpusConfig, records: dict[str, Record], n_files: int,
              hits: int, parsed: int) -> CorpusIndex:
    broken = sorted((rel, rec["error"]) for rel, rec in records.items() if "error" in rec)
    songs = sorted((song_from_record(rel, rec, cfg) for rel, rec in records.items()
                    if "error" not in rec), key=lambda s: s.path)
    unique, duplicates = _dedup(songs)
    return CorpusIndex(cfg=cfg, songs=fill_empty_splits(unique, cfg), broken=broken, duplicates=duplicates,
                       files_scanned=n_files, cache_hits=hits, parsed=parsed)
