"""Render a fixed set: ``n`` deterministic excerpts of one corpus split (see ``synth_server.fixed_set``).

Songs: the split's eligible songs in sorted path order; excerpt k comes from song ``k % songs``
(so the set spans as many songs as it can). Its start is drawn with
``np.random.default_rng(seed)``: up to ``TRIES`` candidate starts are rendered and the first in
which every stem sounds (stem energy above ``FilterConfig.active_db`` relative to the mixture)
is kept, else the candidate with the most sounding stems. Rendering uses the server's render
settings with no random augmentation, so a key gives the same audio every time (for the same
corpus, soundfonts and geometry). Songs that do not parse or render are skipped (logged).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from synth_server.config import ChunkSourceConfig
from synth_server.fixed_set import FixedSetKey, digest_of
from synth_server.synth.corpus import build_index
from synth_server.synth.midi_io import MidiError, load_midi
from synth_server.synth.pipeline import TAIL
from synth_server.synth.render import Renderer, RenderError
from synth_server.synth.soundfont import resolve_soundfonts

log = logging.getLogger(__name__)

TRIES = 6


def _sounding(stems: np.ndarray, active_db: float) -> tuple[int, float]:
    """(stems whose energy is above ``active_db`` relative to the mixture, mixture energy)."""
    mix = float(np.square(stems.sum(axis=0), dtype=np.float64).sum())
    energy = np.square(stems, dtype=np.float64).sum(axis=1)
    return int((10 * np.log10(np.maximum(energy, 1e-30) / max(mix, 1e-30)) > active_db).sum()), mix


def _best_excerpt(renderer: Renderer, midi, song_id: str, samples: int, sample_rate: int,
                  active_db: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(stems (stems, samples) float32, start sample) of the best of up to TRIES candidates."""
    duration = int((midi.get_end_time() + TAIL) * sample_rate)
    soundfont = renderer.soundfont_for(song_id)
    best, best_score = None, None
    for _ in range(TRIES):
        start = int(rng.integers(0, max(1, duration - samples + 1)))
        stems = np.array(renderer.render(midi, start, samples, soundfont), dtype=np.float32)
        score = _sounding(stems, active_db)
        if best_score is None or score > best_score:
            best, best_score = (stems, start), score
        if score[0] == stems.shape[0]:
            break
    return best


def render_fixed_set(source: ChunkSourceConfig, key: FixedSetKey) -> tuple[np.ndarray, list[dict], str]:
    """-> (stems (n, stems, samples) float32, excerpts [{song, path, offset}], digest).

    Raises ValueError when the split has no eligible song or none of them renders.
    """
    corpus = source.corpus
    songs = sorted(build_index(corpus).eligible(key.split), key=lambda s: s.path)
    if not songs:
        raise ValueError(f"no eligible song in split {key.split!r} of {corpus.root}")
    renderer = Renderer(source.render, source.audio, corpus.classes, resolve_soundfonts(source.render.soundfont))
    rate = source.audio.sample_rate
    samples = key.samples(rate)
    rng = np.random.default_rng(key.seed)
    midis: dict[str, object] = {}
    bad: set[str] = set()
    out, excerpts = [], []
    k = 0
    while len(out) < key.n:
        usable = [s for s in songs if s.song_id not in bad]
        if not usable:
            raise ValueError(f"no song of split {key.split!r} in {corpus.root} renders")
        song = usable[k % len(usable)]
        k += 1
        try:
            if song.song_id not in midis:
                midis[song.song_id] = load_midi(Path(corpus.root) / song.path, corpus.max_file_bytes)
            stems, start = _best_excerpt(renderer, midis[song.song_id], song.song_id, samples, rate,
                                         source.filter.active_db, rng)
        except (MidiError, RenderError) as exc:
            log.warning("fixed set: skipping %s: %s", song.path, exc)
            bad.add(song.song_id)
            continue
        out.append(stems)
        excerpts.append({"song": song.song_id, "path": song.path, "offset": start})
    stems = np.stack(out)
    return stems, excerpts, digest_of(stems)
