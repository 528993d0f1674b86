"""Cut rendered stems into chunks with context.

A chunk is a window of ``context + target + context`` samples of every stem; only the central
``target`` region is what the model must predict, the context is the real neighbouring audio.
Chunk i of a render covers render samples ``[i*target, i*target + window)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synth_server.config import AudioConfig


@dataclass
class Chunk:
    """One training example.

    stems: ``(stems, context + target + context)`` float32; the mixture is ``stems.sum(0)``.
    offset: sample index in the song of the first target sample.
    figures: the filter's measurements on the target region (dB).
    augment: what the excerpt's augmentation drew (``ExcerptDraw.meta``), None without augmentation;
    with a tempo factor, ``offset`` counts samples of the tempo-changed song.
    """

    stems: np.ndarray
    song_id: str
    offset: int
    figures: dict = field(default_factory=dict)
    augment: dict | None = None


def chunk_count(length: int, audio: AudioConfig) -> int:
    """How many whole chunks fit in a render of ``length`` samples (context on both sides)."""
    return max(0, (length - 2 * audio.context) // audio.target)


def cut_chunk(stems: np.ndarray, i: int, song_id: str, start: int, audio: AudioConfig,
              figures: dict | None = None) -> Chunk:
    """Chunk ``i`` of a render ``stems`` ``(stems, length)`` whose first sample is song sample
    ``start``: a view, its target starting at song sample ``start + context + i*target``."""
    a = i * audio.target
    return Chunk(stems=stems[:, a:a + audio.window], song_id=song_id,
                 offset=int(start + audio.context + a), figures=figures or {})
