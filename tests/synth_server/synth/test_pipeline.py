"""The composed pipeline: chunk windows are the song's real audio at their offsets; caps hold."""
from collections import Counter

import numpy as np
import pytest

from synth_server.config import DEFAULT_CLASSES, AudioConfig, ChunkSourceConfig, CorpusConfig, RenderConfig
from synth_server.synth.pipeline import plan_excerpts, song_chunks
from synth_server.synth.render import Renderer
from synth_server.synth.soundfont import resolve_soundfonts

AUDIO = AudioConfig(target=2205, context=1024)


def config(audio=AUDIO, **kw):
    return ChunkSourceConfig(corpus=CorpusConfig(root="."), audio=audio,
                             render=RenderConfig(excerpt=1.0), **kw)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(RenderConfig(excerpt=1.0), AUDIO, DEFAULT_CLASSES, resolve_soundfonts(None))


def test_excerpts_tile_the_song():
    rng = np.random.default_rng(1)
    for duration in (100_000, 37_123, 3 * AUDIO.context + 2 * AUDIO.target):
        plan = plan_excerpts(duration, AUDIO, 10, rng)
        targets = sorted(s + AUDIO.context + k * AUDIO.target for s, n in plan for k in range(n))
        assert np.all(np.diff(targets) == AUDIO.target), "chunk targets must tile without gaps or overlaps"
        assert targets[0] - AUDIO.context >= 0 and targets[-1] + AUDIO.target + AUDIO.context <= duration
        assert duration - (targets[-1] + AUDIO.target + AUDIO.context) < 2 * AUDIO.target  # whole song used
        assert all(1 <= n <= 10 for _, n in plan)
    assert plan_excerpts(2 * AUDIO.context + AUDIO.target - 1, AUDIO, 10, rng) == []


def test_chunks_are_the_songs_audio_at_their_offsets(renderer, busy_midi):
    midi = busy_midi()
    full = Renderer(RenderConfig(), AUDIO, DEFAULT_CLASSES, resolve_soundfonts(None)).render(midi, 0, 8 * 44100)
    counters = Counter()
    chunks = list(song_chunks(midi, "busy", renderer, config(max_chunks_per_song=1000),
                              np.random.default_rng(0), counters))
    assert counters["kept"] == len(chunks) > 50
    assert counters["rendered"] == counters["kept"] + sum(v for k, v in counters.items() if k.startswith("rejected_"))
    offsets = [c.offset for c in chunks]
    assert len(set(offsets)) == len(offsets)
    for ch in chunks[::7]:
        ref = full[:, ch.offset - AUDIO.context:ch.offset + AUDIO.target + AUDIO.context]
        assert ch.stems.shape == ref.shape == (4, AUDIO.window)
        err = np.sum((ch.stems - ref) ** 2) / np.sum(ref ** 2)
        assert err < 1e-5, f"chunk at {ch.offset} is not the song's audio there"


def test_per_song_cap_and_too_short(renderer, busy_midi):
    counters = Counter()
    chunks = list(song_chunks(busy_midi(), "busy", renderer, config(max_chunks_per_song=7),
                              np.random.default_rng(0), counters))
    assert len(chunks) == 7 == counters["kept"]
    short = busy_midi(0.05)  # 0.45 s of notes + 1 s of tail < one 2 s window
    long_chunks = config(audio=AudioConfig(target=88200, context=1024))
    assert list(song_chunks(short, "short", renderer, long_chunks, np.random.default_rng(0), counters)) == []
    assert counters["songs_too_short"] == 1


def test_seed_reproduces_chunks(renderer, busy_midi):
    a = [c.offset for c in song_chunks(busy_midi(), "b", renderer, config(max_chunks_per_song=20),
                                       np.random.default_rng(5), Counter())]
    b = [c.offset for c in song_chunks(busy_midi(), "b", renderer, config(max_chunks_per_song=20),
                                       np.random.default_rng(5), Counter())]
    assert a == b
