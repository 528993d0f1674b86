"""Kept chunks per core-second, three ways, on the same songs, in one run.

  (a) stemstream's renderer: persistent synth, excerpts with pre-roll, aligned stems, chunk+filter;
      with the pre-roll chosen per excerpt and stem from the notes still sounding (default), and
      with the old fixed 2 s pre-roll (a2: --preroll 2 --preroll-cap 2), on the same excerpts
  (b) the `fluidsynth -F` CLI writing one WAV per stem, then chunk+filter
  (c) pretty_midi's `instrument.fluidsynth()` per instrument, summed per stem, then chunk+filter
  (bare) the same persistent synth driven by a minimal loop over the same excerpts (render only)
  (a, DEFAULT) / (a, full) the renderer with augmentation (docs/augmentation.md), soundfont bank loaded

Prints a/b, a/c, a/a2 and a/bare, and the pre-roll (a) renders per stem; the cost of each
augmentation preset over none (kept chunks per core-second; the filter's kept share changes with
levels too); then the resident memory of a fresh process holding a renderer with the plain
soundfont, the default bank, and the bank with FluidSynth's dynamic sample loading.
Songs: the demo corpus plus ../shared/midi/real (eligible songs).
CPU time (this process + children) is what is compared, so the figures are per core.

    .venv/bin/python bench/synth.py [--songs N] [--demo-songs N] [--seconds S]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth_server.config import (DEFAULT_CLASSES, class_instruments, AudioConfig, ChunkSourceConfig, CorpusConfig,  # noqa: E402
                                  FilterConfig, RenderConfig)
from synth_server.synth.corpus import build_index  # noqa: E402
from synth_server.synth.demo import write_demo_corpus  # noqa: E402
from synth_server.synth.midi_io import load_midi  # noqa: E402
from synth_server.synth.pipeline import TAIL, chunk_and_filter, plan_excerpts, song_chunks  # noqa: E402
from synth_server.synth.render import Renderer  # noqa: E402
from synth_server.synth.soundfont import resolve_bank, resolve_soundfonts  # noqa: E402
from synth_server.augment_config import DEFAULT_PRESET, PRESETS  # noqa: E402

AUDIO = AudioConfig()
SF2 = resolve_soundfonts(None)[0]


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def class_midi(midi: pretty_midi.PrettyMIDI, cls) -> pretty_midi.PrettyMIDI:
    out = pretty_midi.PrettyMIDI(initial_tempo=120)
    out.instruments = [i for i in midi.instruments if cls.matches(i.program, i.is_drum)]
    return out


def chunk_whole_song(stems: np.ndarray, song_id: str, counters: Counter) -> int:
    return sum(1 for _ in chunk_and_filter(stems, song_id, 0, AUDIO, FilterConfig(), counters))


def stack(waves: list[np.ndarray]) -> np.ndarray:
    n = max(len(w) for w in waves)
    return np.stack([np.pad(w, (0, n - len(w))) for w in waves]).astype(np.float32)


def run_ours(songs, renderer, cfg) -> int:
    counters: Counter = Counter()
    rng = np.random.default_rng(0)
    return sum(1 for song_id, midi in songs for _ in song_chunks(midi, song_id, renderer, cfg, rng, counters))


def bare_render(r: Renderer, midi, start: int, length: int) -> None:
    """A minimal persistent-synth loop over the same notes, controllers and pitch bends and the
    same render spans as ``r`` (its ``render_start`` per stem): events in time order, float writes
    between them; no block grid, state replay, silence check or chunking."""
    sr, fs, synth = AUDIO.sample_rate, r._fs, r.synth.synth
    for insts, tracks in zip(class_instruments(r.classes, midi.instruments), r._stems(midi, 0)):
        if not insts:
            continue
        r0 = r.render_start(tracks, start)[0]
        buf = np.empty((2, start + length - r0), np.float32)
        events = []
        for ch, inst in enumerate(insts):
            r.synth.program_select(ch, r._sfids[0], 128 if inst.is_drum else 0, inst.program)
            for n in inst.notes:
                on, off = int(n.start * sr), int(n.end * sr)
                if off > r0 and on < r0 + buf.shape[1]:
                    events.append((max(on, r0), 1, ch, n.pitch, n.velocity))
                    events.append((off, 0, ch, n.pitch, 0))
            events += [(max(r0, int(c.time * sr)), 2, ch, c.number, c.value) for c in inst.control_changes]
            events += [(max(r0, int(b.time * sr)), 3, ch, b.pitch + 8192, 0) for b in inst.pitch_bends]
        events.sort()
        cursor = r0
        play = (lambda ch, a, b: fs.fluid_synth_noteoff(synth, ch, a), lambda ch, a, b: fs.fluid_synth_noteon(
            synth, ch, a, b), lambda ch, a, b: fs.fluid_synth_cc(synth, ch, a, b),
            lambda ch, a, b: fs.fluid_synth_pitch_bend(synth, ch, a))
        for t, kind, ch, a, b in events:
            t = min(t, r0 + buf.shape[1])
            r._write(buf, cursor - r0, t - r0)
            cursor = t
            play[kind](ch, a, b)
        r._write(buf, cursor - r0, buf.shape[1])
        for ch in range(len(insts)):   # stop voices at once so no tail leaks into the next render
            fs.fluid_synth_all_sounds_off(synth, ch)
        fs.fluid_synth_system_reset(synth)


def preroll_figures(songs, renderer, cfg) -> tuple[float, float, int]:
    """(mean pre-roll seconds per stem render, share of excerpts capped, stem renders) of the
    excerpts (a) renders."""
    rng, per = np.random.default_rng(0), int(cfg.render.excerpt * AUDIO.sample_rate) // AUDIO.target
    seconds, capped, excerpts, stems = 0.0, 0, 0, 0
    for _, midi in songs:
        duration = int((midi.get_end_time() + TAIL) * AUDIO.sample_rate)
        for start, _ in plan_excerpts(duration, AUDIO, per, rng):
            cut = False
            for tracks in renderer._stems(midi, 0):
                if tracks:
                    r0, c = renderer.render_start(tracks, start)
                    seconds, stems, cut = seconds + (start - r0) / AUDIO.sample_rate, stems + 1, cut or c
            capped, excerpts = capped + cut, excerpts + 1
    return seconds / max(stems, 1), capped / max(excerpts, 1), stems


def run_bare(songs, renderer, cfg) -> int:
    """The same excerpts as (a), through ``bare_render``; returns chunk slots rendered."""
    rng = np.random.default_rng(0)
    per = int(cfg.render.excerpt * AUDIO.sample_rate) // AUDIO.target
    n = 0
    for _, midi in songs:
        duration = int((midi.get_end_time() + TAIL) * AUDIO.sample_rate)
        for start, k in plan_excerpts(duration, AUDIO, per, rng):
            bare_render(renderer, midi, start, k * AUDIO.target + 2 * AUDIO.context)
            n += k
    return n


def run_cli(songs, tmp: Path) -> int:
    kept, counters = 0, Counter()
    for song_id, midi in songs:
        waves = []
        for cls in DEFAULT_CLASSES:
            mid, wav = tmp / f"{cls.name}.mid", tmp / f"{cls.name}.wav"
            class_midi(midi, cls).write(str(mid))
            subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.3", "-r", "44100",
                            "-F", str(wav), str(SF2), str(mid)], check=True, capture_output=True)
            data, _ = sf.read(wav, dtype="float32")
            waves.append(data.mean(axis=1) if data.ndim == 2 else data)
        kept += chunk_whole_song(stack(waves), song_id, counters)
    return kept


def run_pretty_midi(songs) -> int:
    kept, counters = 0, Counter()
    for song_id, midi in songs:
        waves = []
        for cls in DEFAULT_CLASSES:
            parts = [i.fluidsynth(fs=AUDIO.sample_rate, synthesizer=str(SF2)) for i in midi.instruments
                     if cls.matches(i.program, i.is_drum)]
            waves.append(stack(parts).sum(0) if parts else np.zeros(1, np.float32))
        kept += chunk_whole_song(stack(waves), song_id, counters)
    return kept


def measure(name, fn, *args):
    t0, w0 = cpu_seconds(), time.perf_counter()
    count = fn(*args)
    cpu = cpu_seconds() - t0
    print(f"  {name:<34} {count:6d} in {cpu:6.2f} cpu-s ({time.perf_counter() - w0:6.2f} wall-s)"
          f" -> {count / cpu:8.1f} /core-s", flush=True)
    return count, cpu


RSS_PROBE = """
import sys, pathlib
sys.path.insert(0, {root!r})
from synth_server.config import AudioConfig, DEFAULT_CLASSES, RenderConfig
from synth_server.synth.render import Renderer
from synth_server.synth.soundfont import soundfonts_for
r = Renderer(RenderConfig(dynamic_samples={dynamic}), AudioConfig(), DEFAULT_CLASSES, soundfonts_for(None, {bank}))
page = __import__("os").sysconf("SC_PAGE_SIZE")
print(len(r.soundfonts), int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * page)
"""


def renderer_rss(bank: bool, dynamic: bool) -> tuple[int, float, float]:
    """(soundfonts, RSS MiB, load wall-s) of a fresh process holding one renderer, as a worker does."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RSS_PROBE.format(root=str(ROOT), bank=bank, dynamic=dynamic)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]) / 2**20, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-songs", type=int, default=4)
    ap.add_argument("--real-songs", type=int, default=6)
    ap.add_argument("--excerpt", type=float, default=30.0, help="seconds per excerpt render in (a)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    write_demo_corpus(tmp / "demo", args.demo_songs, seed=1)
    paths = sorted((tmp / "demo").glob("*.mid"))
    real = ROOT.parent / "shared" / "midi" / "real"
    if real.is_dir():
        index = build_index(CorpusConfig(root=real, cache=tmp / "index.json", jobs=2))
        paths += [real / s.path for s in index.eligible(None)[:args.real_songs]]
    songs = [(p.stem, load_midi(p, 16 << 20)) for p in paths]
    seconds = sum(m.get_end_time() for _, m in songs)
    print(f"{len(songs)} songs, {seconds:.0f} s of music, soundfont {SF2.name}, one core")
    # every chunk of every song, as (b) and (c) produce: long excerpts, no per-song cap
    render = RenderConfig(excerpt=args.excerpt)
    fixed = RenderConfig(excerpt=args.excerpt, preroll=2.0, preroll_cap=2.0)    # the pre-roll before issue 15
    cfg = ChunkSourceConfig(corpus=CorpusConfig(root=tmp), render=render, max_chunks_per_song=10**9)
    cfg_fixed = ChunkSourceConfig(corpus=CorpusConfig(root=tmp), render=fixed, max_chunks_per_song=10**9)
    renderer = Renderer(render, AUDIO, DEFAULT_CLASSES, [SF2])
    renderer_fixed = Renderer(fixed, AUDIO, DEFAULT_CLASSES, [SF2])
    bank = resolve_bank(None)
    bank_renderer = Renderer(render, AUDIO, DEFAULT_CLASSES, bank)
    presets = list(dict.fromkeys([DEFAULT_PRESET, "full"]))
    aug_cfgs = {name: ChunkSourceConfig(corpus=cfg.corpus, render=render, max_chunks_per_song=10**9,
                                        augment=PRESETS[name]) for name in presets}
    mean_preroll, capped, stem_renders = preroll_figures(songs, renderer, cfg)
    print(f"(a) renders {args.excerpt:g} s excerpts; pre-roll per stem from the notes still sounding "
          f"(min {render.preroll:g} s, cap {render.preroll_cap:g} s): mean {mean_preroll:.2f} s over "
          f"{stem_renders} stem renders, {capped:.1%} of excerpts capped; (a2) fixed 2 s; (b), (c) whole songs; "
          f"augmented runs draw from {len(bank)} soundfonts ({', '.join(p.stem for p in bank)})")
    a_n = a_cpu = a2_n = a2_cpu = bare_n = bare_cpu = 0.0
    aug = {name: [0.0, 0.0] for name in presets}
    for song in songs:  # alternate per song so load changes on a shared machine hit all alike
        t0 = cpu_seconds()
        a_n += run_ours([song], renderer, cfg)
        t1 = cpu_seconds()
        bare_n += run_bare([song], renderer, cfg)
        t2 = cpu_seconds()
        a2_n += run_ours([song], renderer_fixed, cfg_fixed)
        a_cpu, bare_cpu, a2_cpu = a_cpu + t1 - t0, bare_cpu + t2 - t1, a2_cpu + cpu_seconds() - t2
        for name in presets:
            t3 = cpu_seconds()
            aug[name][0] += run_ours([song], bank_renderer, aug_cfgs[name])
            aug[name][1] += cpu_seconds() - t3
    print(f"  {'(a) stemstream renderer: kept':<34} {a_n:6.0f} in {a_cpu:6.2f} cpu-s -> {a_n / a_cpu:8.1f} /core-s")
    print(f"  {'(a2) same, fixed 2 s pre-roll: kept':<34} {a2_n:6.0f} in {a2_cpu:6.2f} cpu-s -> "
          f"{a2_n / a2_cpu:8.1f} /core-s")
    for name, (n, cpu) in aug.items():
        print(f"  {f'(a, --augment {name}): kept':<34} {n:6.0f} in {cpu:6.2f} cpu-s -> {n / cpu:8.1f} /core-s")
    print(f"  {'(bare) minimal loop: chunk slots':<34} {bare_n:6.0f} in {bare_cpu:6.2f} cpu-s -> "
          f"{bare_n / bare_cpu:8.1f} /core-s")
    c_n, c_cpu = measure("(c) pretty_midi fluidsynth(): kept", run_pretty_midi, songs)
    b = measure("(b) fluidsynth -F per stem: kept", run_cli, songs, tmp) if shutil.which("fluidsynth") else None
    a = a_n / a_cpu
    print(f"a/a2 = {a / (a2_n / a2_cpu):.2f}   (the exact pre-roll's cost against the fixed 2 s)")
    print(f"a/c = {a / (c_n / c_cpu):.2f}")
    if b:
        print(f"a/b = {a / (b[0] / b[1]):.2f}   (goal >= 2.0)")
    else:
        print("a/b: skipped, the `fluidsynth` CLI is not installed (apt install fluidsynth)")
    print(f"renderer time / bare loop time on the same excerpts and spans = {a_cpu / bare_cpu:.2f}   (goal <= 1.10)")
    print(f"kept share of rendered chunk slots: {a_n / bare_n:.2f} (the filter's rejections)")
    for name, (n, cpu) in aug.items():
        goal = "   (goal <= 1.25)" if name == DEFAULT_PRESET else ""
        print(f"cost of --augment {name} over none, core-s per kept chunk: {(cpu / n) / (a_cpu / a_n):.2f}{goal}"
              f"; per chunk slot rendered: {cpu / a_cpu:.2f}")
    for label, use_bank, dynamic in (("plain soundfont", False, False), ("default bank", True, False),
                                     ("default bank, dynamic samples", True, True)):
        count, rss, wall = renderer_rss(use_bank, dynamic)
        print(f"renderer process RSS, {label} ({count} soundfonts): {rss:6.0f} MiB (start {wall:4.1f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
