import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Autouse for every trainer test: torch on one thread. Small convs gain nothing from 2 threads,
    and OpenMP spinning makes them ~10x slower when other processes share the 2 cores; the caller's
    setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_chunks(busy_midi):
    """Chunks rendered by the synthesis pipeline (default geometry) from a busy 4-class song:
    ``(count, 4, window)`` float32 at the stream's levels."""
    from collections import Counter

    import numpy as np

    from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig, RenderConfig
    from synth_server.synth.pipeline import song_chunks
    from synth_server.synth.render import Renderer
    from synth_server.synth.soundfont import resolve_soundfonts

    audio, render = AudioConfig(), RenderConfig(excerpt=1.0)
    source = ChunkSourceConfig(corpus=CorpusConfig(root="."), audio=audio, render=render, max_chunks_per_song=8)
    renderer = Renderer(render, audio, source.corpus.classes, resolve_soundfonts(None))
    chunks = list(song_chunks(busy_midi(6.0), "busy", renderer, source, np.random.default_rng(0), Counter()))
    return np.stack([np.array(c.stems) for c in chunks])
