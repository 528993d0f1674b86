"""Fixed sets render deterministically from a split's songs, spread over the songs, stems sounding."""
import dataclasses

import numpy as np
import pytest

from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig
from synth_server.fixed_set import FixedSetKey
from synth_server.synth.corpus import build_index
from synth_server.synth.fixed_excerpts import render_fixed_set


@pytest.fixture
def source(tmp_path, busy_midi):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        busy_midi(6.0, i).write(str(corpus / f"song{i}.mid"))
    (corpus / "broken.mid").write_bytes(b"MThd garbage")
    cfg = CorpusConfig(root=corpus, jobs=1)
    return ChunkSourceConfig(corpus=cfg, audio=AudioConfig(sample_rate=22050))


def test_same_key_same_audio_spread_over_songs(source):
    songs = build_index(source.corpus).eligible()
    split = max({s.split for s in songs}, key=lambda name: sum(s.split == name for s in songs))
    key = FixedSetKey(split, 4, 1.0, 3)
    stems, excerpts, digest = render_fixed_set(source, key)
    assert stems.shape == (4, 4, 22050) and stems.dtype == np.float32
    again, excerpts2, digest2 = render_fixed_set(source, key)
    assert np.array_equal(stems, again) and excerpts == excerpts2 and digest == digest2
    songs = [e["song"] for e in excerpts]
    assert len(set(songs)) == min(4, len(build_index(source.corpus).eligible(split)))
    rms = np.sqrt(np.mean(np.square(stems), axis=-1))
    assert (rms > 1e-3).all()                                       # every stem sounds in every excerpt
    other, _, _ = render_fixed_set(source, FixedSetKey(split, 4, 1.0, 4))
    assert not np.array_equal(other, stems)                         # the seed picks the excerpts


def test_empty_split_raises(source):
    no_valid = dataclasses.replace(source.corpus, split_fractions=(0.9, 0.0, 0.1))
    with pytest.raises(ValueError, match="no eligible song"):
        render_fixed_set(dataclasses.replace(source, corpus=no_valid), FixedSetKey("valid", 1, 1.0, 0))
