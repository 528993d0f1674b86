"""The synthesis pipeline, composed in one place: song -> excerpts -> (draw) -> render -> (effects
-> levels) -> chunk -> filter. The stages in brackets run only with augmentation on
(docs/augmentation.md); without it the audio is exactly that of the plain renderer.

``song_chunks`` is what a worker runs per song; ``corpus_chunks`` runs it over a list of corpus
songs without any server (``dump``, ``trainer eval``). Neither needs a process or socket.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from synth_server.config import AudioConfig, ChunkSourceConfig, FilterConfig, class_instruments
from synth_server.synth.chunks import Chunk, chunk_count, cut_chunk
from synth_server.synth.energy_filter import chunk_figures, reject_reasons, target_figures
from synth_server.synth import midi_augment
from synth_server.synth.augment import draw_excerpt
from synth_server.synth.effects import apply_chain
from synth_server.synth.levels import apply_gains, level_gains_db
from synth_server.synth.midi_io import MidiError, load_midi
from synth_server.synth.render import Renderer, RenderError

log = logging.getLogger(__name__)

TAIL = 1.0  # seconds after the last note end that still belong to the song (release tails)
EFFECT_WARMUP = 2.0  # seconds of pre-roll effects run over (reverb and compressor state, tails)


def plan_excerpts(duration: int, audio: AudioConfig, chunks_per_excerpt: int,
                  rng: np.random.Generator) -> list[tuple[int, int]]:
    """Plan the excerpt renders of a song of ``duration`` samples.

    Chunk targets tile the song from a random sub-chunk phase; they are grouped into excerpts of
    up to ``chunks_per_excerpt`` chunks (the first group has a random size, so excerpt
    boundaries move between visits) and come back in random order as ``(render start sample,
    chunks)``; an excerpt render is ``chunks * target + 2 * context`` samples. Empty when not
    even one chunk with its context fits.
    """
    phase = int(rng.integers(0, audio.target))
    total = chunk_count(duration - phase, audio)
    if total <= 0 or chunks_per_excerpt <= 0:
        return []
    first = int(rng.integers(1, min(chunks_per_excerpt, total) + 1))
    bounds = [0] + list(range(first, total, chunks_per_excerpt)) + [total]
    plan = [(int(phase + a * audio.target), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [plan[i] for i in rng.permutation(len(plan))]


def chunk_and_filter(stems: np.ndarray, song_id: str, start: int, audio: AudioConfig, cfg: FilterConfig,
                     counters: Counter) -> Iterator[Chunk]:
    """Kept chunks of a render ``stems`` ``(stems, length)`` whose first sample is song sample ``start``.

    Counts ``rendered``, ``kept`` and ``rejected_<reason>``.
    """
    figures = target_figures(stems, audio)
    for i, reason in enumerate(reject_reasons(figures, cfg)):
        counters["rendered"] += 1
        if reason is not None:
            counters["rejected_" + reason] += 1
            continue
        counters["kept"] += 1
        yield cut_chunk(stems, i, song_id, start, audio, chunk_figures(figures, i))


def render_augmented(midi, song_id: str, start: int, length: int, renderer: Renderer, cfg: ChunkSourceConfig,
                     rng: np.random.Generator, counters: Counter | None = None) -> tuple[np.ndarray, int, dict]:
    """One excerpt with its augmentation drawn from ``rng`` -> ``(stems (stems, length) float32,
    start in the tempo-changed song, the draw's record)``.

    Effects run per stem over its render including up to ``EFFECT_WARMUP`` s of pre-roll; levels
    are set from the excerpt itself; the mixture stays the sum of the processed stems.
    """
    classes, sr = cfg.corpus.classes, cfg.audio.sample_rate
    programs = [{int(inst.program) for inst in insts} for insts in class_instruments(classes, midi.instruments)]
    draw = draw_excerpt(cfg.augment, renderer.bank, classes, cfg.split, song_id, programs, rng)
    start = int(round(start / draw.midi.tempo))
    drums = [c.is_drum for c in classes]
    transform = None if draw.midi.identity else (lambda tracks: midi_augment.apply(tracks, drums, draw.midi))

    def effects(i: int, wave: np.ndarray, a: int) -> np.ndarray:
        fx0 = max(0, a - int(EFFECT_WARMUP * sr))
        wave[fx0:] = apply_chain(wave[fx0:], draw.effects[i], sr)
        return wave

    post = effects if any(draw.effects) else None
    stems = renderer.render(midi, start, length, counters=counters, voices=draw.voices, transform=transform, post=post)
    if draw.level_db is not None:
        gains = level_gains_db(stems, cfg.augment.level, draw.level_db)
        apply_gains(stems, gains)
        draw.gain_db = [round(float(g), 2) for g in gains]
    return stems, start, draw.meta(classes, cfg.augment.preset)


def song_chunks(midi, song_id: str, renderer: Renderer, cfg: ChunkSourceConfig, rng: np.random.Generator,
                counters: Counter) -> Iterator[Chunk]:
    """Kept chunks of one song, at most ``cfg.max_chunks_per_song``, from randomly ordered excerpts.

    Each yielded chunk's ``stems`` is ``(stems, context + target + context)`` float32 (a view
    into the excerpt render); with augmentation on, ``chunk.augment`` records the excerpt's draw.
    Counters: ``rendered``, ``kept``, ``rejected_<reason>``, ``excerpts``, ``preroll_capped``
    (``Renderer.render``) and ``songs_too_short``.
    """
    audio = cfg.audio
    duration = int((midi.get_end_time() + TAIL) * audio.sample_rate)
    per_excerpt = max(1, int(cfg.render.excerpt * audio.sample_rate) // audio.target)
    plan = plan_excerpts(duration, audio, per_excerpt, rng)
    if not plan:
        counters["songs_too_short"] += 1
        return
    soundfont = renderer.soundfont_for(song_id)
    kept = 0
    for start, n in plan:
        length, record = n * audio.target + 2 * audio.context, None
        if cfg.augment.enabled:
            stems, start, record = render_augmented(midi, song_id, start, length, renderer, cfg, rng, counters)
        else:
            stems = renderer.render(midi, start, length, soundfont, counters)
        counters["excerpts"] += 1
        for chunk in chunk_and_filter(stems, song_id, start, audio, cfg.filter, counters):
            chunk.augment = record
            yield chunk
            kept += 1
            if kept >= cfg.max_chunks_per_song:
                return


def corpus_chunks(songs: list, cfg: ChunkSourceConfig, renderer: Renderer, rng: np.random.Generator, n: int,
                  counters: Counter) -> Iterator[tuple[Any, Any, list[Chunk]]]:
    """``(song, midi, kept chunks)`` for corpus ``songs`` (``corpus.SongInfo``) in the order given,
    until ``n`` chunks in all (at most ``cfg.max_chunks_per_song`` per song). Songs that cannot
    be read or rendered are skipped with a log line and counted (``songs_failed``)."""
    total = 0
    for song in songs:
        if total >= n:
            return
        try:
            midi = load_midi(Path(cfg.corpus.root) / song.path, cfg.corpus.max_file_bytes)
            chunks = list(song_chunks(midi, song.song_id, renderer, cfg, rng, counters))[:n - total]
        except (MidiError, RenderError) as exc:
            counters["songs_failed"] += 1
            log.warning("skipping %s: %s", song.path, exc)
            continue
        total += len(chunks)
        yield song, midi, chunks
