"""``trainer eval --unit chunk``: score a checkpoint on a deterministic held-out set of rendered chunks.

The set: eligible songs of one corpus split, visited in sorted path order, rendered with the
synthesis pipeline at the checkpoint's stream geometry (sample rate, target, context) and
filtered like the training stream, with ``np.random.default_rng(seed)``, a per-song cap so
the set spans several songs, and short excerpts (``EXCERPT_S``, visited in random order) so a
song's chunks come from several places in it. Per stem and overall (mean and median, dB):

* ``model``: SI-SDR of the model's estimate vs the target region of the stem;
* ``improvement``: that minus the SI-SDR of the mixture (SI-SDRi);
* ``mixture``: the mixture itself as the estimate (the floor);
* ``oracle``: the STFT ideal-ratio-mask oracle, computed on the whole window and cropped to the
  target region (a reference ceiling for mask-like separators).

Chunk-stem pairs whose reference is below ``SILENT_DBFS`` in the target region are skipped and
counted: SI-SDR against silence is meaningless.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synth_server.config import (DEFAULT_CLASSES, SPLITS, AudioConfig, ChunkSourceConfig, CorpusConfig,
                                 InstrumentClass, RenderConfig)
from synth_server.synth.corpus import CorpusIndex, build_index
from synth_server.synth.pipeline import corpus_chunks
from synth_server.synth.render import Renderer
from synth_server.synth.soundfont import resolve_soundfonts

from ..checkpoint import load_separator
from ..config import EvalConfig, resolve_device
from ..gain import GainStaging, apply_separator
from ..metrics import irm_oracle, si_sdr
from ..separate import stem_names

log = logging.getLogger(__name__)

SILENT_DBFS = -60.0     # reference RMS below this (target region): pair skipped
SPREAD = 8              # the set aims to span at least this many songs (when the split has them)
EXCERPT_S = 1.0         # short render excerpts (random order): a song's chunks come from many places
FIGURES = ("model", "improvement", "mixture", "oracle")


def classes_for(names: list[str]) -> tuple[InstrumentClass, ...]:
    """The default instrument classes named by a checkpoint's stems, in the stems' order."""
    known = {c.name: c for c in DEFAULT_CLASSES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"checkpoint stems {unknown} are not default classes {sorted(known)}; "
                         "eval can only render the default classes")
    return tuple(known[name] for name in names)


def _no_songs_message(index: CorpusIndex, split: str) -> str:
    per_split = {s: len(index.eligible(s)) for s in SPLITS}
    others = [s for s in ("valid", "test", "train") if s != split and per_split[s]]
    trained = " (songs the model trained on)" if others[:1] == ["train"] else ""
    hint = (f"try --split {others[0]}{trained} or use a larger corpus" if others
            else "no split has one: use a larger corpus (see `synth-server analyze`)")
    return f"no eligible song in split {split!r} of {index.cfg.root} (eligible per split: {per_split}); {hint}"


def eval_chunks(corpus: CorpusConfig, audio: AudioConfig, render: RenderConfig, split: str, n: int,
                seed: int) -> tuple[np.ndarray, int, Counter]:
    """Render the held-out set: -> (stems (count, stems, window) float32, songs used, counters).

    ``count <= n``: fewer when the split's songs hold fewer kept chunks. Songs in sorted path
    order, at most ``ceil(n / min(songs, SPREAD))`` chunks each; unreadable or unrenderable
    songs are skipped and counted (``songs_failed``). Raises ValueError when the split has no
    eligible song.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
    index = build_index(corpus)
    songs = index.eligible(split)
    if not songs:
        raise ValueError(_no_songs_message(index, split))
    per_song = max(1, math.ceil(n / min(len(songs), SPREAD)))
    source = ChunkSourceConfig(corpus=corpus, audio=audio, render=render, split=split,
                               max_chunks_per_song=per_song, seed=seed)
    renderer = Renderer(render, audio, corpus.classes, resolve_soundfonts(render.soundfont))
    counters: Counter = Counter()
    kept: list[np.ndarray] = []
    used = 0
    for _song, _midi, chunks in corpus_chunks(songs, source, renderer, np.random.default_rng(seed), n, counters):
        kept.extend(np.array(c.stems) for c in chunks)
        used += bool(chunks)
    if not kept:
        raise ValueError(f"split {split!r} of {corpus.root}: no chunk passed the filter "
                         f"(counters {dict(counters)})")
    return np.stack(kept), used, counters


