"""`trainer` command line: train (from a synth-server stream), eval, report, separate, models.

Flags are parsed once into the typed configs of ``trainer.config``; torchrun's RANK /
WORLD_SIZE / LOCAL_RANK are read here and nowhere else. Exit codes: 0 ok, 1 training failed
(non-finite loss), 2 bad flags or configuration, 3 stream unreachable or silent, 130 stopped
by Ctrl-C / SIGTERM (after saving a checkpoint).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from synth_server.heap import keep_batch_buffers

from .config import AMP_MODES, COMPILE_MODES, DEVICES, UNITS, DistConfig, EvalConfig, SeparateConfig, TrainConfig
from .gain import GAIN_MODES
from .losses import LOSSES
from .models import PRESETS, load_model_config
from .step import LR_SCHEDULES

EXIT_FAILED, EXIT_CONFIG, EXIT_STREAM, EXIT_INTERRUPTED = 1, 2, 3, 130


def _error(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _say(message: str) -> None:
    print(message, flush=True)


def _floats(text: str) -> tuple[float, ...]:
    """"1,1,0.5" -> (1.0, 1.0, 0.5); argparse turns the ValueError into a clear usage error."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return values


def _gain_range(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return values[0], values[1]


def _env_int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_from_env(env: dict | None = None) -> DistConfig:
    """The torchrun process layout from RANK / WORLD_SIZE / LOCAL_RANK (single process if unset)."""
    env = os.environ if env is None else env
    return DistConfig(rank=_env_int(env, "RANK", 0), world_size=_env_int(env, "WORLD_SIZE", 1),
                      local_rank=_env_int(env, "LOCAL_RANK", 0))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``train`` flags (ValueError for values that do not fit)."""
    return TrainConfig(
        connect=args.connect, run_dir=args.run_dir, model=args.model, loss=args.loss,
        batch_size=args.batch_size, lr=args.lr, steps=args.steps, resume=args.resume, remix=args.remix,
        remix_gain=args.remix_gain, stem_weights=args.stem_weights, device=args.device,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every, audio_every=args.audio_every, stats_every=args.stats_every,
        prefetch=args.prefetch, timeout=args.timeout, give_up=args.give_up,
        torch_threads=args.torch_threads, compile=args.compile, amp=args.amp, seed=args.seed,
        curve_keys=args.curve_keys, balance=args.balance, gain=args.gain, remix_across=args.remix_across,
        clip_grad=args.clip_grad, max_bad_steps=args.max_bad_steps, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, lr_step_every=args.lr_step_every, lr_gamma=args.lr_gamma,
        valid_every=args.valid_every, valid_n=args.valid_n, valid_seconds=args.valid_seconds,
        valid_seed=args.valid_seed, valid_split=args.valid_split,
        model_config=None if args.model_config is None else load_model_config(args.model, args.model_config))


def _on_signals(stop: threading.Event) -> None:
    """First Ctrl-C / SIGTERM: stop after the current step (checkpoint saved); second: abort."""
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"\nsignal {signum}: stopping after this step (again to abort)", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    try:
        cfg = train_config(args)
        dist = dist_from_env()
        cfg = replace(cfg, connect=dist.address(cfg.connect))
        curve = None
        if cfg.curve_keys is not None:
            from synth_server.serve.config import load_client_curve

            curve = load_client_curve(cfg.curve_keys)
    except (ValueError, OSError) as exc:
        return _error(str(exc))
    stop = threading.Event()
    _on_signals(stop)
    try:
        summary = run_train(cfg, dist, stop=stop, curve=curve, notify=_say)
    except TimeoutError as exc:
        return _error(str(exc), EXIT_STREAM)
    except FloatingPointError as exc:
        return _error(str(exc), EXIT_FAILED)
    except ValueError as exc:
        return _error(str(exc))
    if dist.is_main:
        loss = "n/a" if summary.loss is None else f"{summary.loss:.5g}"
        print(f"steps {summary.start_step} -> {summary.step}, last loss {loss}, data-wait share "
              f"{summary.wait_share:.1%}, checkpoint {summary.checkpoint}", flush=True)
    return EXIT_INTERRUPTED if summary.interrupted else 0


def eval_config(args: argparse.Namespace, report_dir: Path | None = None) -> EvalConfig:
    """The EvalConfig of parsed ``eval`` / ``report`` flags (ValueError for values that do not fit)."""
    return EvalConfig(
        checkpoints=tuple(args.checkpoint), corpus=args.corpus, stems_dir=args.stems_dir, connect=args.connect,
        unit=args.unit, n=args.n, seconds=args.seconds, seed=args.seed, split=args.split, soundfont=args.soundfont,
        holdout_soundfonts=tuple(args.holdout_soundfont), holdout_timbres=args.holdout_timbres,
        timeout=args.timeout, curve_keys=args.curve_keys, stems_map=args.stems_map,
        exclude_other=args.exclude_other, bss=args.bss == "museval", json_out=args.json_out,
        plot_out=args.plot_out, table_out=args.table_out, report_dir=report_dir or args.report,
        device=args.device, batch_size=args.batch_size, window=args.window)


def cmd_eval(args: argparse.Namespace, report_dir: Path | None = None) -> int:
    from .eval.run import run_eval

    try:
        cfg = eval_config(args, report_dir)
        curve = None
        if cfg.curve_keys is not None:
            from synth_server.serve.config import load_client_curve

            curve = load_client_curve(cfg.curve_keys)
        _result, table = run_eval(cfg, curve)
    except TimeoutError as exc:
        return _error(str(exc), EXIT_STREAM)
    except (ValueError, OSError) as exc:
        return _error(str(exc))
    print(table)
    if report_dir or args.report:
        print(f"report: {(report_dir or args.report) / 'index.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return cmd_eval(args, report_dir=args.out)


def cmd_separate(args: argparse.Namespace) -> int:
    from .separate import run_separate

    try:
        paths = run_separate(SeparateConfig(checkpoint=args.checkpoint, input=args.input, out=args.out,
                                            device=args.device, window=args.window))
    except (ValueError, FileNotFoundError) as exc:
        return _error(str(exc))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _models_table(names: list[str], model_file: Path | None, flops: bool) -> list[str]:
    """One line per preset (or the --model-config result): kind, parameters, context, receptive
    field or "whole window", FLOPs per output second."""
    from .models.profile import model_figures

    head = f"{'preset':<16}{'kind':<10}{'params':>12}{'context':>9}{'receptive field':>17}{'GFLOP/s out':>13}"
    lines = [head]
    for name in names:
        cfg = load_model_config(name, model_file)
        label = name if model_file is None else f"{name}+{model_file.name}"
        f = model_figures(cfg, flops=flops)
        if f.receptive_field is not None:
            seen = f"{f.receptive_field}"
        else:
            seen = "window" if cfg.KIND != "demucs" else "segment"
        rate = f"{f.flops_per_s / 1e9:.2f}" if flops else "-"
        lines.append(f"{label:<16}{cfg.KIND:<10}{f.params:>12,}{f.context:>9}{seen:>17}{rate:>13}")
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    names = args.names or list(PRESETS)
    try:
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise ValueError(f"unknown model presets {unknown}; choose from {sorted(PRESETS)}")
        for line in _models_table(names, args.model_config, not args.no_flops):
            print(line, flush=True)
    except ValueError as exc:
        return _error(str(exc))
    print("context: samples per side the stream must send; receptive field: input samples one output "
          "sample sees (window/segment: the model sees its whole input and pads its edges itself); "
          "GFLOP/s out: forward FLOPs per second of output at 44.1 kHz (1 s windows, FFTs not counted)")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a separator from a synth-server stream")
    p.add_argument("--connect", required=True,
                   help="broker address, e.g. tcp://127.0.0.1:5555; A,B,...: rank r of a DDP run reads from the r-th mod n")
    p.add_argument("--run-dir", required=True, type=Path, help="checkpoints, metrics.jsonl, config.json, tb/")
    p.add_argument("--model", default="seed", choices=sorted(PRESETS), help="preset (see `trainer models`)")
    p.add_argument("--model-config", type=Path, default=None, metavar="FILE.toml",
                   help="set any field of the model config (and optionally kind or preset) on top of --model")
    p.add_argument("--loss", default="mae", metavar="NAME[+W*NAME...]",
                   help=f"one of {', '.join(sorted(LOSSES))} or a sum, e.g. mae+mrstft or mae+0.5*sisdr")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="do not divide each stem's loss by its level (quiet stems then weigh less)")
    p.add_argument("--gain", default="rms", choices=GAIN_MODES,
                   help="gain staging: the model sees each mixture divided by its RMS (rms) or raw levels")
    p.add_argument("--batch-size", type=_positive, default=12)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=_positive, default=100_000, help="total steps to reach (also on --resume)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt (a new run when it does not exist yet)")
    p.add_argument("--remix", action="store_true", help="random per-stem gain and sign for every use of a chunk")
    p.add_argument("--remix-gain", type=_gain_range, default=(0.25, 1.25), metavar="LOW,HIGH")
    p.add_argument("--remix-across", action="store_true",
                   help="re-pair stems across the batch every step (drums of one chunk with bass of another)")
    p.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--max-bad-steps", type=_positive, default=20, metavar="K",
                   help="non-finite steps are skipped; stop after K in a row")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear LR warm-up steps")
    p.add_argument("--lr-step-every", type=_positive, default=10_000, help="--lr-schedule step: decay period")
    p.add_argument("--lr-gamma", type=float, default=0.5, help="--lr-schedule step: factor per period")
    p.add_argument("--valid-every", type=int, default=500,
                   help="validate on the broker's fixed valid set every N steps and keep best.pt (0: never)")
    p.add_argument("--valid-n", type=_positive, default=16, help="validation excerpts")
    p.add_argument("--valid-seconds", type=float, default=2.0, help="seconds per validation excerpt")
    p.add_argument("--valid-seed", type=int, default=0, help="seed of the validation set")
    p.add_argument("--valid-split", default="valid", choices=("train", "valid", "test"),
                   help="corpus split of the validation set (valid; train only for tiny test corpora)")
    p.add_argument("--stem-weights", type=_floats, default=None, metavar="W1,W2,...",
                   help="loss weight per stem, in the stream's stem order")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--checkpoint-every", type=_positive, default=1000)
    p.add_argument("--keep-checkpoints", type=_positive, default=3, help="numbered checkpoints kept besides last.pt")
    p.add_argument("--log-every", type=_positive, default=50)
    p.add_argument("--audio-every", type=int, default=1000, help="TensorBoard audio examples (0: none)")
    p.add_argument("--stats-every", type=int, default=50, help="ask the server for stats (R) (0: never)")
    p.add_argument("--prefetch", type=_positive, default=4, help="batches requested ahead")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds of stream silence before reconnecting")
    p.add_argument("--give-up", type=float, default=600.0,
                   help="seconds without a batch (or, at the start, without the welcome) before stopping")
    p.add_argument("--torch-threads", type=_positive, default=None, help="default: 1 on CPU, PyTorch's on CUDA")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES, help="torch.compile (auto: on CUDA)")
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="bf16 autocast (auto: on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve-keys", type=Path, default=None, help="CURVE keys folder from `synth-server keygen`")
    p.set_defaults(func=cmd_train)


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, action="append",
                   help="checkpoint to score; repeat to compare models on the same excerpts")
    material = p.add_mutually_exclusive_group(required=True)
    material.add_argument("--corpus", type=Path, help="MIDI folder: render held-out excerpts")
    material.add_argument("--stems-dir", type=Path, help="real multitracks: MUSDB18-HQ or Slakh2100 song folders")
    material.add_argument("--connect", metavar="ADDRESS",
                          help="a running server (tcp://host:port): score its fixed sets (no FluidSynth needed)")
    p.add_argument("--unit", default="excerpt", choices=UNITS, help="excerpt (songs) or chunk (100 ms chunks)")
    p.add_argument("--n", type=_positive, default=None, help="excerpts (default 32) or chunks (default 256)")
    p.add_argument("--seconds", type=float, default=10.0, help="excerpt length")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--soundfont", type=Path, default=None, help="in-distribution soundfont (file or folder)")
    p.add_argument("--holdout-soundfont", type=Path, action="append", default=[],
                   help="held-out timbres: render the same excerpts with this soundfont (file, folder or a bank "
                        "name as serve takes it); repeat for several")
    p.add_argument("--holdout-timbres", action="store_true",
                   help="with --connect: also score the server's held-out-timbre version of the excerpts")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="with --connect: seconds to wait for each fixed set (the first request renders it)")
    p.add_argument("--curve-keys", type=Path, default=None, help="with --connect: CURVE keys folder")
    p.add_argument("--stems-map", type=Path, default=None, help="TOML mapping of stem names to classes")
    p.add_argument("--exclude-other", action="store_true",
                   help="drop sources outside the classes from the mixture (default: they stay in it)")
    p.add_argument("--bss", default="museval", choices=("museval", "off"), help="BSS-eval v4 SDR/SIR/SAR")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--plot", dest="plot_out", type=Path, default=None, help="write a bar chart (PNG)")
    p.add_argument("--table", dest="table_out", type=Path, default=None, help="write the text table")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch-size", type=_positive, default=16, help="chunks per forward pass (--unit chunk)")
    p.add_argument("--window", type=_positive, default=44100, help="target samples per model call (as separate)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score checkpoints on held-out excerpts, real multitracks or chunks")
    _eval_flags(p)
    p.add_argument("--report", type=Path, default=None, help="also write the HTML listening report here")
    p.set_defaults(func=cmd_eval)
    r = sub.add_parser("report", help="HTML listening report: eval plus audio, pictures and scores per excerpt")
    _eval_flags(r)
    r.add_argument("--out", required=True, type=Path, help="report folder (index.html, eval.json, audio, images)")
    r.set_defaults(func=cmd_report, report=None)


def _add_separate(sub) -> None:
    p = sub.add_parser("separate", help="split an audio file into stem WAVs")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("input", type=Path, help="audio file (WAV, FLAC, ...): any length, rate and channel count")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--window", type=_positive, default=44100, help="target samples per model call")
    p.set_defaults(func=cmd_separate)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list model presets: parameters, context, receptive field, FLOPs")
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.add_argument("--model-config", type=Path, default=None, metavar="FILE.toml",
                   help="show the presets with this file's fields set")
    p.add_argument("--no-flops", action="store_true", help="skip building the models (fast)")
    p.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_separate(sub)
    _add_models(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_batch_buffers()          # the stream's batch buffers reuse heap pages (synth_server/heap.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
