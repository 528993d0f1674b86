"""Augmentation knobs, presets, TOML and the per-excerpt draws (no audio)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synth_server.augment_config import (DEFAULT_PRESET, PRESETS, AugmentConfig, SoundfontKnob, apply_table,
                                         augment_from_dict, augment_to_dict, load_augment_toml)
from synth_server.config import DEFAULT_CLASSES, ChunkSourceConfig, CorpusConfig, heldout_timbres
from synth_server.serve.config import source_from_json, source_to_json
from synth_server.synth.augment import draw_excerpt
from synth_server.synth.soundfont import SoundfontInfo

GM = frozenset(range(128))
KITS = ((0, "Standard"), (8, "Room"), (25, "TR-808"), (58, "Marching Cymbals"))
BANK = [SoundfontInfo("A", Path("A.sf2"), GM, KITS, False), SoundfontInfo("B", Path("B.sf2"), GM, KITS[:1], False),
        SoundfontInfo("C", Path("C.sf3"), GM, KITS, False),
        SoundfontInfo("Kit", Path("Kit.sf2"), frozenset(), ((0, "Kit"),), True)]
PROGRAMS = [{0}, {0, 1}, {48}, {33}]


def draws(cfg, split="train", n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [draw_excerpt(cfg, BANK, DEFAULT_CLASSES, split, f"song{i % 7}", PROGRAMS, rng) for i in range(n)]


def test_none_is_off_and_the_presets_are_on():
    assert not AugmentConfig().enabled and not PRESETS["none"].enabled
    assert PRESETS["light"].enabled and PRESETS["full"].enabled and DEFAULT_PRESET in PRESETS


def test_toml_overrides_a_preset_and_rejects_mistakes(tmp_path):
    path = tmp_path / "aug.toml"
    path.write_text("[augment.reverb]\np = 0.5\nroom_size = [0.2, 0.3]\n[augment.transpose]\nsemitones = 3\n"
                    "[augment.soundfont]\nholdout = ['TimGM6mb']\n")
    cfg = load_augment_toml(path, PRESETS["light"])
    assert cfg.reverb.p == 0.5 and cfg.reverb.room_size == (0.2, 0.3) and cfg.transpose.semitones == 3
    assert cfg.soundfont.holdout == ("TimGM6mb",) and cfg.eq == PRESETS["light"].eq
    for table, message in [({"reverbb": {}}, "unknown knob"), ({"reverb": {"size": 1}}, "unknown setting"),
                           ({"reverb": {"p": 2.0}}, "0..1"), ({"tempo": {"range": [1.2, 0.9]}}, "low"),
                           ({"transpose": {"semitones": 2.5}}, "whole number"), ({"eq": {"gain_db": 3}}, "list"),
                           ({"soundfont": {"pool": "x"}}, "pool"), ({"drum_kit": {"programs": [200]}}, "0..127")]:
        with pytest.raises(ValueError, match=message):
            apply_table(PRESETS["none"], table)


def test_the_welcome_carries_every_knob():
    cfg = apply_table(PRESETS["full"], {"soundfont": {"holdout": ["B"]}, "jitter": {"ms": 2.0}})
    assert augment_from_dict(json.loads(json.dumps(augment_to_dict(cfg)))) == cfg
    source = ChunkSourceConfig(corpus=CorpusConfig(root=Path(".")), augment=cfg)
    assert source_from_json(json.loads(json.dumps(source_to_json(source)))).augment == cfg
    legacy = source_to_json(source)
    del legacy["augment"]
    assert source_from_json(legacy).augment == AugmentConfig()


def test_none_draws_nothing_from_the_generator():
    rng = np.random.default_rng(3)
    draw = draw_excerpt(AugmentConfig(), BANK, DEFAULT_CLASSES, "train", "s", PROGRAMS, rng)
    assert draw.midi.identity and draw.level_db is None and not any(draw.effects)
    assert all(v.program is None and v.bank is None for v in draw.voices[1:])


def test_same_seed_same_draws_and_draws_vary():
    a = [d.meta(DEFAULT_CLASSES, "full") for d in draws(PRESETS["full"], seed=5)]
    b = [d.meta(DEFAULT_CLASSES, "full") for d in draws(PRESETS["full"], seed=5)]
    assert a == b
    assert len({json.dumps(m, sort_keys=True) for m in a}) == len(a)
    assert {m["transpose"] for m in a} == set(range(-4, 5))
    tempos = [m["tempo"] for m in a]
    assert min(tempos) >= 0.8 and max(tempos) <= 1.25 and len(set(tempos)) > 100


def test_drums_get_kits_and_pitched_stems_never_a_drum_only_soundfont():
    out = draws(PRESETS["full"])
    drums = {(d.names[0], d.voices[0].program) for d in out}
    assert ("Kit", 0) in drums and ("A", 25) in drums and ("A", None) in drums
    assert all(program != 58 for _, program in drums)          # only the GS kits (drum_kit.programs)
    assert all(d.voices[0].bank == 0 for d in out if d.names[0] == "Kit")           # drum-only: bank 0 kits
    assert all(name != "Kit" for d in out for name in d.names[1:])
    piano = {d.voices[1].program for d in out}
    assert piano <= set(range(8)) | {None} and len(piano) == 9                      # within the class
    assert all(d.voices[2].program in set(range(40, 52)) | {None} for d in out)
    assert {n for d in out for n in d.names[1:]} == {"A", "B", "C"}


def test_effects_respect_their_classes():
    out = draws(PRESETS["full"])
    by_stem = [{name for d in out for name, _ in d.effects[i]} for i in range(4)]
    assert "distortion" in by_stem[3] and all("distortion" not in s for s in by_stem[:3])
    assert "chorus" in by_stem[1] and "chorus" not in by_stem[0] | by_stem[3]
    assert all("reverb" in s and "eq" in s for s in by_stem)


def test_held_out_soundfonts_never_reach_train_and_fill_heldout_valid():
    cfg = apply_table(PRESETS["full"], {"soundfont": {"holdout": ["C.sf3", "kit"]}})
    names = {n for d in draws(cfg, "train", n=1000) for n in d.names}
    assert names == {"A", "B"}
    held = dataclasses.replace(cfg, soundfont=SoundfontKnob(p=1.0, holdout=("C", "Kit"), pool="holdout"))
    out = draws(held, "valid")
    assert {d.names[0] for d in out} == {"C", "Kit"} and {n for d in out for n in d.names[1:]} == {"C"}
    assert {n for d in draws(cfg, "valid") for n in d.names} == {"A", "B", "C", "Kit"}


def test_heldout_timbres_config_for_the_evaluation():
    source = ChunkSourceConfig(corpus=CorpusConfig(root=Path(".")),
                               augment=apply_table(PRESETS[DEFAULT_PRESET], {"soundfont": {"holdout": ["C"]}}))
    held = heldout_timbres(source, "test")
    assert held.split == "test" and held.augment.soundfont.pool == "holdout" and held.augment.soundfont.p == 1.0
    out = draws(held.augment, "test")
    assert {n for d in out for n in d.names} == {"C"}
    with pytest.raises(ValueError, match="valid or test"):
        heldout_timbres(source, "train")
    with pytest.raises(ValueError, match="no held-out"):
        heldout_timbres(ChunkSourceConfig(corpus=CorpusConfig(root=Path("."))))
