"""The synthesis pipeline, composed in one place: song -> excerpts -> render -> chunk -> filter.

``song_chunks`` is what a worker (or the standalone dump) runs per song; it needs no process or
socket and is tested directly.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np

from .chunks import Chunk, chunk_and_filter, chunk_count
from .config import AudioConfig, ChunkSourceConfig
from .render import Renderer

TAIL = 1.0  # seconds after the last note end that still belong to the song (release tails)


def excerpt_starts(duration: int, audio: AudioConfig, chunks_per_excerpt: int,
                   rng: np.random.Generator) -> tuple[list[int], int]:
    """Plan the excerpts of a song of ``duration`` samples.

    Excerpts tile the song (their target regions are contiguous, from a random phase) and come
    back in random order. Returns (render start samples, chunks per excerpt); ([], 0) when not
    even one chunk with its context fits in the song.
    """
    n = min(chunks_per_excerpt, chunk_count(duration, audio))
    if n <= 0:
        return [], 0
    span = n * audio.target
    length = span + 2 * audio.context
    last = duration - length
    phase = int(rng.integers(0, min(span, last) + 1)) if last > 0 else 0
    starts = list(range(phase, last + 1, span))
    rng.shuffle(starts)
    return starts, n


def song_chunks(midi, song_id: str, renderer: Renderer, cfg: ChunkSourceConfig, rng: np.random.Generator,
                counters: Counter) -> Iterator[Chunk]:
    """Kept chunks of one song, at most ``cfg.max_chunks_per_song``, from randomly ordered excerpts.

    Each yielded chunk's ``stems`` is ``(stems, context + target + context)`` float32 (a view
    into the excerpt render). Counters: ``rendered``, ``kept``, ``rejected_<reason>``,
    ``excerpts`` and ``songs_too_short``.
    """
    audio = cfg.audio
    duration = int((midi.get_end_time() + TAIL) * audio.sample_rate)
    per_excerpt = max(1, int(cfg.render.excerpt * audio.sample_rate) // audio.target)
    starts, n = excerpt_starts(duration, audio, per_excerpt, rng)
    if not starts:
        counters["songs_too_short"] += 1
        return
    soundfont = renderer.soundfont_for(song_id)
    length = n * audio.target + 2 * audio.context
    kept = 0
    for start in starts:
        stems = renderer.render(midi, start, length, soundfont)
        counters["excerpts"] += 1
        for chunk in chunk_and_filter(stems, song_id, start, audio, cfg.filter, counters):
            yield chunk
            kept += 1
            if kept >= cfg.max_chunks_per_song:
                return
