"""Write chunks to disk to look at and listen to.

Layout per chunk: ``OUT/<chunk_id>/mixture.wav`` and ``<stem>.wav`` (target region),
``OUT/<chunk_id>/context/`` (the same with context), ``meta.json`` and ``spectrogram.png`` (one
shared dB scale per chunk); plus ``OUT/index.html`` with players for every chunk.
"""
from __future__ import annotations

import dataclasses
import html
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from synth_server.config import AudioConfig, ChunkSourceConfig, class_instruments

log = logging.getLogger(__name__)


def _rms_db(x: np.ndarray) -> float:
    return round(float(10 * np.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20))), 2)


def write_chunk(out: Path, stems: np.ndarray, stem_names: list[str], audio: AudioConfig, meta: dict) -> Path:
    """Write one chunk. ``stems``: ``(stems, context + target + context)`` float32.

    ``meta`` must hold ``song`` and ``offset``; per-stem RMS (dBFS, target region) is added.
    Returns the chunk folder.
    """
    folder = out / f"{meta['song']}_{meta['offset']}"
    (folder / "context").mkdir(parents=True, exist_ok=True)
    c, t = audio.context, audio.target
    target = stems[:, c:c + t]
    for sub, data in (("", target), ("context", stems)):
        sf.write(folder / sub / "mixture.wav", data.sum(0), audio.sample_rate, subtype="FLOAT")
        for name, wave in zip(stem_names, data):
            sf.write(folder / sub / f"{name}.wav", wave, audio.sample_rate, subtype="FLOAT")
    meta = dict(meta, stems=stem_names, sample_rate=audio.sample_rate, target=t, context=c,
                rms_db={name: _rms_db(w) for name, w in zip(stem_names, target)},
                mixture_rms_db=_rms_db(target.sum(0)))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    write_spectrogram(folder / "spectrogram.png", stems, stem_names, audio)
    return folder


def write_spectrogram(path: Path, stems: np.ndarray, stem_names: list[str], audio: AudioConfig) -> None:
    """Spectrograms of the mixture and each stem (context shaded) on one dB scale: the mixture's
    loudest bin is the top of the scale for every row, so a silent stem is drawn black."""
    from synth_server.tools.spectrogram import draw_spectrogram, plt, shared_range

    rows = [("mixture", stems.sum(0))] + list(zip(stem_names, stems))
    vrange = shared_range([wave for _, wave in rows])
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows)), sharex=True)
    for ax, (name, wave) in zip(axes, rows):
        draw_spectrogram(ax, wave, audio.sample_rate, vrange, max_hz=8000)
        for edge in (audio.context, audio.context + audio.target):
            ax.axvline(edge / audio.sample_rate, color="w", lw=0.8, ls="--")
        ax.set_ylabel(name)
    axes[-1].set_xlabel(f"seconds (dashed: target region); colour: {vrange[0]:.0f} to {vrange[1]:.0f} dB")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _augment_cell(augment: dict | None, stem: str) -> str:
    """What augmentation drew for one stem: soundfont, preset, effects, level."""
    if not augment or stem not in augment.get("stems", {}):
        return "<td></td>"
    s = augment["stems"][stem]
    preset = s.get("preset_name") or ("song's" if s.get("program") is None else f"program {s['program']}")
    fx = ", ".join(f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})" for name, params in s["effects"])
    gain = "" if s.get("gain_db") is None else f"; gain {s['gain_db']:+.1f} dB (offset {s['level_offset_db']:+.1f})"
    return f"<td><small>{html.escape(s['soundfont'])}: {html.escape(preset)}{gain}<br>{html.escape(fx)}</small></td>"


def _augment_line(augment: dict | None) -> str:
    if not augment:
        return ""
    vel = augment["velocity"]
    return (f"<p>augment <b>{html.escape(str(augment['preset']))}</b>: transpose {augment['transpose']:+d}, "
            f"tempo x{augment['tempo']}, velocity x{vel[0]} ^{vel[1]}, jitter {augment['jitter_ms']} ms</p>")


