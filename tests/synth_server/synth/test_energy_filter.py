"""Chunking and the energy-difference filter on hand-made signals (no synth)."""
from collections import Counter

import numpy as np

from synth_server.synth.chunks import chunk_count
from synth_server.synth.energy_filter import reject_reasons, target_figures
from synth_server.synth.pipeline import chunk_and_filter
from synth_server.config import AudioConfig, FilterConfig

AUDIO = AudioConfig(sample_rate=8000, target=400, context=100)


def tone(freq, n, amp=0.1, sr=8000):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def test_chunk_count():
    assert chunk_count(2 * 100 + 3 * 400, AUDIO) == 3
    assert chunk_count(2 * 100 + 3 * 400 - 1, AUDIO) == 2
    assert chunk_count(150, AUDIO) == 0


def test_context_is_the_neighbouring_audio():
    n = 5
    stems = np.random.default_rng(0).standard_normal((4, 200 + n * 400)).astype(np.float32) * 0.1
    chunks = list(chunk_and_filter(stems, "song", 1000, AUDIO, FilterConfig(), Counter()))
    assert len(chunks) == n
    for i, ch in enumerate(chunks):
        assert ch.stems.shape == (4, AUDIO.window)
        assert ch.offset == 1000 + 100 + i * 400
        # left context = the previous chunk's last target samples, right context = the next chunk's first
        np.testing.assert_array_equal(ch.stems[:, :100], stems[:, i * 400:i * 400 + 100])
        if i > 0:
            np.testing.assert_array_equal(ch.stems[:, :100], chunks[i - 1].stems[:, 400:500])
        if i + 1 < n:
            np.testing.assert_array_equal(ch.stems[:, 500:], chunks[i + 1].stems[:, 100:200])


def test_filter_drops_silent_and_single_class_keeps_mixed():
    n = 2 * 100 + 4 * 400
    stems = np.zeros((4, n), np.float32)
    t = lambda i: slice(100 + i * 400, 100 + (i + 1) * 400)  # noqa: E731  target region of chunk i
    # chunk 0: silent; chunk 1: only piano; chunk 2: piano + bass; chunk 3: bass + whisper of drums (-40 dB)
    stems[1, t(1)] = tone(440, 400)
    stems[1, t(2)] = tone(440, 400)
    stems[3, t(2)] = tone(110, 400)
    stems[3, t(3)] = tone(110, 400)
    stems[0, t(3)] = tone(2000, 400, amp=0.001)
    counters = Counter()
    kept = list(chunk_and_filter(stems, "s", 0, AUDIO, FilterConfig(), counters))
    assert [c.offset for c in kept] == [100 + 2 * 400]
    assert counters == Counter(rendered=4, kept=1, rejected_silence=1, rejected_single_class=2)
    figures = kept[0].figures
    assert abs(figures["stem_db"][1] - (-3.0)) < 0.2 and abs(figures["stem_db"][3] - (-3.0)) < 0.2


def test_min_active_and_thresholds_are_configurable():
    n = 2 * 100 + 400
    stems = np.zeros((4, n), np.float32)
    stems[1, 100:500] = tone(440, 400)
    stems[2, 100:500] = tone(660, 400)
    figs = target_figures(stems, AUDIO)
    assert reject_reasons(figs, FilterConfig()) == [None]
    assert reject_reasons(figs, FilterConfig(min_active=3)) == ["few_active"]
    assert reject_reasons(figs, FilterConfig(silence_db=-10)) == ["silence"]
    # mix - stem is half of the energy: -3 dB residual
    np.testing.assert_allclose(figs["residual_db"][0, 1:3], [-3.01, -3.01], atol=0.05)
    assert reject_reasons(figs, FilterConfig(single_class_db=-2)) == ["single_class"]
