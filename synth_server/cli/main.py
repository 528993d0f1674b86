"""`synth-server` command line: demo-corpus, analyze, dump, plus the serving commands of
``cli_serve`` (serve, worker, ctl, stats, keygen). Flags are parsed once into typed configs."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from synth_server.cli import args as cli_args
from synth_server.cli.args import UsageError
from synth_server.heap import keep_batch_buffers

EXIT_USAGE = 2   # as argparse exits for a bad flag


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from synth_server.synth.demo import write_demo_corpus

    if args.songs < 1:
        raise UsageError("--songs must be >= 1")
    paths = write_demo_corpus(args.out, args.songs, args.seed)
    print(f"wrote {len(paths)} demo songs to {args.out}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from synth_server.tools.analyze import analyze_report, format_report
    from synth_server.synth.corpus import build_index

    cfg = cli_args.corpus_config(args, args.corpus)
    try:
        index = build_index(cfg, progress=not args.json and sys.stderr.isatty())
    except ValueError as exc:
        raise UsageError(f"{exc}") from None
    report = analyze_report(index, cfg)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from synth_server.tools.dump import dump_from_corpus, dump_from_stream

    if args.n < 1:
        raise UsageError("--n must be >= 1")
    if (args.corpus is None) == (args.connect is None):
        raise UsageError("give exactly one of --corpus DIR (render here) or --connect tcp://HOST:PORT")
    if args.connect:
        folders = dump_from_stream(args.connect, args.n, args.out, timeout=args.timeout)
        print(f"wrote {len(folders)} chunks from {args.connect} to {args.out} (open {args.out / 'index.html'})")
        return 0
    cfg = cli_args.source_config(args, args.corpus, seed=args.seed)
    try:
        folders, counters = dump_from_corpus(cfg, args.n, args.out)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"{exc}") from None
    print(f"wrote {len(folders)} chunks to {args.out} (open {args.out / 'index.html'})")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return 0 if folders else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synth-server", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-corpus", help="write the built-in demo corpus of varied GM songs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--songs", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_demo_corpus)

    p = sub.add_parser("analyze", help="class and program statistics of a MIDI corpus, broken files")
    p.add_argument("corpus", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cli_args.add_corpus_args(p)
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("dump", help="write chunks as WAV + meta.json + spectrogram + index.html")
    p.add_argument("--corpus", type=Path, help="render from this corpus (no server)")
    p.add_argument("--connect", help="or tap a running server, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--n", type=int, default=16, help="chunks to write")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a running server")
    cli_args.add_source_args(p)
    p.set_defaults(run=cmd_dump)

    from synth_server.cli import serve as cli_serve

    cli_serve.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_batch_buffers()          # batch-sized buffers reuse heap pages (synth_server/heap.py)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