def write_index(out: Path, folders: list[Path]) -> Path:
    """``OUT/index.html``: per chunk, its metadata (with what augmentation drew per stem), a player
    per wav and the spectrogram."""
    parts = ["<!doctype html><meta charset='utf-8'><title>stemstream dump</title>",
             "<style>body{font-family:sans-serif}section{border-bottom:1px solid #ccc;padding:8px}"
             "audio{height:28px;vertical-align:middle}td{padding:2px 8px}</style>",
             f"<h1>stemstream dump: {len(folders)} chunks</h1>"]
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        name = html.escape(folder.name)
        rows = "".join(
            f"<tr><td>{html.escape(stem)}</td><td>{meta['rms_db'].get(stem, meta['mixture_rms_db'])} dBFS</td>"
            f"<td><audio controls preload=none src='{name}/{html.escape(stem)}.wav'></audio></td>"
            f"<td><audio controls preload=none src='{name}/context/{html.escape(stem)}.wav'></audio></td>"
            f"{_augment_cell(meta.get('augment'), stem)}</tr>"
            for stem in ["mixture"] + meta["stems"])
        figures = html.escape(json.dumps({k: v for k, v in meta.items() if k not in ("stems", "rms_db", "augment")}))
        img = f"<img src='{name}/spectrogram.png' width=640>"
        parts.append(f"<section><h3>{name}</h3><code>{figures}</code>{_augment_line(meta.get('augment'))}"
                     f"<table><tr><th></th><th>RMS</th><th>target</th><th>with context</th><th>augmentation</th></tr>"
                     f"{rows}</table>{img}</section>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


def dump_from_corpus(cfg: ChunkSourceConfig, n: int, out: Path) -> tuple[list[Path], Counter]:
    """Render ``n`` kept chunks straight from the corpus (no server) and write them.

    Songs of ``cfg.split`` are visited in a seeded random order, at most ``ceil(n / 4)`` chunks
    each, so a dump spans several songs. Returns (chunk folders, counters).
    """
    from synth_server.synth.corpus import build_index
    from synth_server.synth.pipeline import corpus_chunks
    from synth_server.synth.render import Renderer
    from synth_server.synth.soundfont import check_holdout, soundfonts_for

    songs = build_index(cfg.corpus).eligible(cfg.split)
    if not songs:
        raise ValueError(f"no eligible song in split {cfg.split!r} of {cfg.corpus.root} "
                         "(run `synth-server analyze` to see why)")
    rng = np.random.default_rng(cfg.seed)
    soundfonts = soundfonts_for(cfg.render.soundfont, cfg.augment.enabled)
    check_holdout(soundfonts, cfg.augment.soundfont.holdout)
    renderer = Renderer(cfg.render, cfg.audio, cfg.corpus.classes, soundfonts)
    names = [c.name for c in cfg.corpus.classes]
    per_song = min(cfg.max_chunks_per_song, max(1, -(-n // 4)))
    source = dataclasses.replace(cfg, max_chunks_per_song=per_song)
    counters: Counter = Counter()
    folders: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    order = [songs[i] for i in rng.permutation(len(songs))]
    for song, midi, chunks in corpus_chunks(order, source, renderer, rng, n, counters):
        sfont = renderer.soundfonts[renderer.soundfont_for(song.song_id)].name
        programs = {name: sorted({int(inst.program) for inst in insts})
                    for name, insts in zip(names, class_instruments(cfg.corpus.classes, midi.instruments))}
        for chunk in chunks:
            meta = {"song": song.song_id, "path": song.path, "offset": chunk.offset,
                    "offset_seconds": round(chunk.offset / cfg.audio.sample_rate, 4),
                    "programs": programs, "filter": chunk.figures}
            meta.update({"augment": chunk.augment} if chunk.augment is not None else {"soundfont": sfont})
            folders.append(write_chunk(out, chunk.stems, names, cfg.audio, meta))
    write_index(out, folders)
    return folders, counters


def dump_from_stream(address: str, n: int, out: Path, timeout: float = 60.0, batch_size: int = 8) -> list[Path]:
    """Tap a running server as a client and write ``n`` chunks as they are served.

    Raises TimeoutError when the server sends nothing for ``timeout`` seconds.
    """
    from synth_server.client import StreamClient
    from synth_server.protocol import from_wire

    out.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    size = max(1, min(batch_size, n))
    with StreamClient(address, batch_size=size, prefetch=2, timeout=min(timeout, 10.0),
                      client_id=f"dump-{out.name}") as client:
        while len(folders) < n:
            batch = client.get(timeout=timeout)
            if batch is None:
                break
            spec = batch.spec
            audio = AudioConfig(sample_rate=spec.sample_rate, target=spec.target, context=spec.context)
            for stems, meta in zip(from_wire(batch.stems), batch.chunks):
                if len(folders) >= n:
                    break
                meta = {"song": meta["song"], "offset": meta["offset"], "uses": meta.get("uses"),
                        "offset_seconds": round(meta["offset"] / spec.sample_rate, 4), "source": address,
                        "dtype": spec.dtype, **({"augment": meta["augment"]} if "augment" in meta else {})}
                folders.append(write_chunk(out, np.ascontiguousarray(stems), list(spec.stems), audio, meta))
    write_index(out, folders)
    return folders
