"""Model benchmark: every architecture side by side, in one run.

  (1) per preset: parameters, context, receptive field, forward FLOPs per second of output
      (``trainer.models.profile``: 1 s windows at 44.1 kHz, LSTMs included, FFTs not), and the
      time of one training step (forward + backward + Adam, ``bench/train.py``'s
      ``step_figures``) at batch 12 on windows of target 4410 + the model's own context. Full
      presets whose step would exceed ``--max-step-gflop`` are not timed on CPU (their scaled-down
      ``-tiny`` row stands in); on CUDA every full preset is timed, with achieved TFLOP/s.
  (2) equal-budget training: each small config trains for ``--budget`` seconds of wall clock from
      one local ``synth-server serve`` (all models read the same stream: target 4410, context
      1024 = the largest context of the small configs), same loss, lr, batch and seed; then
      SI-SDR and SI-SDRi (vs the mixture as the estimate) on the same held-out chunks, rendered
      once from the corpus' held-out splits (default: the real MIDI corpus, trained on its train
      split, scored on valid + test).

    .venv/bin/python bench/models.py [--budget 60] [--corpus DIR] [--eval-splits valid,test] [--n 48]
        [--skip-train] [--models tiny,waveunet-tiny,...]

On a 2-core CPU box the server's worker and the trainer share the cores; the step times of (1)
and the budget of (2) are wall clock on that box.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream import Server  # noqa: E402
from train import step_figures  # noqa: E402

from synth_server.config import AudioConfig, CorpusConfig, RenderConfig  # noqa: E402
from trainer.checkpoint import load_separator  # noqa: E402
from trainer.config import TrainConfig, resolve_device  # noqa: E402
from trainer.eval.chunks import EXCERPT_S, SILENT_DBFS, classes_for, eval_chunks  # noqa: E402
from trainer.metrics import si_sdr  # noqa: E402
from trainer.models import PRESETS, preset  # noqa: E402
from trainer.models.profile import counting_model, forward_flops, model_figures  # noqa: E402
from trainer.train import run_train  # noqa: E402

SMALL = ("tiny", "flatconv-tiny", "waveunet-tiny", "resunet-tiny", "specunet-tiny", "openunmix-tiny",
         "htdemucs-tiny", "hdemucs-tiny")
TARGET, TRAIN_CONTEXT, BATCH = 4410, 1024, 12
STEMS = ("drums", "piano", "strings", "bass")


def step_flops_estimate(name: str) -> float:
    """Training FLOPs of one batch-12 step, estimated as 3 x the forward (batch 1, x 12)."""
    cfg = preset(name)
    window = TARGET + 2 * cfg.context()
    model = counting_model(cfg.for_stream(44100, window, 4))
    return 3 * BATCH * forward_flops(model, window, TARGET)


def table_rows(names: list[str], device: torch.device, max_step_gflop: float, steps: int) -> list[dict]:
    rows = []
    for name in names:
        fig = model_figures(preset(name))
        row = {"model": name, "kind": fig.kind, "params": fig.params, "context": fig.context,
               "receptive_field": fig.receptive_field, "gflop_per_output_s": fig.flops_per_s / 1e9}
        est = step_flops_estimate(name)
        if device.type == "cuda" or est / 1e9 <= max_step_gflop:
            step = step_figures(name, BATCH, steps, device, context=fig.context, target=TARGET)
            row.update(step_ms=step["step_ms"], step_gflop_counted=step["flops_per_step"] / 1e9,
                       tflops_per_s=step["tflops_per_s"] if device.type == "cuda" else None)
        else:
            row.update(step_ms=None, step_gflop_estimated=est / 1e9)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_for(name: str, address: str, run_dir: Path, budget: float, lr: float) -> tuple[Path, int]:
    """Train preset ``name`` from the stream for ``budget`` seconds; (checkpoint, steps)."""
    stop = threading.Event()
    timer = threading.Timer(budget, stop.set)
    cfg = TrainConfig(connect=address, run_dir=run_dir, model=name, batch_size=BATCH, lr=lr, steps=10**9,
                      remix=True, device="cpu", log_every=50, checkpoint_every=10**9, audio_every=0,
                      stats_every=0, timeout=60, give_up=120, seed=0)
    timer.start()
    try:
        summary = run_train(cfg, stop=stop, notify=lambda _m: None)
    finally:
        timer.cancel()
    return summary.checkpoint, summary.step


def score(checkpoint: Path, stems: torch.Tensor) -> dict:
    """Mean SI-SDR and SI-SDRi (dB) over active chunk-stem pairs, overall and per stem."""
    model, _ = load_separator(checkpoint, "cpu")
    mixture = stems.sum(dim=1, keepdim=True)
    with torch.no_grad():
        est = torch.cat([model(mixture[a:a + 16], TARGET) for a in range(0, len(stems), 16)])
    ref = stems[..., TRAIN_CONTEXT:TRAIN_CONTEXT + TARGET].double()
    model_db = si_sdr(est, ref)
    floor = si_sdr(ref.sum(1, keepdim=True).expand_as(ref), ref)
    active = 10 * torch.log10(ref.pow(2).mean(-1).clamp_min(1e-30)) >= SILENT_DBFS
    out = {"si_sdr": model_db[active].mean().item(), "si_sdri": (model_db - floor)[active].mean().item(),
           "pairs": int(active.sum())}
    for i, stem in enumerate(STEMS):
        out[f"si_sdri_{stem}"] = (model_db - floor)[:, i][active[:, i]].mean().item()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="presets for the table (default: all)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model (after one warm-up)")
    ap.add_argument("--max-step-gflop", type=float, default=300.0, help="CPU: skip full presets above this")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per small config")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "midi" / "real")
    ap.add_argument("--eval-splits", default="valid,test", help="held-out splits (chunks of each)")
    ap.add_argument("--n", type=int, default=48, help="held-out chunks per split")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    device = resolve_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(1)        # what `trainer train` uses on CPU by default
    names = args.models.split(",") if args.models else list(PRESETS)
    print(f"== (1) models on {device}, batch {BATCH}, target {TARGET} + context, "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)
    table_rows(names, device, args.max_step_gflop, args.steps)
    if args.skip_train:
        return 0
    print(f"== (2) equal budget: {args.budget:g} s of training each, batch {BATCH}, lr {args.lr:g}, mae, "
          f"remix; stream target {TARGET} context {TRAIN_CONTEXT} from {args.corpus} (train split)", flush=True)
    audio = AudioConfig(44100, TARGET, TRAIN_CONTEXT)
    corpus = CorpusConfig(root=args.corpus, classes=classes_for(list(STEMS)))
    held = [eval_chunks(corpus, audio, RenderConfig(excerpt=EXCERPT_S), split, args.n, 1234)
            for split in args.eval_splits.split(",")]
    stems = torch.from_numpy(np.concatenate([h[0] for h in held]))
    print(f"held-out: {len(stems)} chunks from {sum(h[1] for h in held)} song(s) of splits "
          f"{args.eval_splits}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.corpus, 1, 512, Path(tmp) / "serve.log", "--reuse", "4", "--split", "train",
                        "--target", str(TARGET), "--context", str(TRAIN_CONTEXT))
        try:
            for name in SMALL:
                start = time.perf_counter()
                ckpt, steps = train_for(name, server.address, Path(tmp) / name, args.budget, args.lr)
                row = {"model": name, "steps": steps, "wall_s": time.perf_counter() - start, **score(ckpt, stems)}
                print(json.dumps(row), flush=True)
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