def estimate(model: nn.Module, stems: torch.Tensor, target: int, device: torch.device,
             batch_size: int, gain: GainStaging) -> torch.Tensor:
    """Model estimates: stems (count, stems, window) -> (count, stems, target) float32 on cpu.

    The mixture ``stems.sum(1)`` is fed in batches of ``batch_size`` under ``torch.no_grad``,
    with the checkpoint's gain staging (``gain.apply_separator``).
    """
    mixture = stems.sum(dim=1, keepdim=True)                 # (count, 1, window)
    outs = []
    with torch.no_grad():
        for a in range(0, len(mixture), batch_size):
            outs.append(apply_separator(model, mixture[a:a + batch_size].to(device), target, gain).float().cpu())
    return torch.cat(outs)


def oracle_targets(stems: torch.Tensor, context: int, target: int, batch_size: int) -> torch.Tensor:
    """IRM oracle on whole windows, cropped: (count, stems, window) -> (count, stems, target)."""
    parts = [irm_oracle(stems[a:a + batch_size])[..., context:context + target]
             for a in range(0, len(stems), batch_size)]
    return torch.cat(parts)


def score_chunks(stems: torch.Tensor, estimates: torch.Tensor, oracle: torch.Tensor,
                 context: int) -> dict[str, torch.Tensor]:
    """Per chunk-stem figures, each (count, stems) float64: ``model``, ``improvement``,
    ``mixture``, ``oracle`` (SI-SDR, dB) and ``active`` (bool: reference >= SILENT_DBFS).

    ``stems`` (count, stems, window); ``estimates`` and ``oracle`` (count, stems, target).
    """
    target = estimates.shape[-1]
    reference = stems[..., context:context + target].double()            # (count, stems, target)
    mixture = reference.sum(dim=1, keepdim=True).expand_as(reference)
    model = si_sdr(estimates, reference)
    floor = si_sdr(mixture, reference)
    power = reference.pow(2).mean(dim=-1)
    active = 10 * torch.log10(power.clamp_min(1e-30)) >= SILENT_DBFS
    return {"model": model, "improvement": model - floor, "mixture": floor,
            "oracle": si_sdr(oracle, reference), "active": active}


def _stats(values: torch.Tensor) -> dict[str, float | None]:
    """Mean and median of a 1-D tensor, rounded to 0.01 dB; None when empty."""
    if values.numel() == 0:
        return {"mean": None, "median": None}
    return {"mean": round(values.mean().item(), 2), "median": round(values.median().item(), 2)}


def _figures(scores: dict[str, torch.Tensor], column: int | slice) -> dict:
    """``pairs``, ``skipped_silent`` and mean/median of every figure over the non-silent pairs
    of one stem (``column`` an index) or of all stems (``slice(None)``)."""
    active = scores["active"][:, column]
    out = {"pairs": int(active.sum()), "skipped_silent": int((~active).sum())}
    out.update({name: _stats(scores[name][:, column][active]) for name in FIGURES})
    return out


def summarise(scores: dict[str, torch.Tensor], names: list[str]) -> dict:
    """``{"stems": {name: figures}, "overall": figures}`` from ``score_chunks``' output."""
    return {"stems": {name: _figures(scores, i) for i, name in enumerate(names)},
            "overall": _figures(scores, slice(None))}


