"""Trainer benchmark, two figures:

  (1) step time (forward + backward + Adam) of the `seed` and `tiny` models on synthetic stems of
      the default geometry (target 4410, context 4096) on the current device, the FLOPs of one
      step counted by torch.utils.flop_counter (convolutions and their gradients), the achieved
      FLOP/s and, on CUDA, the share of the card's dense bf16 peak (datasheet). Batch 12 on
      CUDA; on CPU the seed model runs batch 1 (the figure says so) and `tiny` batch 12.
      Settings as `trainer train` resolves them: bf16 autocast and torch.compile on CUDA.
  (2) data-wait share of a real `trainer train` run fed by a local `synth-server serve` with W
      workers (a subprocess) for each reuse R asked: wait for the next batch / wall time, overall
      and after the first log window (pool warm-up), with steps/s and the server's R.

    .venv/bin/python bench/train.py [--steps 5] [--workers 1] [--reuse 1,4] [--stream-steps 300]
        [--pool-size 256]
        [--stream-model tiny] [--skip-stream] [--corpus DIR]

On a small CPU box the workers, the broker and the trainer share the cores, so (2) is a lower
bound on what a separate server machine gives.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")      # no progress bars in the figures (read when tqdm is imported)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream import Server  # noqa: E402
from trainer.config import TrainConfig, resolve_amp, resolve_compile, resolve_device  # noqa: E402
from trainer.losses import mae_loss  # noqa: E402
from trainer.models import build_model, count_parameters, preset  # noqa: E402
from trainer.step import StepRunner  # noqa: E402
from trainer.train import run_train  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), matched
# against torch.cuda.get_device_name; the first matching key wins.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0),
                    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0),
                    ("RTX 4090", 165.0), ("RTX 3090", 71.0))
TARGET, CONTEXT = 4410, 4096


def card_peak(device: torch.device) -> tuple[str, float | None]:
    """(device name, dense bf16 peak in FLOP/s or None when the card is not in the table)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in name), None)
    return name, None if peak is None else peak * 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_figures(name: str, batch: int, steps: int, device: torch.device, *, context: int = CONTEXT,
                 target: int = TARGET, compiled: bool | None = None, backend: str = "inductor") -> dict:
    """Step time (mean over ``steps`` steps after warm-up, one sync), FLOPs per step and FLOP/s of
    preset ``name`` at ``batch`` on windows of ``target + 2 * context`` samples (the model config
    adapted to that stream geometry), with bf16 autocast as `trainer train` resolves it on ``device``.

    ``compiled`` None: as `trainer train` resolves "auto" (on CUDA); ``backend`` is the
    torch.compile backend ("eager" checks the wrapping without compiling).
    """
    torch.manual_seed(0)
    window = 2 * context + target
    model = build_model(preset(name).for_stream(44100, window, 4)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    compiled = resolve_compile("auto", device) if compiled is None else compiled
    amp = resolve_amp("auto", device)
    if compiled:
        torch._dynamo.reset()           # a fresh static compile per shape, as one training run has
    runner = StepRunner(torch.compile(model, backend=backend) if compiled else model, opt, mae_loss,
                        context=context, target=target, amp_dtype=amp)
    stems = 0.1 * torch.randn(batch, 4, window, device=device)
    start = time.perf_counter()
    for _ in range(3 if compiled else 1):        # warm-up (and compilation)
        runner(stems)
    _sync(device)
    warmup_s = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        StepRunner(model, opt, mae_loss, context=context, target=target, amp_dtype=amp)(stems)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        runner(stems)
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    flops = counter.get_total_flops()
    card, peak = card_peak(device)
    out = {"model": name, "batch": batch, "params": count_parameters(model), "step_ms": step_s * 1e3,
           "steps_timed": steps, "warmup_s": warmup_s, "flops_per_step": flops,
           "tflops_per_s": flops / step_s / 1e12, "device": str(device), "card": card, "compiled": compiled,
           "compile_backend": backend if compiled else None, "amp": str(amp or "off"),
           "threads": torch.get_num_threads()}
    if peak is not None:
        out.update(peak_tflops=peak / 1e12, share_of_peak=flops / step_s / peak)
    return out


def stream_figures(corpus: Path, workers: int, reuse: int, model: str, steps: int, batch: int,
                   pool_size: int) -> dict:
    """Data-wait share of `trainer train` (in-process) fed by a local server subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(corpus, workers, pool_size, Path(tmp) / "serve.log", "--reuse", str(reuse),
                        "--split", "train", "--target", str(TARGET), "--context", str(CONTEXT))
        try:
            log_every = max(1, steps // 6)
            cfg = TrainConfig(connect=server.address, run_dir=Path(tmp) / "run", model=model, batch_size=batch,
                              steps=steps, log_every=log_every, checkpoint_every=steps, audio_every=0,
                              stats_every=log_every, timeout=60, give_up=120)
            start = time.perf_counter()
            summary = run_train(cfg, notify=lambda _m: None)
            wall = time.perf_counter() - start
            rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        finally:
            server.close()
    later = rows[1:] or rows
    return {"workers": workers, "reuse_asked": reuse, "model": model, "batch": batch, "steps": steps,
            "wait_share": summary.wait_share,
            "wait_share_after_warmup": sum(r["wait_share"] for r in later) / len(later),
            "steps_per_s": sum(r["steps_per_s"] for r in later) / len(later),
            "chunks_per_s": sum(r["chunks_per_s"] for r in later) / len(later),
            "server_reuse": rows[-1].get("reuse"), "server_kept_per_s": rows[-1].get("server_kept_per_s"),
            "pool_size": pool_size, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--models", default="seed,tiny")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reuse", default="1,4", help="comma-separated R values for the stream figure")
    ap.add_argument("--stream-steps", type=int, default=300)
    ap.add_argument("--pool-size", type=int, default=256, help="small, so the run outlasts the first fill")
    ap.add_argument("--stream-model", default=None, help="default: seed on CUDA, tiny on CPU")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--corpus", type=Path, default=None, help="MIDI folder (default: 6 demo songs)")
    args = ap.parse_args()

    device = resolve_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(1)        # what `trainer train` uses on CPU by default
    for name in args.models.split(","):
        batch = 12 if device.type == "cuda" or name != "seed" else 1
        fig = step_figures(name, batch, args.steps, device)
        note = " (batch 1 on CPU: seed is too slow for 12)" if device.type == "cpu" and name == "seed" else ""
        peak = f", {fig['share_of_peak']:.1%} of the {fig['card']} bf16 peak" if "share_of_peak" in fig else ""
        print(f"{name}: {fig['params']:,} params, batch {batch}{note}: {fig['step_ms']:.1f} ms/step, "
              f"{fig['flops_per_step'] / 1e9:.1f} GFLOP/step, {fig['tflops_per_s'] * 1e3:.1f} GFLOP/s{peak} "
              f"[{fig['device']}, amp {fig['amp']}, compile {fig['compiled']}, {fig['threads']} threads]",
              flush=True)
        print("  " + json.dumps(fig), flush=True)
    if args.skip_stream:
        return 0
    model = args.stream_model or ("seed" if device.type == "cuda" else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from synth_server.synth.demo import write_demo_corpus

            corpus = Path(tmp) / "corpus"
            write_demo_corpus(corpus, 6, 0)
        for reuse in (int(r) for r in args.reuse.split(",")):
            fig = stream_figures(corpus, args.workers, reuse, model, args.stream_steps, 12, args.pool_size)
            print(f"stream: {fig['workers']} worker(s), R={fig['server_reuse']}, {model} batch 12: data-wait "
                  f"share {fig['wait_share']:.1%} overall, {fig['wait_share_after_warmup']:.1%} after warm-up; "
                  f"{fig['steps_per_s']:.2f} steps/s = {fig['chunks_per_s']:.0f} chunks/s; server kept "
                  f"{fig['server_kept_per_s']} chunks/s", flush=True)
            print("  " + json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
