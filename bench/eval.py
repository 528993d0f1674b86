"""Evaluation benchmark: seconds of audio scored per second, and where the time goes.

Renders N excerpts of L seconds from a corpus (default: 12 demo songs; the split holding most
of them) at 44.1 kHz, then for each model times, on the same excerpts, the parts of
`trainer eval`'s excerpt-level scoring: the model's windowed separation (`separate_waveform`,
as `trainer separate`), the IRM oracle, SI-SDR of every system, and museval's BSS-eval v4 of
every system (model, mixture, oracle). Models are randomly initialised presets (speed does not
depend on the weights). Rendering is not timed (it is the synthesis benchmark's subject).

    .venv/bin/python bench/eval.py [--models tiny] [--n 4] [--seconds 10] [--device cpu] [--corpus DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth_server.config import DEFAULT_CLASSES, SPLITS, CorpusConfig  # noqa: E402
from synth_server.synth.corpus import build_index  # noqa: E402
from trainer.config import resolve_device  # noqa: E402
from trainer.eval.excerpts import corpus_excerpts  # noqa: E402
from trainer.eval.scores import oracle_estimates, score_estimates  # noqa: E402
from trainer.models import build_model, count_parameters, preset  # noqa: E402
from trainer.separate import separate_waveform  # noqa: E402

RATE = 44100


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_model(name: str, excerpts, device: torch.device, window: int) -> dict:
    model = build_model(preset(name)).to(device).eval()
    parts = Counter()
    for e in excerpts:
        est, t = timed(lambda: separate_waveform(model, e.mixture, window, device))
        parts["separate"] += t
        oracle, t = timed(lambda: oracle_estimates(e.stems.astype(np.float64), e.mixture))
        parts["oracle"] += t
        mixture = np.broadcast_to(e.mixture, e.stems.shape)
        for system in (est, mixture, oracle):
            _, t = timed(lambda: score_estimates(e.stems, system, e.mixture, RATE, bss=False))
            parts["si_sdr"] += t
            _, t_all = timed(lambda: score_estimates(e.stems, system, e.mixture, RATE, bss=True))
            parts["museval"] += max(0.0, t_all - t)
    audio = sum(len(e.mixture) for e in excerpts) / RATE
    total = sum(parts.values())
    return {"model": name, "params": count_parameters(model), "audio_s": round(audio, 1),
            "total_s": round(total, 2), "audio_s_per_s": round(audio / total, 3),
            "audio_s_per_s_without_bss": round(audio / (total - parts["museval"]), 3),
            "share": {k: round(v / total, 3) for k, v in parts.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny", help="comma-separated presets (seed is slow on CPU)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--window", type=int, default=44100)
    ap.add_argument("--corpus", type=Path, default=None, help="MIDI folder (default: 12 demo songs)")
    args = ap.parse_args()
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from synth_server.synth.demo import write_demo_corpus

            corpus = Path(tmp) / "corpus"
            write_demo_corpus(corpus, 12, 0)
        eligible = build_index(CorpusConfig(root=corpus)).eligible()
        split = max(SPLITS, key=lambda s: (sum(x.split == s for x in eligible), s == "test"))
        excerpts = corpus_excerpts(corpus, DEFAULT_CLASSES, split, args.n, args.seconds, 0, RATE, None, [],
                                   Counter())[0]
    print(f"{len(excerpts)} excerpts x {args.seconds:g} s at {RATE} Hz (split {split}), device {device}, "
          f"torch threads {torch.get_num_threads()}, BSS-eval of 3 systems (model, mixture, oracle) per excerpt")
    rows = [bench_model(name, excerpts, device, args.window) for name in args.models.split(",")]
    for r in rows:
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        print(f"{r['model']:>6} ({r['params']} params): {r['audio_s_per_s']:.3f} s of audio scored per s "
              f"({r['audio_s_per_s_without_bss']:.2f} without BSS-eval); time: {share}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
