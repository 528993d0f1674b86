"""Render a fixed set: ``n`` deterministic excerpts of one corpus split (see ``synth_server.fixed_set``).

Songs: the split's eligible songs in sorted path order; excerpt k comes from song ``k % songs``
(so the set spans as many songs as it can). Its start is drawn with
``np.random.default_rng(seed)``: up to ``TRIES`` candidate starts are rendered and the first in
which every stem sounds (stem energy above ``FilterConfig.active_db`` relative to the mixture)
is kept, else the candidate with the most sounding stems. Rendering uses the server's render
settings with no random augmentation, so a key gives the same audio every time (for the same
corpus, soundfonts and geometry). Songs that do not parse or render are skipped (logged).

Timbres (``voicing``): without held-out soundfonts each song plays in its own soundfont of the
plain resolution, as the stream renders without augmentation. A server with held-out soundfonts
voices the default set from the soundfonts training uses (never a held-out one) and the
``holdout`` set, the same songs and positions, from the held-out ones (``config.heldout_timbres``;
stems none of them can play fall back to the others). Only the soundfont is drawn, per excerpt
from ``(seed, excerpt index)``; no other augmentation. ``trainer eval`` renders its held-out
excerpts with the same ``voicing`` / ``render_voiced``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from synth_server.augment_config import AugmentConfig
from synth_server.config import ChunkSourceConfig, heldout_timbres
from synth_server.fixed_set import FixedSetKey, digest_of
from synth_server.synth.corpus import build_index
from synth_server.synth.midi_io import MidiError, load_midi
from synth_server.synth.pipeline import TAIL, render_augmented
from synth_server.synth.render import Renderer, RenderError
from synth_server.synth.soundfont import resolve_soundfonts, soundfonts_for

log = logging.getLogger(__name__)

TRIES = 6


def _sounding(stems: np.ndarray, active_db: float) -> tuple[int, float]:
    """(stems whose energy is above ``active_db`` relative to the mixture, mixture energy)."""
    mix = float(np.square(stems.sum(axis=0), dtype=np.float64).sum())
    energy = np.square(stems, dtype=np.float64).sum(axis=1)
    return int((10 * np.log10(np.maximum(energy, 1e-30) / max(mix, 1e-30)) > active_db).sum()), mix


def voicing(source: ChunkSourceConfig, timbres: str, split: str) -> tuple[list[Path], ChunkSourceConfig | None]:
    """(soundfonts to load, the source whose draw voices each excerpt; None: each song its own
    soundfont) for ``timbres`` "default" or "holdout" of ``split`` (module docstring)."""
    knob = source.augment.soundfont
    if timbres == "default" and not knob.holdout:
        return resolve_soundfonts(source.render.soundfont), None
    # the bank the server checked its held-out names against (``soundfont.check_holdout``)
    soundfonts = soundfonts_for(source.render.soundfont, source.augment.enabled)
    only_soundfont = dataclasses.replace(source, augment=AugmentConfig(soundfont=knob))
    if timbres == "holdout":
        return soundfonts, heldout_timbres(only_soundfont, split)
    # the song's own soundfont among those training may use: a "train" draw never picks a held-out one
    plain = dataclasses.replace(knob, p=0.0, pool="all")
    return soundfonts, dataclasses.replace(only_soundfont, split="train", augment=AugmentConfig(soundfont=plain))


def render_voiced(renderer: Renderer, voiced: ChunkSourceConfig | None, midi, song_id: str, start: int,
                  samples: int, seed: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """-> (stems (stems, samples) float32, soundfont name per stem) of one excerpt, voiced as
    ``voicing`` says; ``seed`` seeds the soundfont draw."""
    if voiced is None:
        soundfont = renderer.soundfont_for(song_id)
        stems = renderer.render(midi, start, samples, soundfont)
        return np.asarray(stems, np.float32), [renderer.bank[soundfont].name] * len(renderer.classes)
    stems, _, record = render_augmented(midi, song_id, start, samples, renderer, voiced, np.random.default_rng(seed))
    return np.asarray(stems, np.float32), [record["stems"][c.name]["soundfont"] for c in renderer.classes]


def _best_excerpt(renderer: Renderer, voiced: ChunkSourceConfig | None, midi, song_id: str, samples: int,
                  sample_rate: int, active_db: float, rng: np.random.Generator,
                  seed: tuple[int, ...]) -> tuple[np.ndarray, int, list[str]]:
    """(stems (stems, samples) float32, start sample, soundfonts) of the best of up to TRIES candidates."""
    duration = int((midi.get_end_time() + TAIL) * sample_rate)
    best, best_score = None, None
    for _ in range(TRIES):
        start = int(rng.integers(0, max(1, duration - samples + 1)))
        stems, names = render_voiced(renderer, voiced, midi, song_id, start, samples, seed)
        score = _sounding(stems, active_db)
        if best_score is None or score > best_score:
            best, best_score = (stems, start, names), score
        if score[0] == stems.shape[0]:
            break
    return best


def render_fixed_set(source: ChunkSourceConfig, key: FixedSetKey) -> tuple[np.ndarray, list[dict], str]:
    """-> (stems (n, stems, samples) float32, excerpts [{song, path, offset, soundfonts}], digest).

    Raises ValueError when the split has no eligible song or none of them renders, or (held-out
    timbres) when the server has no held-out soundfont or one excerpt does not render.
    """
    corpus = source.corpus
    songs = sorted(build_index(corpus).eligible(key.split), key=lambda s: s.path)
    if not songs:
        raise ValueError(f"no eligible song in split {key.split!r} of {corpus.root}")
    if key.timbres == "holdout":
        return _heldout_set(source, key)
    soundfonts, voiced = voicing(source, "default", key.split)
    renderer = Renderer(source.render, source.audio, corpus.classes, soundfonts)
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
            stems, start, names = _best_excerpt(renderer, voiced, midis[song.song_id], song.song_id, samples, rate,
                                                source.filter.active_db, rng, (key.seed, len(out)))
        except (MidiError, RenderError) as exc:
            log.warning("fixed set: skipping %s: %s", song.path, exc)
            bad.add(song.song_id)
            continue
        out.append(stems)
        excerpts.append({"song": song.song_id, "path": song.path, "offset": start, "soundfonts": names})
    stems = np.stack(out)
    return stems, excerpts, digest_of(stems)


def _heldout_set(source: ChunkSourceConfig, key: FixedSetKey) -> tuple[np.ndarray, list[dict], str]:
    """The default set's excerpts (same songs, same first samples) voiced by the held-out soundfonts."""
    soundfonts, voiced = voicing(source, "holdout", key.split)      # ValueError without held-out soundfonts
    _, chosen, _ = render_fixed_set(source, dataclasses.replace(key, timbres="default"))
    renderer = Renderer(source.render, source.audio, source.corpus.classes, soundfonts)
    samples = key.samples(source.audio.sample_rate)
    out, excerpts = [], []
    for k, e in enumerate(chosen):
        try:
            midi = load_midi(Path(source.corpus.root) / e["path"], source.corpus.max_file_bytes)
            stems, names = render_voiced(renderer, voiced, midi, e["song"], e["offset"], samples, (key.seed, k))
        except (MidiError, RenderError) as exc:       # a pair must stay a pair: fail the set
            raise ValueError(f"held-out timbres of {e['path']}: {exc}") from None
        out.append(stems)
        excerpts.append({**e, "soundfonts": names})
    stems = np.stack(out)
    return stems, excerpts, digest_of(stems)
