"""Fixed sets render deterministically from a split's songs, spread over the songs, stems sounding;
held-out-timbre sets are the same excerpts voiced by the held-out soundfonts."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from synth_server.augment_config import AugmentConfig, SoundfontKnob
from synth_server.config import AudioConfig, ChunkSourceConfig, CorpusConfig, RenderConfig
from synth_server.fixed_set import FixedSetKey
from synth_server.synth.corpus import build_index
from synth_server.synth.fixed_excerpts import render_fixed_set

SF2 = Path("/usr/share/sounds/sf2")


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


@pytest.fixture
def held_source(source, tmp_path):
    """``source`` with a soundfont folder (TimGM6mb + the Black Pearl drum kit), the kit held out."""
    bank = tmp_path / "bank"
    bank.mkdir()
    for name in ("TimGM6mb.sf2", "Black_Pearl_4_LV2.sf2"):
        if not (SF2 / name).is_file():
            pytest.skip(f"{SF2 / name} not installed")
        (bank / name).symlink_to(SF2 / name)
    knob = SoundfontKnob(holdout=("Black_Pearl_4_LV2",))
    return dataclasses.replace(source, render=RenderConfig(soundfont=bank), augment=AugmentConfig(soundfont=knob))


def test_held_out_timbres_are_the_same_excerpts_voiced_by_the_held_out_soundfonts(held_source, source):
    split = next(s.split for s in build_index(source.corpus).eligible() if s.split != "train")
    default = render_fixed_set(held_source, FixedSetKey(split, 2, 1.0, 5))
    held = render_fixed_set(held_source, FixedSetKey(split, 2, 1.0, 5, "holdout"))
    assert [(e["song"], e["offset"]) for e in held[1]] == [(e["song"], e["offset"]) for e in default[1]]
    assert all(e["soundfonts"] == ["TimGM6mb"] * 4 for e in default[1])          # never the held-out kit
    assert all(e["soundfonts"] == ["Black_Pearl_4_LV2"] + ["TimGM6mb"] * 3 for e in held[1])
    assert held[2] != default[2]
    for a, b in zip(default[0], held[0]):
        drums_a, drums_b = a[0], b[0]
        assert np.sqrt(np.mean(drums_b ** 2)) > 1e-3 and not np.allclose(drums_a, drums_b, atol=1e-3)
        # same hits: the 20 ms energy envelopes of the two kits line up
        env = [np.sqrt(np.mean(x.reshape(-1, 441) ** 2, axis=1)) for x in (drums_a, drums_b)]
        assert np.corrcoef(*env)[0, 1] > 0.5
        # stems the kit cannot play keep the in-distribution soundfont: the same audio
        assert np.abs(a[1:] - b[1:]).max() < 1e-3 * np.abs(a[1:]).max()
    with pytest.raises(ValueError, match="no held-out soundfont"):
        render_fixed_set(source, FixedSetKey(split, 1, 1.0, 0, "holdout"))
