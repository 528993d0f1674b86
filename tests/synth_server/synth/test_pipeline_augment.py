"""Audio facts of augmented rendering: none is bit-identical, stems stay aligned and summed, context
is the neighbouring audio, pitch and tempo move as drawn, held-out soundfonts stay out of train."""
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from synth_server.augment_config import PRESETS, AugmentConfig, apply_table
from synth_server.config import DEFAULT_CLASSES, AudioConfig, ChunkSourceConfig, CorpusConfig, FilterConfig, RenderConfig
from synth_server.synth.augment import MidiDraw, StemVoice
from synth_server.synth.effects import apply_chain
from synth_server.synth.events import BLOCK, to_grid
from synth_server.synth import midi_augment
from synth_server.synth.pipeline import TAIL, chunk_and_filter, plan_excerpts, render_augmented, song_chunks
from synth_server.synth.render import Renderer
from synth_server.synth.soundfont import resolve_soundfonts

SR = 44100
AUDIO = AudioConfig(target=2205, context=1024)
BANK = [Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
        Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2")]
KEEP_ALL = FilterConfig(silence_db=-400.0, single_class_db=-400.0, active_db=-400.0, min_active=0)
# every knob fires on every excerpt and stem
ALL_ON = apply_table(PRESETS["full"], {k: {"p": 1.0} for k in (
    "soundfont", "program", "drum_kit", "transpose", "tempo", "velocity", "jitter",
    "eq", "compressor", "distortion", "chorus", "reverb")})


def needs_bank():
    missing = [p for p in BANK if not p.is_file()]
    if missing:
        pytest.skip(f"soundfonts missing: {missing} (make system-deps)")


def make_renderer(soundfonts=None):
    return Renderer(RenderConfig(excerpt=1.0), AUDIO, DEFAULT_CLASSES, soundfonts or BANK)


@pytest.fixture(scope="module")
def bank_renderer():
    needs_bank()
    return make_renderer()


def config(augment, split="train", filt=KEEP_ALL, **kw):
    return ChunkSourceConfig(corpus=CorpusConfig(root="."), audio=AUDIO, render=RenderConfig(excerpt=1.0),
                             filter=filt, augment=augment, split=split, **kw)


def song(notes):
    """notes: (program, is_drum, pitch, start, end) -> PrettyMIDI."""
    midi = pretty_midi.PrettyMIDI()
    insts = {}
    for program, drum, pitch, start, end in notes:
        if (program, drum) not in insts:
            insts[program, drum] = pretty_midi.Instrument(program, is_drum=drum)
            midi.instruments.append(insts[program, drum])
        insts[program, drum].notes.append(pretty_midi.Note(100, pitch, start, end))
    return midi


def snr_db(ref, est):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - est).astype(np.float64) ** 2), 1e-30))


