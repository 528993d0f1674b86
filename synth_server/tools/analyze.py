"""Corpus report for ``synth-server analyze DIR``: what was found, what is usable, and why not.

``analyze_report`` returns a JSON-ready dict; ``format_report`` renders it as plain-text tables.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pretty_midi

from synth_server.config import SPLITS, CorpusConfig, class_of
from synth_server.synth.corpus import CorpusIndex, SongInfo, is_eligible


def _class_rows(songs: list[SongInfo], cfg: CorpusConfig) -> dict[str, dict[str, int]]:
    """Per class: songs with any note, songs with >= min_notes, total notes."""
    return {cls.name: {
        "songs": sum(s.class_notes.get(cls.name, 0) > 0 for s in songs),
        "songs_min_notes": sum(s.class_notes.get(cls.name, 0) >= cfg.min_notes for s in songs),
        "notes": sum(s.class_notes.get(cls.name, 0) for s in songs),
    } for cls in cfg.classes}


def _program_rows(songs: list[SongInfo], cfg: CorpusConfig) -> list[dict[str, Any]]:
    """Melodic programs sorted by number: songs using it, GM name, class (None: never rendered)."""
    counts = Counter(p for s in songs for p in {p for p, drum, _n, _c in s.instruments if not drum})
    return [{"program": p, "name": pretty_midi.program_to_instrument_name(p), "songs": n,
             "class": class_of(cfg.classes, p, False)} for p, n in sorted(counts.items())]


def analyze_report(index: CorpusIndex, cfg: CorpusConfig) -> dict[str, Any]:
    """JSON-ready summary of a corpus index, with classes and min_notes taken from ``cfg``."""
    songs = index.songs
    eligible = [s for s in songs if is_eligible(s, cfg.classes, cfg.min_notes)]
    return {
        "root": str(cfg.root),
        "files_scanned": index.files_scanned,
        "parsed": index.parsed,
        "cached": index.cache_hits,
        "songs": len(songs),
        "hours": round(sum(s.duration for s in songs) / 3600, 3),
        "broken": {"count": len(index.broken),
                   "files": [{"path": p, "reason": r} for p, r in index.broken]},
        "duplicates": len(index.duplicates),
        "min_notes": cfg.min_notes,
        "classes": _class_rows(songs, cfg),
        "programs": _program_rows(songs, cfg),
        "drum_songs": sum(any(drum for _p, drum, _n, _c in s.instruments) for s in songs),
        "songs_with_all_classes": sum(all(s.class_notes.get(c.name, 0) > 0 for c in cfg.classes)
                                      for s in songs),
        "eligible": {"total": len(eligible),
                     **{split: sum(s.split == split for s in eligible) for split in SPLITS}},
    }


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """Text table: numbers right-aligned, text left-aligned, widths fitted to the content."""
    right = [all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(header))]
    cells = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if right[i] else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]


def format_report(report: dict[str, Any]) -> str:
    """Readable text version of ``analyze_report``'s dict."""
    r = report
    lines = [f"corpus {r['root']}",
             f"files scanned {r['files_scanned']}  (parsed {r['parsed']}, from cache {r['cached']})",
             f"usable songs {r['songs']} ({r['hours']:.2f} h)  broken {r['broken']['count']}  "
             f"duplicates {r['duplicates']}", "",
             f"classes (eligible needs >= {r['min_notes']} notes of each):"]
    lines += _table(("class", "songs", f">={r['min_notes']} notes", "notes"),
                    [(name, c["songs"], c["songs_min_notes"], c["notes"])
                     for name, c in r["classes"].items()])
    lines += ["", f"songs with drums: {r['drum_songs']}",
              f"songs with every class: {r['songs_with_all_classes']}",
              "eligible: " + "  ".join(f"{k} {v}" for k, v in r["eligible"].items()),
              "", "programs (songs using each; class '-' is never rendered):"]
    lines += _table(("program", "name", "songs", "class"),
                    [(p["program"], p["name"], p["songs"], p["class"] or "-")
                     for p in r["programs"]])
    if r["broken"]["files"]:
        lines += ["", "broken files:"]
        lines += _table(("path", "reason"),
                        [(b["path"], b["reason"]) for b in r["broken"]["files"]])
    return "\n".join(lines)
