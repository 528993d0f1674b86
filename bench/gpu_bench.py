"""The GPU benchmark in one run, within a total time limit; `bench/gpu.sh` starts it in the bundle.

Parts, each with a deadline (a share of the limit); a part that does not fit before its deadline
is skipped with the reason, one that fails is recorded and the next one runs:

  1. ``steps``: seed model step time (forward + backward + Adam, bf16 autocast) at batch 12, 32,
     64, torch.compile off and on; FLOPs per step (torch.utils.flop_counter), TFLOP/s, share of
     the card's datasheet bf16 peak and of a measured 8192^3 bf16 matmul.
  2. ``stream``: `synth-server serve` with cores - 2 workers: kept chunks/s (a greedy client at
     R = 1), then `trainer train` (seed, batch 12) fed by it while `ctl set reuse` steps through
     R = 1, 2, 4, auto: steps/s, chunks/s, data-wait share per R.
  3. ``train_eval``: the same run goes on (R auto) for the rest of the time, is stopped (it saves
     last.pt), `trainer eval` scores it on held-out test-split excerpts (SI-SDRi per stem, mixture,
     IRM oracle), and its bf16 autocast output is compared with fp32 (SNR, also at init).

Writes OUT/gpu-bench.json (after every part) and OUT/gpu-bench.log, plus serve.log, train.log,
train-metrics.jsonl and eval.json. ``--dry-run``: the same on a CPU with the tiny model, 2 timed
steps, the "eager" compile backend, 3 s per R and 8 s more training (about a minute unloaded). `bench/gpu_report.py` renders the JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

from gpu_env import environment  # noqa: E402
from gpu_quality import amp_agreement, training_summary  # noqa: E402
from gpu_stream import StreamSession, phase_figures  # noqa: E402
from stream import greedy_rate  # noqa: E402
from train import step_figures  # noqa: E402

log = logging.getLogger("gpu-bench")
SCHEMA = "stemstream-gpu-bench/1"
SHARES = {"steps": 0.28, "stream": 0.62, "train_eval": 1.0}     # deadlines, as shares of the limit
REUSE_STEPS = ("1", "2", "4", "auto")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; ``from_args`` fills the GPU or the dry-run defaults."""

    out: Path
    work: Path
    time_limit: float
    dry_run: bool
    corpus: Path | None
    soundfont: Path
    model: str
    batches: tuple[int, ...]
    steps: int
    compile_backend: str
    device: str
    workers: int
    pool_size: int
    train_batch: int
    phase_max_s: float
    train_max_s: float | None
    eval_n: int
    eval_reserve_s: float
    needs_s: dict

    @classmethod
    def from_args(cls, args: argparse.Namespace, manifest: dict) -> "BenchConfig":
        dry = args.dry_run
        cores = len(os.sched_getaffinity(0))
        corpus = args.corpus or (args.bundle / manifest["corpus"] if manifest.get("corpus") else None)
        return cls(out=args.out.resolve(), work=args.work, dry_run=dry, corpus=corpus,
                   time_limit=args.time_limit or (90.0 if dry else 540.0),
                   soundfont=args.bundle / manifest["soundfont"], model="tiny" if dry else "seed",
                   batches=(12, 32, 64), steps=2 if dry else 20, compile_backend="eager" if dry else "inductor",
                   device="cpu" if dry else "cuda", workers=args.workers or max(1, cores - 2),
                   pool_size=512 if dry else 4096, train_batch=12, phase_max_s=3.0 if dry else 30.0,
                   train_max_s=8.0 if dry else None,
                   eval_n=24 if dry else 256, eval_reserve_s=25.0 if dry else 60.0,
                   needs_s={"steps": 5, "stream": 15, "train_eval": 20} if dry
                   else {"steps": 30, "stream": 60, "train_eval": 75})


class Context:
    """What the parts share: config, start time, result so far, the stream session."""

    def __init__(self, cfg: BenchConfig, result: dict) -> None:
        self.cfg, self.result = cfg, result
        self.start = time.monotonic()
        self.session: StreamSession | None = None
        self.corpus: Path | None = None
        self.step_s: float | None = None          # batch-12 step of the trainer's setting (part 1)
        self.current: str | None = None

    def deadline(self, part: str) -> float:
        return self.start + SHARES[part] * self.cfg.time_limit - (3.0 if part == "train_eval" else 0.0)

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.cfg.out / "gpu-bench.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        tmp.replace(self.cfg.out / "gpu-bench.json")


def run_part(ctx: Context, name: str, fn) -> None:
    """``fn(ctx, until)`` as part ``name``: skipped when it cannot fit, recorded when it fails."""
    until, needs = ctx.deadline(name), ctx.cfg.needs_s[name]
    left = until - time.monotonic()
    started = time.monotonic()
    if left < needs:
        part = {"status": "skipped", "reason": f"time: {left:.0f} s left before its deadline, needs ~{needs} s"}
    else:
        log.info("part %s: until +%.0f s", name, until - ctx.start)
        ctx.current = name
        try:
            part = {"status": "ok", **fn(ctx, until)}
        except Exception as exc:                    # one failed part does not stop the others
            log.error("part %s failed:\n%s", name, traceback.format_exc())
            part = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    ctx.current = None
    part["wall_s"] = round(time.monotonic() - started, 1)
    log.info("part %s: %s (%.0f s)", name, part["status"], part["wall_s"])
    ctx.result["parts"][name] = part
    ctx.save()