def test_none_is_bit_identical_to_plain_rendering(busy_midi):
    """The pipeline under ``none`` makes exactly the chunks of the plain renderer path."""
    midi, cfg = busy_midi(6.0), config(PRESETS["none"], filt=FilterConfig(), max_chunks_per_song=1000)
    got = list(song_chunks(midi, "busy", make_renderer(resolve_soundfonts(None)), cfg,
                           np.random.default_rng(4), Counter()))
    plain, rng, want = make_renderer(resolve_soundfonts(None)), np.random.default_rng(4), []
    duration = int((midi.get_end_time() + TAIL) * SR)
    for start, n in plan_excerpts(duration, AUDIO, SR // AUDIO.target, rng):
        stems = plain.render(midi, start, n * AUDIO.target + 2 * AUDIO.context, plain.soundfont_for("busy"))
        want += list(chunk_and_filter(stems, "busy", start, AUDIO, cfg.filter, Counter()))
    assert len(got) == len(want) > 20
    for a, b in zip(got, want):
        assert a.offset == b.offset and a.augment is None
        np.testing.assert_array_equal(a.stems, b.stems)


def test_all_knobs_on_context_is_the_neighbouring_audio_and_the_mixture_the_sum(bank_renderer, busy_midi, tmp_path):
    from synth_server.tools.dump import write_chunk
    import soundfile as sf

    chunks = list(song_chunks(busy_midi(6.0), "busy", bank_renderer, config(ALL_ON, max_chunks_per_song=1000),
                              np.random.default_rng(1), Counter()))
    assert len(chunks) > 40
    by_excerpt = {}
    for c in chunks:
        by_excerpt.setdefault(id(c.stems.base), []).append(c)
    pairs = 0
    for group in by_excerpt.values():
        group.sort(key=lambda c: c.offset)
        assert all(c.augment == group[0].augment for c in group)          # one draw per excerpt
        for a, b in zip(group, group[1:]):
            assert b.offset - a.offset == AUDIO.target
            # a's window shifted by one target is b's window: context is the processed neighbours
            np.testing.assert_array_equal(a.stems[:, AUDIO.target:], b.stems[:, :-AUDIO.target])
            pairs += 1
    assert pairs > 30
    meta = chunks[0].augment
    assert all(len(s["effects"]) >= 3 for s in meta["stems"].values())      # eq, compressor, reverb at least
    assert [n for n, _ in meta["stems"]["bass"]["effects"]] == ["eq", "compressor", "distortion", "reverb"]
    folder = write_chunk(tmp_path, chunks[0].stems, [c.name for c in DEFAULT_CLASSES], AUDIO,
                         {"song": "busy", "offset": chunks[0].offset, "augment": meta})
    mix = sf.read(folder / "context" / "mixture.wav", dtype="float32")[0]
    np.testing.assert_array_equal(mix, chunks[0].stems.sum(0))
    assert np.isfinite(chunks[0].stems).all()


def test_transposition_moves_the_fundamental_and_leaves_drums(bank_renderer):
    midi = song([(0, True, 36, 0.2, 0.4), (33, False, 45, 0.1, 1.6), (48, False, 57, 0.1, 1.6)])
    voices = [StemVoice(0)] * 4
    plain = bank_renderer.render(midi, 0, 2 * SR, voices=voices)
    drums = [c.is_drum for c in DEFAULT_CLASSES]
    up = bank_renderer.render(midi, 0, 2 * SR, voices=voices,
                              transform=lambda t: midi_augment.apply(t, drums, MidiDraw(transpose=7)))
    assert snr_db(plain[0], up[0]) > 50                                      # drums are not transposed
    for stem, f0 in ((3, 110.0), (2, 220.0)):                                # A2 bass, A3 strings
        seg = slice(int(0.3 * SR), int(1.3 * SR))
        for wave, want in ((plain[stem, seg], f0), (up[stem, seg], f0 * 2 ** (7 / 12))):
            spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), 8 * len(wave)))
            freqs = np.fft.rfftfreq(8 * len(wave), 1 / SR)
            band = (freqs > want / 1.3) & (freqs < want * 1.3)
            got = freqs[band][np.argmax(spec[band])]
            assert abs(got / want - 1) < 0.01, (stem, got, want)


def test_tempo_moves_onsets_by_the_factor(bank_renderer):
    midi = song([(0, False, 60, 1.0, 1.3), (33, False, 40, 2.0, 2.3)])
    drums = [c.is_drum for c in DEFAULT_CLASSES]
    for tempo in (0.8, 1.25):
        out = bank_renderer.render(midi, 0, 3 * SR, voices=[StemVoice(0)] * 4,
                                   transform=lambda t: midi_augment.apply(t, drums, MidiDraw(tempo=tempo)))
        for stem, onset in ((1, 1.0), (3, 2.0)):
            q = to_grid(onset / tempo, SR)
            first = np.flatnonzero(out[stem])[0]
            assert q <= first < q + BLOCK, (tempo, stem, first, q)


def test_per_stem_soundfont_changes_only_that_stem(bank_renderer, busy_midi):
    midi = busy_midi(2.0)
    base = bank_renderer.render(midi, 0, SR, voices=[StemVoice(0)] * 4)
    other = bank_renderer.render(midi, 0, SR, voices=[StemVoice(0), StemVoice(1), StemVoice(0), StemVoice(0)])
    assert snr_db(base[1], other[1]) < 10                                    # piano from TimGM6mb
    for s in (0, 2, 3):
        assert snr_db(base[s], other[s]) > 50
    kit = bank_renderer.render(midi, 0, SR, voices=[StemVoice(2, 0, 0)] + [StemVoice(0)] * 3)
    assert np.abs(kit[0]).max() > 1e-3 and snr_db(base[0], kit[0]) < 10      # the Black Pearl kit plays
    chunks = list(song_chunks(midi, "busy", bank_renderer, config(ALL_ON), np.random.default_rng(2), Counter()))
    names = {s["soundfont"] for c in chunks for s in c.augment["stems"].values()}
    assert names <= {"FluidR3_GM", "TimGM6mb", "Black_Pearl_4_LV2"} and len(names) >= 2


