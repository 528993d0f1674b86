"""Held-out song excerpts: where they lie in the corpus, and their stems rendered with FluidSynth.

The plan (``plan_excerpts``) is deterministic from the seed: eligible songs of one split in
sorted path order, each tiled into non-overlapping slots of ``seconds`` from a random phase,
slots shuffled per song, then taken round-robin over the songs so N excerpts span as many songs
as possible. ``render_excerpts`` renders a plan, each song in its own soundfont; rendering the
same plan again voiced by held-out soundfonts gives paired in-distribution / held-out-timbre
excerpts (same notes, other timbres), the way a server voices its held-out fixed sets
(``synth_server.synth.fixed_excerpts.render_voiced``). Excerpts whose mixture is silent are
dropped when the plan is first rendered (``keep_silent=False``) and counted.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth_server.augment_config import AugmentConfig, SoundfontKnob
from synth_server.config import (SPLITS, AudioConfig, ChunkSourceConfig, CorpusConfig, FilterConfig, InstrumentClass,
                                 RenderConfig, heldout_timbres)
from synth_server.synth.corpus import SongInfo, build_index
from synth_server.synth.fixed_excerpts import render_voiced
from synth_server.synth.midi_io import MidiError, load_midi
from synth_server.synth.pipeline import TAIL
from synth_server.synth.render import Renderer, RenderError
from synth_server.synth.soundfont import resolve_soundfonts, soundfont_name

from .material import Excerpt, excerpt_id, voiced_by
from .scores import rms_dbfs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """A planned excerpt: ``length`` samples from sample ``start`` of ``song``."""

    song: SongInfo
    start: int
    length: int


def eligible_songs(corpus: CorpusConfig, split: str) -> list[SongInfo]:
    """Eligible songs of ``split`` (sorted by path); ValueError naming the per-split counts when none."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
    index = build_index(corpus)
    songs = index.eligible(split)
    if not songs:
        per_split = {s: len(index.eligible(s)) for s in SPLITS}
        raise ValueError(f"no eligible song in split {split!r} of {corpus.root} (eligible per split: "
                         f"{per_split}); try another --split or a larger corpus")
    return songs


def plan_excerpts(songs: list[SongInfo], seconds: float, sample_rate: int,
                  rng: np.random.Generator) -> tuple[list[Slot], int]:
    """Every slot of every song in the order excerpts are taken -> (slots, songs too short).

    Round-robin over ``songs``: the k-th slot of each song comes before any song's (k+1)-th.
    """
    length = int(round(seconds * sample_rate))
    if length < 1:
        raise ValueError(f"excerpt length must be > 0 s, got {seconds}")
    per_song, short = [], 0
    for song in songs:
        duration = int((song.duration + TAIL) * sample_rate)
        count = duration // length
        if count == 0:
            short += 1
            continue
        phase = int(rng.integers(0, duration - count * length + 1))
        starts = phase + length * rng.permutation(count)
        per_song.append([Slot(song, int(s), length) for s in starts])
    rounds = max((len(slots) for slots in per_song), default=0)
    return [slots[k] for k in range(rounds) for slots in per_song if k < len(slots)], short


def render_excerpts(slots: list[Slot], n: int, corpus: CorpusConfig, audio: AudioConfig, soundfonts: list[Path],
                    counters: Counter, voiced: ChunkSourceConfig | None = None, seed: int = 0,
                    keep_silent: bool = True, silence_db: float = FilterConfig().silence_db) -> list[Excerpt]:
    """Render up to ``n`` of ``slots``: each song in its own of ``soundfonts``, or voiced by
    ``voiced``'s soundfont draw (``render_voiced``, seeded per excerpt from ``seed``).

    Songs that fail to load or render are skipped (``songs_failed``); with ``keep_silent=False``
    excerpts whose mixture is below ``silence_db`` dBFS are skipped (``excerpts_silent``).
    """
    renderer = Renderer(RenderConfig(), audio, corpus.classes, soundfonts)
    failed: set[str] = set()
    out: list[Excerpt] = []
    midi_cache: tuple[str, object] | None = None
    for slot in slots:
        if len(out) >= n:
            break
        song = slot.song
        if song.path in failed:
            continue
        try:
            if midi_cache is None or midi_cache[0] != song.path:
                midi_cache = (song.path, load_midi(Path(corpus.root) / song.path, corpus.max_file_bytes))
            stems, names = render_voiced(renderer, voiced, midi_cache[1], song.song_id, slot.start, slot.length,
                                         (seed, len(out)))
        except (MidiError, RenderError) as exc:
            failed.add(song.path)
            counters["songs_failed"] += 1
            log.warning("eval: skipping %s: %s", song.path, exc)
            continue
        mixture = stems.sum(0)
        if not keep_silent and rms_dbfs(mixture) < silence_db:
            counters["excerpts_silent"] += 1
            continue
        out.append(Excerpt(id=excerpt_id(song.song_id, slot.start, audio.sample_rate), song=song.song_id,
                           path=song.path, start=slot.start, sample_rate=audio.sample_rate, stems=stems,
                           mixture=mixture, soundfont=voiced_by(names)))
    return out


def corpus_excerpts(root: Path, classes: tuple[InstrumentClass, ...], split: str, n: int, seconds: float,
                    seed: int, sample_rate: int, soundfont: Path | None, holdout: list[Path],
                    counters: Counter) -> list[list[Excerpt]]:
    """``n`` excerpts, each song in its own of ``soundfont`` (a file or folder; None: the default
    resolution), silent ones dropped -> ``[excerpts]``; with ``holdout`` soundfont files also the
    same excerpts voiced by them (``config.heldout_timbres``; stems none of them can play keep
    the in-distribution soundfonts) -> ``[excerpts, held-out excerpts]``."""
    corpus = CorpusConfig(root=Path(root), classes=classes)
    songs = eligible_songs(corpus, split)
    slots, short = plan_excerpts(songs, seconds, sample_rate, np.random.default_rng(seed))
    counters["songs_too_short"] += short
    if not slots:
        raise ValueError(f"no song of split {split!r} in {root} is {seconds:g} s long; use a smaller --seconds")
    audio = AudioConfig(sample_rate=sample_rate)
    indist = resolve_soundfonts(soundfont)
    first = render_excerpts(slots, n, corpus, audio, indist, counters, keep_silent=False)
    if not first:
        raise ValueError(f"split {split!r} of {root}: no excerpt could be rendered (counters {dict(counters)})")
    if not holdout:
        return [first]
    chosen = [Slot(next(s.song for s in slots if s.song.song_id == e.song), e.start, len(e.mixture))
              for e in first]
    knob = SoundfontKnob(holdout=tuple(soundfont_name(p) for p in holdout))
    # "test" only picks the draw's pool (the held-out soundfonts); the excerpts stay those of ``split``
    voiced = heldout_timbres(ChunkSourceConfig(corpus=corpus, audio=audio, augment=AugmentConfig(soundfont=knob)), "test")
    bank = list(dict.fromkeys([*indist, *holdout]))
    held = render_excerpts(chosen, n, corpus, audio, bank, counters, voiced, seed)
    if len(held) != len(first):
        raise ValueError(f"held-out soundfonts: rendered {len(held)} of the {len(first)} excerpts")
    return [first, held]
