"""Separation quality benchmark: train from a live stream for M minutes, score held-out songs.

One local `synth-server serve` (a subprocess) on the demo corpus plus ../shared/midi/real when
present (files linked into one temporary corpus folder). For each variant asked (``--variants``,
an ablation: each row adds or removes one change), `trainer train` runs in this process for
``--minutes`` wall-clock minutes (then stops as on Ctrl-C) with validation on the broker's fixed
valid set every ``--valid-every`` steps. Then the run's ``best.pt`` (``last.pt`` when no
validation ran) is scored on the broker's fixed *test* set (``--eval-n`` excerpts of
``--eval-seconds`` from the test split's songs, never trained on): per stem the mean SI-SDRi of
the model next to the mixture (0 dB by definition) and the STFT IRM oracle (magnitude ratio mask
from the true stems, same excerpts and region), the model's bf16-autocast-vs-fp32 SNR on those
excerpts, and the validation curves of all variants as one PNG.

    .venv/bin/python bench/quality.py [--minutes 20] [--steps N] [--variants full] [--model small]
        [--lr 1e-3] [--threads 1] [--serve-args '--augment none'] [--workers 1] [--eval-n 32] [--eval-seconds 4] [--out bench-out/quality]

Variants (``VARIANTS``): ``raw`` (no gain staging, no level balance, MAE: the seed's recipe),
``gain`` (+ gain staging), ``balance`` (+ level balance), ``mrstft`` (+ mae+mrstft loss),
``remix`` (+ gain/sign remix and re-pairing across the batch), ``full`` (= remix), ``cosine``
(``mrstft`` with 50 warm-up steps and a cosine LR decay to 0 at ``--steps``), ``cosine-sisdr``
(+ an SI-SDR term: ``mae+mrstft+0.1*sisdr``). CPU figures
depend on how busy the machine is: the JSON records steps done and the load average.
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
from synth_server.fixed_set import fetch_fixed_set  # noqa: E402
from synth_server.synth.demo import write_demo_corpus  # noqa: E402
from trainer.checkpoint import load_separator  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.gain import apply_separator  # noqa: E402
from trainer.metrics import irm_oracle, si_sdr  # noqa: E402
from trainer.train import run_train  # noqa: E402
from trainer.validate import SILENT_DBFS, excerpt_scores, summarise_scores  # noqa: E402

REAL = ROOT.parent / "shared" / "midi" / "real"   # ../shared next to the checkout
BASE = {"gain": "none", "balance": False, "loss": "mae", "remix": False, "remix_across": False}
VARIANTS = {
    "raw": {},
    "gain": {"gain": "rms"},
    "balance": {"gain": "rms", "balance": True},
    "mrstft": {"gain": "rms", "balance": True, "loss": "mae+mrstft"},
    "remix": {"gain": "rms", "balance": True, "loss": "mae+mrstft", "remix": True, "remix_across": True},
}
VARIANTS["cosine"] = {**VARIANTS["mrstft"], "lr_schedule": "cosine", "warmup_steps": 50}
VARIANTS["cosine-sisdr"] = {**VARIANTS["cosine"], "loss": "mae+mrstft+0.1*sisdr"}
VARIANTS["full"] = VARIANTS["remix"]


def build_corpus(folder: Path, demo_songs: int, real: Path | None) -> dict:
    """Demo songs plus links to the real songs in one corpus folder; what it holds."""
    write_demo_corpus(folder / "demo", demo_songs, seed=0)
    linked = 0
    if real is not None and real.is_dir():
        (folder / "real").mkdir(exist_ok=True)
        for path in sorted(real.iterdir()):
            if path.suffix.lower() in (".mid", ".midi"):
                (folder / "real" / path.name).symlink_to(path.resolve())
                linked += 1
    return {"demo_songs": demo_songs, "real_songs": linked}


def train_for(address: str, run_dir: Path, minutes: float, args, variant: dict) -> dict:
    """``trainer train`` for ``minutes`` wall-clock minutes (or ``--steps``, whichever ends first);
    the run's summary."""
    cfg = TrainConfig(connect=address, run_dir=run_dir, model=args.model, lr=args.lr, batch_size=args.batch_size,
                      steps=args.steps or 10_000_000, log_every=25, checkpoint_every=10_000_000, audio_every=0,
                      valid_every=args.valid_every, valid_n=args.valid_n, valid_seconds=args.valid_seconds,
                      torch_threads=args.threads, timeout=120, give_up=300, **{**BASE, **variant})
    stop = threading.Event()
    timer = threading.Timer(minutes * 60, stop.set)
    timer.start()
    start = time.monotonic()
    try:
        summary = run_train(cfg, stop=stop, notify=lambda m: print(f"  [{run_dir.name}] {m}", flush=True))
    finally:
        timer.cancel()
    return {"steps": summary.step, "minutes": round((time.monotonic() - start) / 60, 2),
            "last_loss": summary.loss, "wait_share": round(summary.wait_share, 3)}


def oracle_sisdri(stems: torch.Tensor, context: int) -> dict[str, float]:
    """Mean SI-SDRi per stem of the IRM oracle on the centre region, silent pairs left out."""
    target = stems.shape[-1] - 2 * context
    ref = stems[..., context:context + target]
    est = torch.cat([irm_oracle(stems[i:i + 4]) for i in range(0, len(stems), 4)])[..., context:context + target]
    mix = ref.sum(dim=1, keepdim=True).expand_as(ref)
    active = 10 * torch.log10(ref.double().pow(2).mean(-1).clamp_min(1e-30)) >= SILENT_DBFS
    gain = si_sdr(est, ref) - si_sdr(mix, ref)
    return {i: gain[:, i][active[:, i]].mean().item() for i in range(stems.shape[1])}