def test_held_out_soundfont_never_appears_in_a_few_hundred_train_chunks(bank_renderer, busy_midi):
    cfg = config(apply_table(ALL_ON, {"soundfont": {"holdout": ["TimGM6mb"]}}), max_chunks_per_song=1000)
    rng, seen, n = np.random.default_rng(9), Counter(), 0
    for shift in range(3):
        for c in song_chunks(busy_midi(12.0, shift), f"s{shift}", bank_renderer, cfg, rng, Counter()):
            seen.update(s["soundfont"] for s in c.augment["stems"].values())
            n += 1
    assert n >= 300 and "TimGM6mb" not in seen and seen["FluidR3_GM"] > 0 and seen["Black_Pearl_4_LV2"] > 0
    held = dataclasses.replace(cfg, split="test", augment=dataclasses.replace(
        cfg.augment, soundfont=dataclasses.replace(cfg.augment.soundfont, pool="holdout")))
    chunk = next(song_chunks(busy_midi(3.0), "s", bank_renderer, held, rng, Counter()))
    assert [s["soundfont"] for s in chunk.augment["stems"].values()][1:] == ["TimGM6mb"] * 3


def test_silent_stem_stays_silent_after_effects_and_levels(bank_renderer):
    assert not apply_chain(np.zeros(SR, np.float32), [("distortion", {"drive_db": 40.0}),
                                                       ("reverb", {"room_size": 0.9, "damping": 0.1,
                                                                   "wet_level": 0.5, "width": 1.0})], SR).any()
    midi = song([(0, True, 36, t / 4, t / 4 + 0.1) for t in range(8)] + [(0, False, 60, 0.1, 1.9)])  # no bass
    chunks = list(song_chunks(midi, "nobass", bank_renderer, config(ALL_ON), np.random.default_rng(0), Counter()))
    assert chunks and all(not c.stems[3].any() and not c.stems[2].any() for c in chunks)
    assert any(c.stems[1].any() for c in chunks) and any(c.stems[0].any() for c in chunks)   # the rest plays
    assert chunks[0].augment["stems"]["bass"]["gain_db"] == 0.0


def test_levels_bring_stems_to_target_plus_offset(bank_renderer, busy_midi):
    aug = apply_table(AugmentConfig(), {"level": {"on": True, "target_db": -24.0, "offset_db": 6.0}})
    rng, loudest = np.random.default_rng(3), Counter()
    for _ in range(6):
        stems, _, meta = render_augmented(busy_midi(4.0), "busy", 10_000, 2 * SR, bank_renderer, config(aug), rng)
        rms = 10 * np.log10(np.mean(stems.astype(np.float64) ** 2, axis=1))
        offsets = np.array([meta["stems"][c.name]["level_offset_db"] for c in DEFAULT_CLASSES])
        np.testing.assert_allclose(rms, -24.0 + offsets, atol=0.05)
        assert np.all(np.abs(offsets) <= 6)
        loudest[int(np.argmax(rms))] += 1
    assert len(loudest) >= 2, "the loudest stem should itself vary"


def test_same_seed_gives_the_same_chunks(busy_midi):
    needs_bank()
    midi = busy_midi(4.0)
    runs = []
    for _ in range(2):
        runs.append(list(song_chunks(midi, "busy", make_renderer(), config(PRESETS["full"], max_chunks_per_song=1000),
                                     np.random.default_rng(11), Counter())))
    assert len(runs[0]) == len(runs[1]) > 10
    for a, b in zip(*runs):
        assert a.offset == b.offset and a.augment == b.augment
        np.testing.assert_array_equal(a.stems, b.stems)