def format_table(result: dict) -> str:
    """Readable table of ``run_eval``'s result (one row per stem, then overall)."""
    head = (f"SI-SDR (dB, mean / median) on {result['chunks']} chunks from {result['songs']} songs "
            f"(split {result['split']!r}), checkpoint step {result['step']}")
    cols = ("model", "SI-SDRi", "mixture", "IRM oracle")
    lines = [head, f"{'stem':<10}{'pairs':>6}{'skip':>6}" + "".join(f"{c:>17}" for c in cols)]
    rows = list(result["stems"].items()) + [("overall", result["overall"])]
    for name, row in rows:
        cells = []
        for figure in FIGURES:
            mean, median = row[figure]["mean"], row[figure]["median"]
            cells.append("n/a" if mean is None else f"{mean:7.2f} / {median:6.2f}")
        lines.append(f"{name:<10}{row['pairs']:>6}{row['skipped_silent']:>6}"
                     + "".join(f"{c:>17}" for c in cells))
    skipped = result["overall"]["skipped_silent"]
    lines.append(f"skipped {skipped} chunk-stem pairs whose reference is below {SILENT_DBFS:g} dBFS "
                 "in the target region (SI-SDR is meaningless on silence)")
    return "\n".join(lines)


def write_plot(path: Path, result: dict) -> None:
    """Grouped bars of mean SI-SDR per stem (and overall) for model / mixture / IRM oracle."""
    from synth_server.tools.spectrogram import plt

    rows = list(result["stems"].items()) + [("overall", result["overall"])]
    series = (("model", "model"), ("mixture", "mixture as estimate"), ("oracle", "IRM oracle"))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    width = 0.8 / len(series)
    for k, (figure, label) in enumerate(series):
        values = [np.nan if row[figure]["mean"] is None else row[figure]["mean"] for _, row in rows]
        ax.bar(np.arange(len(rows)) + (k - 1) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(rows)), [name for name, _ in rows])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("mean SI-SDR (dB)")
    ax.set_title(f"step {result['step']}, {result['chunks']} chunks, split {result['split']}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_eval(cfg: EvalConfig) -> dict:
    """Score ``cfg.checkpoint`` on ``cfg.n`` held-out chunks; writes the JSON
    (``cfg.json_out``) and the bar plot (``cfg.plot_out``) when asked, returns the result dict."""
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={cfg.n}, batch_size={cfg.batch_size}")
    device = resolve_device(cfg.device)
    model, ckpt = load_separator(cfg.checkpoint, device)
    names = stem_names(model, ckpt)
    audio = AudioConfig(ckpt.spec.sample_rate, ckpt.spec.target, ckpt.spec.context)
    corpus = CorpusConfig(root=Path(cfg.corpus), classes=classes_for(names))
    render = RenderConfig(soundfont=cfg.soundfont, excerpt=EXCERPT_S)
    stems_np, songs, counters = eval_chunks(corpus, audio, render, cfg.split, cfg.n, cfg.seed)
    if len(stems_np) < cfg.n:
        log.warning("eval: only %d of %d chunks available in split %r", len(stems_np), cfg.n, cfg.split)
    stems = torch.from_numpy(stems_np)
    estimates = estimate(model, stems, audio.target, device, cfg.batch_size, ckpt.gain)
    oracle = oracle_targets(stems, audio.context, audio.target, cfg.batch_size)
    summary = summarise(score_chunks(stems, estimates, oracle, audio.context), names)
    result = {"checkpoint": str(cfg.checkpoint), "step": ckpt.step,
              "corpus": str(cfg.corpus), "split": cfg.split, "seed": cfg.seed, "requested": cfg.n,
              "chunks": len(stems_np), "songs": songs, "sample_rate": audio.sample_rate,
              "target": audio.target, "context": audio.context, "silent_threshold_dbfs": SILENT_DBFS,
              "render_counters": dict(sorted(counters.items())), **summary}
    if cfg.json_out is not None:
        Path(cfg.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if cfg.plot_out is not None:
        write_plot(Path(cfg.plot_out), result)
    return result
