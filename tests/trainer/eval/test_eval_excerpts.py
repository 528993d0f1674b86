"""Excerpt plans: deterministic, non-overlapping, spread over songs; the same notes under other timbres."""
from collections import Counter

import numpy as np

from synth_server.config import CorpusConfig, DEFAULT_CLASSES
from synth_server.synth.soundfont import _pretty_midi_soundfont
from trainer.eval.excerpts import corpus_excerpts, eligible_songs, plan_excerpts

RATE = 8000


def test_plan_is_seeded_round_robin_and_slots_do_not_overlap(busy_corpus):
    root, split = busy_corpus
    songs = eligible_songs(CorpusConfig(root=root), split)
    slots, short = plan_excerpts(songs, 1.5, RATE, np.random.default_rng(7))
    again, _ = plan_excerpts(songs, 1.5, RATE, np.random.default_rng(7))
    assert short == 0 and [(s.song.path, s.start) for s in slots] == [(s.song.path, s.start) for s in again]
    assert [s.song.path for s in slots[:len(songs)]] == [s.path for s in songs]     # one per song first
    for song in songs:
        starts = sorted(s.start for s in slots if s.song is song)
        assert len(starts) == 4 and np.all(np.diff(starts) >= int(1.5 * RATE))          # 6 s of song -> 4 slots
        assert starts[-1] + 1.5 * RATE <= (song.duration + 1.0) * RATE
    other, _ = plan_excerpts(songs, 1.5, RATE, np.random.default_rng(8))
    assert [s.start for s in other] != [s.start for s in slots]


def test_held_out_timbres_render_the_same_notes_differently(busy_corpus):
    root, split = busy_corpus
    counters = Counter()
    first, held = corpus_excerpts(root, DEFAULT_CLASSES, split, 3, 1.0, 5, RATE,
                                  None, [_pretty_midi_soundfont()], counters)
    assert len(first) == len(held) == 3
    for a, b in zip(first, held):
        assert (a.id, a.start, a.stems.shape) == (b.id, b.start, b.stems.shape) == (a.id, a.start, (4, RATE))
        assert a.soundfont != b.soundfont == "TimGM6mb"
        np.testing.assert_array_equal(a.mixture, a.stems.sum(0))
        for sa, sb in zip(a.stems, b.stems):
            assert np.sqrt(np.mean(sa ** 2)) > 1e-3 and np.sqrt(np.mean(sb ** 2)) > 1e-3
            assert not np.allclose(sa, sb, atol=1e-3)
        # same notes: the drum hits (20 ms energy envelopes) line up under both kits
        env_a, env_b = (np.sqrt(np.mean(x[:len(x) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
                        for x in (a.stems[0], b.stems[0]))
        assert np.corrcoef(env_a, env_b)[0, 1] > 0.5
    again = corpus_excerpts(root, DEFAULT_CLASSES, split, 3, 1.0, 5, RATE, None, [], Counter())[0]
    assert all(np.array_equal(x.stems, y.stems) for x, y in zip(first, again))