def bf16_snr(model, stems: torch.Tensor, gain) -> float:
    """SNR (dB) of the bf16-autocast estimate against the fp32 one (CPU autocast)."""
    window = min(stems.shape[-1], 2 * model.context + 44100)      # 1 s of output: bf16 convs are slow on CPU
    mixture = stems[:2, :, :window].sum(dim=1, keepdim=True)
    target = window - 2 * model.context
    with torch.no_grad():
        ref = apply_separator(model, mixture, target, gain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            est = apply_separator(model, mixture, target, gain).float()
    return (10 * torch.log10(ref.pow(2).sum() / (est - ref).pow(2).sum())).item()


def evaluate(checkpoint: Path, test) -> dict:
    model, ckpt = load_separator(checkpoint)
    stems = torch.from_numpy(test.stems)
    figures = summarise_scores(excerpt_scores(model, stems, ckpt.gain, torch.device("cpu")), test.stem_names)
    oracle = oracle_sisdri(stems, model.context)
    return {"checkpoint": checkpoint.name, "step": ckpt.step, "model": figures,
            "oracle": {name: round(oracle[i], 2) for i, name in enumerate(test.stem_names)},
            "bf16_vs_fp32_snr_db": round(bf16_snr(model, stems, ckpt.gain), 1)}


def curve_plot(path: Path, runs: dict[str, Path]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, run_dir in runs.items():
        rows = valid_rows(run_dir)
        if rows:
            ax.plot([r["step"] for r in rows], [r["valid_sisdri"] for r in rows], marker="o", label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("validation SI-SDRi (dB, mean of stems)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def valid_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "valid_sisdri" in r]


def matched_steps(runs: dict[str, Path]) -> dict:
    """Validation SI-SDRi of every variant at the last validated step all of them reached (the
    machine's load changes how many steps a variant gets in its minutes)."""
    curves = {name: valid_rows(d) for name, d in runs.items()}
    if not curves or not all(curves.values()):
        return {}
    common = min(max(r["step"] for r in rows) for rows in curves.values())
    return {"step": common, **{name: [r for r in rows if r["step"] <= common][-1]["valid_sisdri"]
                               for name, rows in curves.items()}}


def table(name: str, result: dict, names) -> str:
    m, o = result["model"], result["oracle"]
    cells = "  ".join(f"{n} {m[f'valid_sisdri_{n}']:+6.2f} (IRM {o[n]:+5.2f})" for n in names)
    return (f"{name:<8} steps {result['train']['steps']:>5}  mean SI-SDRi {m['valid_sisdri']:+6.2f} "
            f"(IRM {np.mean(list(o.values())):+5.2f}, mixture +0.00)  {cells}  bf16/fp32 {result['bf16_vs_fp32_snr_db']} dB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training minutes per variant")
    ap.add_argument("--variants", default="full", help=f"comma-separated, from {sorted(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None,
                    help="stop after this many steps (the span a cosine LR decays over); minutes still cap it")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    ap.add_argument("--serve-args", default="", help="extra `serve` flags, e.g. '--augment none'")
    ap.add_argument("--model", default="small")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--demo-songs", type=int, default=100)
    ap.add_argument("--valid-every", type=int, default=100)
    ap.add_argument("--valid-n", type=int, default=16)
    ap.add_argument("--valid-seconds", type=float, default=2.0)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--eval-seconds", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "quality")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if args.steps is None and any("lr_schedule" in VARIANTS[v] for v in names):
        ap.error("an LR schedule decays over --steps: give --steps")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = build_corpus(tmp / "corpus", args.demo_songs, REAL)
        server = Server(tmp / "corpus", args.workers, 1024, args.out / "serve.log", "--reuse", "1",
                        *args.serve_args.split())
        results: dict = {"conditions": {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
                                        "corpus": corpus, "model": args.model, "lr": args.lr,
                                        "batch_size": args.batch_size, "minutes": args.minutes,
                                        "steps": args.steps, "threads": args.threads,
                                        "serve_args": args.serve_args, "workers": args.workers}, "variants": {}}
        try:
            test = fetch_fixed_set(server.address, "test", args.eval_n, args.eval_seconds, seed=1, timeout=600)
            results["conditions"]["test_set"] = {"excerpts": args.eval_n, "seconds": args.eval_seconds,
                                                 "songs": len({e["song"] for e in test.excerpts}),
                                                 "digest": test.digest}
            runs = {}
            for name in names:
                run_dir = args.out / name
                if run_dir.exists():
                    for f in sorted(run_dir.rglob("*"), reverse=True):
                        f.unlink() if f.is_file() else f.rmdir()
                print(f"training variant {name} for {args.minutes:g} min ...", flush=True)
                train = train_for(server.address, run_dir, args.minutes, args, VARIANTS[name])
                best = run_dir / "best.pt"
                result = evaluate(best if best.is_file() else run_dir / "last.pt", test)
                result["train"] = train
                results["variants"][name] = result
                runs[name] = run_dir
                print(table(name, result, test.stem_names), flush=True)
        finally:
            server.close()
    results["conditions"]["load_avg_end"] = os.getloadavg()
    curve_plot(args.out / "valid_curve.png", runs)
    results["valid_at_matched_step"] = matched_steps(runs)
    (args.out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(n, r, test.stem_names) for n, r in results["variants"].items()))
    if results["valid_at_matched_step"]:
        matched = results["valid_at_matched_step"]
        print(f"validation SI-SDRi at step {matched['step']} (reached by every variant): "
              + "  ".join(f"{n} {v:+.2f}" for n, v in matched.items() if n != "step"))
    print(f"validation curves: {args.out / 'valid_curve.png'}; figures: {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