def watchdog(ctx: Context, grace: float = 20.0) -> threading.Timer:
    """Past the limit + ``grace`` (a step that hangs, a compile that never ends): record the part
    that was running as failed, stop the subprocesses, write the JSON and exit 3."""
    def fire() -> None:
        if ctx.current is not None:
            ctx.result["parts"][ctx.current] = {"status": "failed", "error": "still running past the time limit"}
        log.error("over the time limit (part %s): stopping", ctx.current)
        if ctx.session is not None:
            ctx.session.close()
        ctx.save()
        logging.shutdown()
        os._exit(3)

    timer = threading.Timer(ctx.cfg.time_limit + grace - (time.monotonic() - ctx.start), fire)
    timer.daemon = True
    timer.start()
    return timer


# --- part 1 ------------------------------------------------------------------------------------

def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matmul rate (a practical ceiling next to the datasheet's)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def part_steps(ctx: Context, until: float) -> dict:
    cfg = ctx.cfg
    device = torch.device(cfg.device)
    out: dict = {"model": cfg.model, "rows": [], "skipped": []}
    if device.type == "cuda":
        out["matmul_bf16_tflops"] = matmul_tflops(device)
    compile_s = 5.0 if cfg.dry_run else 90.0        # first compile: a guess, then measured
    per_sample_s = None
    for compiled in (False, True):
        for batch in cfg.batches:
            step_guess = (per_sample_s or 0.0) * batch
            need = step_guess * (cfg.steps + 5) + (compile_s if compiled else 0.0)
            left = until - time.monotonic()
            if need > left:
                out["skipped"].append({"batch": batch, "compiled": compiled,
                                       "reason": f"time: needs ~{need:.0f} s, {left:.0f} s left"})
                continue
            try:
                fig = step_figures(cfg.model, batch, cfg.steps, device, compiled=compiled,
                                   backend=cfg.compile_backend)
            except Exception as exc:                # e.g. out of memory at 64: the others still count
                out["rows"].append({"batch": batch, "compiled": compiled, "error": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            log.info("steps: batch %d compile %s: %.2f ms/step, %.1f TFLOP/s", batch, compiled,
                     fig["step_ms"], fig["tflops_per_s"])
            out["rows"].append(fig)
            per_sample_s = max(per_sample_s or 0.0, fig["step_ms"] / 1e3 / batch)
            if compiled:
                compile_s = 1.5 * fig["warmup_s"]
            if batch == cfg.train_batch and (compiled or ctx.step_s is None):
                ctx.step_s = fig["step_ms"] / 1e3
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# --- parts 2 and 3 -----------------------------------------------------------------------------

def corpus_dir(ctx: Context) -> Path:
    """The MIDI corpus: --corpus as given; the bundle's, or the 24-song demo, copied into work/."""
    if ctx.corpus is None:
        from synth_server.synth.demo import write_demo_corpus

        target = ctx.cfg.work / "corpus"
        if ctx.cfg.corpus is not None and Path(ctx.cfg.corpus).resolve().is_relative_to(ROOT):
            shutil.copytree(ctx.cfg.corpus, target)
        elif ctx.cfg.corpus is not None:
            target = Path(ctx.cfg.corpus)
        else:
            write_demo_corpus(target, 24, 0)
        ctx.corpus = target
    return ctx.corpus


def open_session(ctx: Context) -> StreamSession:
    """`serve` up (the trainer not yet); the session the later parts share."""
    cfg = ctx.cfg
    ctx.session = StreamSession(corpus_dir(ctx), cfg.workers, cfg.pool_size, cfg.soundfont, cfg.out,
                                cfg.work / f"run-{time.monotonic_ns()}", cfg.work / "index.json")
    return ctx.session


def start_training(ctx: Context, session: StreamSession, until: float) -> int:
    """`trainer train` on the session's stream, logging about every second; returns once it
    logged its first row (model built and compiled). Returns log_every."""
    cfg = ctx.cfg
    step_s = ctx.step_s or (0.15 if cfg.dry_run else 0.01)
    log_every = max(1, round((0.5 if cfg.dry_run else 1.0) / step_s))
    session.start_trainer(cfg.model, cfg.train_batch, cfg.device, log_every)
    if not session.wait_rows(1, until):
        raise RuntimeError(f"the trainer logged no step in time (see {cfg.out / 'train.log'})")
    return log_every


def part_stream(ctx: Context, until: float) -> dict:
    cfg = ctx.cfg
    session = open_session(ctx)
    measure = 2.0 if cfg.dry_run else 15.0
    kept = greedy_rate(session.address, measure, warmup=1.0 if cfg.dry_run else 8.0)
    rates = session.server.stats()["rates"]
    log.info("stream: %d workers, kept %.0f chunks/s (greedy client, R=1)", cfg.workers, kept)
    log_every = start_training(ctx, session, until - len(REUSE_STEPS) * 2.0)
    phase_s = min(cfg.phase_max_s, (until - time.monotonic()) / len(REUSE_STEPS))
    spans = []
    for reuse in REUSE_STEPS:
        session.ctl("reuse", reuse)
        start = time.time()
        time.sleep(phase_s)
        spans.append((reuse, start, time.time()))
    rows = session.rows()
    phases = []
    for reuse, start, end in spans:
        settle = 0.3 * (end - start)                # the pool adjusts to the new R first
        # rows whose server stats still showed the previous R are left out
        same = [r for r in rows if reuse == "auto" or r.get("reuse") in (None, int(reuse))]
        fig = phase_figures(same, start + settle, end, cfg.train_batch)
        phases.append({"reuse": reuse, **fig})
        log.info("stream: R=%s: %s", reuse, fig)
    return {"workers": cfg.workers, "cores": os.cpu_count(), "pool_size": cfg.pool_size,
            "kept_chunks_per_s": kept, "server_rates_after": rates, "model": cfg.model,
            "batch": cfg.train_batch, "log_every": log_every, "phase_s": phase_s, "phases": phases}


def part_train_eval(ctx: Context, until: float) -> dict:
    cfg = ctx.cfg
    session = ctx.session
    if session is None or not session.alive():
        if session is not None:
            session.close()
        session = open_session(ctx)
        start_training(ctx, session, until - cfg.eval_reserve_s)
    session.ctl("reuse", "auto")
    train_until = until - cfg.eval_reserve_s
    if cfg.train_max_s is not None:
        train_until = min(train_until, time.monotonic() + cfg.train_max_s)
    while time.monotonic() < train_until and session.trainer_alive():
        time.sleep(0.5)
    rc = session.stop_trainer()
    session.close()
    rows = session.rows()
    shutil.copyfile(session.run_dir / "metrics.jsonl", cfg.out / "train-metrics.jsonl")
    out = {"model": cfg.model, "batch": cfg.train_batch, "trainer_exit": rc,
           "train": training_summary(rows), "corpus": str(ctx.corpus)}
    checkpoint = session.run_dir / "last.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"the trainer left no checkpoint (exit {rc}; see {cfg.out / 'train.log'})")
    eval_json = cfg.out / "eval.json"
    cmd = [sys.executable, "-m", "trainer", "eval", "--checkpoint", str(checkpoint), "--corpus", str(ctx.corpus),
           "--split", "test", "--unit", "chunk", "--n", str(cfg.eval_n), "--json", str(eval_json),
           "--soundfont", str(cfg.soundfont), "--device", cfg.device]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(10.0, until - time.monotonic()))
    log.info("trainer eval (exit %d):\n%s%s", done.returncode, done.stdout, done.stderr[-2000:])
    if done.returncode == 0:
        out["eval"] = json.loads(eval_json.read_text())
    else:
        out["eval"] = {"error": f"trainer eval exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    try:
        out["amp_check"] = amp_agreement(checkpoint, ctx.corpus, cfg.soundfont, 64 if not cfg.dry_run else 8,
                                         torch.device(cfg.device))
    except Exception as exc:
        log.error("bf16-vs-fp32 check failed:\n%s", traceback.format_exc())
        out["amp_check"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# --- the run -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu-results"), help="results folder")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds in all (default 540; dry run 80)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the run, measures nothing")
    ap.add_argument("--corpus", type=Path, default=None, help="MIDI folder (default: the bundle's or the demo)")
    ap.add_argument("--workers", type=int, default=None, help="synthesis workers (default: cores - 2)")
    ap.add_argument("--bundle", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, required=True, help=argparse.SUPPRESS)
    ap.add_argument("--install", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = json.loads((args.bundle / "bundle" / "manifest.json").read_text())
    cfg = BenchConfig.from_args(args, manifest)
    cfg.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(cfg.out / "gpu-bench.log")])
    install = json.loads(args.install.read_text()) if args.install and args.install.is_file() else {}
    result = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "dry_run": cfg.dry_run, "time_limit_s": cfg.time_limit,
              "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "work")},
              "environment": environment(cfg.soundfont, manifest, install), "parts": {}}
    ctx = Context(cfg, result)
    if cfg.dry_run:
        torch.set_num_threads(1)                    # as `trainer train` on a CPU
    log.info("environment: %s", json.dumps(result["environment"], default=str))
    if not cfg.dry_run and not torch.cuda.is_available():
        result["error"] = "PyTorch sees no CUDA device (use --dry-run on a CPU machine)"
        ctx.save()
        log.error(result["error"])
        return 2
    timer = watchdog(ctx)
    try:
        run_part(ctx, "steps", part_steps)
        run_part(ctx, "stream", part_stream)
        run_part(ctx, "train_eval", part_train_eval)
    finally:
        timer.cancel()
        if ctx.session is not None:
            ctx.session.close()
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ctx.save()
    log.info("wrote %s (%.0f s of %.0f)", cfg.out / "gpu-bench.json", result["wall_s"], cfg.time_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
