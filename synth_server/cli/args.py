"""Flags shared by the commands that make chunks (dump, serve, analyze) and their parsing into
the typed config. Only CLI modules import this."""
from __future__ import annotations

import argparse
from pathlib import Path

import dataclasses

from synth_server.augment_config import DEFAULT_PRESET, POOLS, PRESETS, load_augment_toml
from synth_server.config import (DEFAULT_CLASSES, SPLITS, AudioConfig, ChunkSourceConfig, CorpusConfig, FilterConfig,
                     RenderConfig, load_classes_toml, parse_class_spec)


class UsageError(Exception):
    """A bad flag or flag combination: ``main`` prints ``error: <message>`` and exits 2."""


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--classes", type=Path, metavar="TOML",
                   help="instrument classes file ([classes.NAME] programs = '0-7' or drums = true)")
    g.add_argument("--class", dest="class_specs", action="append", default=[], metavar="NAME=PROGRAMS",
                   help="a class, e.g. guitar=24-31 or drums=drums (repeat; replaces the default classes)")
    g.add_argument("--min-notes", type=int, default=8, help="notes per class for a song to be eligible")
    g.add_argument("--jobs", type=int, default=0, help="parser processes (0: one per core)")
    g.add_argument("--index-cache", type=Path, help="index cache file (default CORPUS/.stemstream-index.json)")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Corpus, audio, render and filter flags."""
    add_corpus_args(p)
    g = p.add_argument_group("audio and rendering")
    g.add_argument("--sample-rate", type=int, default=AudioConfig.sample_rate)
    g.add_argument("--target", type=int, default=AudioConfig.target, help="target samples per chunk")
    g.add_argument("--context", type=int, default=AudioConfig.context, help="context samples on each side")
    g.add_argument("--soundfont", type=Path,
                   help="a .sf2/.sf3 file or a folder of them (the bank; default: the Debian soundfonts)")
    g.add_argument("--dynamic-samples", action="store_true",
                   help="FluidSynth loads samples when a preset is selected: less memory, slower switches")
    g.add_argument("--reverb", action="store_true", help="turn FluidSynth's reverb on")
    g.add_argument("--chorus", action="store_true", help="turn FluidSynth's chorus on")
    g.add_argument("--gain", type=float, default=RenderConfig.gain)
    g.add_argument("--preroll", type=float, default=RenderConfig.preroll,
                   help="seconds rendered before an excerpt at least; more when a note sounding at its start "
                        "began earlier (raise it with --reverb/--chorus: effect tails are not tracked)")
    g.add_argument("--preroll-cap", type=float, default=RenderConfig.preroll_cap,
                   help="seconds rendered before an excerpt at most (counted as preroll_capped when cut)")
    g.add_argument("--excerpt", type=float, default=RenderConfig.excerpt, help="seconds of target audio per render")
    g.add_argument("--max-chunks-per-song", type=int, default=ChunkSourceConfig.max_chunks_per_song)
    g.add_argument("--split", choices=SPLITS, default="train")
    a = p.add_argument_group("augmentation (docs/augmentation.md)")
    a.add_argument("--augment", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help=f"augmentation preset (default {DEFAULT_PRESET}; none: plain rendering)")
    a.add_argument("--augment-config", type=Path, metavar="TOML",
                   help="[augment.KNOB] tables overriding the preset's knobs (ranges, probabilities)")
    a.add_argument("--holdout-soundfont", action="append", default=[], metavar="NAME",
                   help="a soundfont the train split never uses (file name or stem; repeat)")
    a.add_argument("--soundfont-pool", choices=POOLS, default=None,
                   help="holdout: valid/test stems only from the held-out soundfonts (unseen timbres)")
    f = p.add_argument_group("energy filter (target region)")
    f.add_argument("--silence-db", type=float, default=FilterConfig.silence_db,
                   help="reject when the mixture RMS is below this (dBFS)")
    f.add_argument("--single-class-db", type=float, default=FilterConfig.single_class_db,
                   help="reject when mixture minus one stem is this far below the mixture (dB)")
    f.add_argument("--active-db", type=float, default=FilterConfig.active_db,
                   help="a stem is active above this energy relative to the mixture (dB)")
    f.add_argument("--min-active", type=int, default=FilterConfig.min_active, help="active stems required")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UsageError(f"{name} must be > 0, got {value}")


def classes_from_args(args: argparse.Namespace):
    if args.classes and args.class_specs:
        raise UsageError("give --classes TOML or --class NAME=PROGRAMS, not both")
    try:
        if args.classes:
            return load_classes_toml(args.classes)
        if args.class_specs:
            return tuple(parse_class_spec(s) for s in args.class_specs)
    except ValueError as exc:
        raise UsageError(f"{exc}") from None
    return DEFAULT_CLASSES


def augment_config(args: argparse.Namespace, split: str):
    """The --augment preset, its TOML overrides, then --holdout-soundfont and --soundfont-pool."""
    try:
        cfg = PRESETS[args.augment]
        if args.augment_config:
            cfg = load_augment_toml(args.augment_config, cfg)
        knob = cfg.soundfont
        if args.holdout_soundfont:
            knob = dataclasses.replace(knob, holdout=tuple(dict.fromkeys(knob.holdout + tuple(args.holdout_soundfont))))
        if args.soundfont_pool:
            knob = dataclasses.replace(knob, pool=args.soundfont_pool, p=1.0 if args.soundfont_pool == "holdout" else knob.p)
        cfg = dataclasses.replace(cfg, soundfont=knob)
    except ValueError as exc:
        raise UsageError(f"{exc}") from None
    if cfg.soundfont.pool == "holdout" and (split == "train" or not cfg.soundfont.holdout):
        raise UsageError("--soundfont-pool holdout needs --split valid/test and --holdout-soundfont NAME")
    return cfg


def corpus_config(args: argparse.Namespace, root: Path) -> CorpusConfig:
    return CorpusConfig(root=Path(root), classes=classes_from_args(args), min_notes=args.min_notes,
                        jobs=args.jobs, cache=args.index_cache)


def source_config(args: argparse.Namespace, root: Path, seed: int = 0) -> ChunkSourceConfig:
    for name in ("sample_rate", "target", "excerpt", "max_chunks_per_song"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.context < 0 or args.preroll < 0 or args.preroll_cap < 0:
        raise UsageError("--context, --preroll and --preroll-cap must be >= 0")
    return ChunkSourceConfig(
        corpus=corpus_config(args, root),
        audio=AudioConfig(sample_rate=args.sample_rate, target=args.target, context=args.context),
        render=RenderConfig(soundfont=args.soundfont, reverb=args.reverb, chorus=args.chorus, gain=args.gain,
                            preroll=args.preroll, preroll_cap=args.preroll_cap, excerpt=args.excerpt,
                            dynamic_samples=args.dynamic_samples),
        augment=augment_config(args, args.split),
        filter=FilterConfig(silence_db=args.silence_db, single_class_db=args.single_class_db,
                            active_db=args.active_db, min_active=args.min_active),
        split=args.split, max_chunks_per_song=args.max_chunks_per_song, seed=seed,
    )
