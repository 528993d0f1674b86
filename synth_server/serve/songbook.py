"""The songs a broker serves: MIDI bytes for workers, and the songs it stops handing out.

Workers report songs they gave up on (parse or render failure, timeout, a hang) and songs whose
visit ended normally; the broker also knows which song each worker was on when it died or went
silent. A song is **banned** (no longer in welcomes, its song_request refused) after
``max_failures`` reported failures or ``max_deaths`` workers lost on it, each counted since
the song's last normal visit: a song that crashes every worker is dropped quickly, while a
worker killed from outside (OOM killer, operator) only rarely hits the same song twice in a row.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_FAILURES = 2     # reported failures (since the last normal visit) that ban a song
MAX_DEATHS = 3       # workers died or lost while on the song (since its last normal visit)


class SongBook:
    """``songs``: ``corpus.SongInfo`` with paths relative to ``corpus_root``."""

    def __init__(self, songs: list, corpus_root: Path, max_song_bytes: int,
                 max_failures: int = MAX_FAILURES, max_deaths: int = MAX_DEATHS) -> None:
        self.songs = {s.song_id: s for s in songs}
        self.root = Path(corpus_root)
        self.max_song_bytes = max_song_bytes
        self.max_failures, self.max_deaths = max_failures, max_deaths
        self.banned: dict[str, str] = {}           # song_id -> reason
        self._failures: Counter = Counter()
        self._deaths: Counter = Counter()

    def get(self, song_id: Any):
        """The SongInfo of a known song id, else None."""
        return self.songs.get(song_id) if isinstance(song_id, str) else None

    def read(self, song) -> bytes:
        """The song's file bytes; OSError (with a reason) when missing or too large."""
        path = self.root / song.path
        if path.stat().st_size > self.max_song_bytes:
            raise OSError(f"larger than {self.max_song_bytes} bytes")
        return path.read_bytes()

    def welcome_list(self, seed: int, limit: int) -> list[list]:
        """``[[song_id, duration_s], ...]`` of the songs not banned, a random subset of at most
        ``limit`` (seeded)."""
        songs = [s for s in self.songs.values() if s.song_id not in self.banned]
        if len(songs) > limit:
            pick = np.random.default_rng(seed).choice(len(songs), limit, replace=False)
            songs = [songs[i] for i in pick]
        return [[s.song_id, round(s.duration, 3)] for s in songs]

    def usable(self) -> int:
        return len(self.songs) - len(self.banned)

    # -- outcomes -----------------------------------------------------------------------------
    def done(self, song_id: str) -> None:
        """A normal visit: the song's failures and deaths so far are forgiven."""
        self._failures.pop(song_id, None)
        self._deaths.pop(song_id, None)

    def failed(self, song_id: str, reason: str) -> bool:
        """A worker gave up on the song; True when that banned it."""
        return self._strike(self._failures, self.max_failures, song_id, f"failed: {reason}")

    def died(self, song_id: str, reason: str) -> bool:
        """A worker died or went silent while on the song; True when that banned it."""
        return self._strike(self._deaths, self.max_deaths, song_id, f"worker {reason}")

    def _strike(self, counts: Counter, limit: int, song_id: str, reason: str) -> bool:
        song = self.get(song_id)
        if song is None or song_id in self.banned:
            return False
        counts[song_id] += 1
        if counts[song_id] < limit:
            return False
        self.banned[song_id] = f"{reason} ({counts[song_id]} times)"
        log.warning("song %s (%s) banned: %s; %d songs left", song_id, song.path, self.banned[song_id],
                    self.usable())
        if not self.usable():
            log.error("every song is banned: workers have nothing left to render")
        return True

    def describe(self, limit: int = 50) -> dict[str, Any]:
        """Stats: banned count and the first ``limit`` banned songs with path and reason."""
        return {"count": len(self.banned),
                "songs": [{"song_id": k, "path": self.songs[k].path, "reason": v}
                          for k, v in list(self.banned.items())[:limit]]}
