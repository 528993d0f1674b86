"""Serving commands of `synth-server`: serve, worker, ctl, stats, keygen.

``register(subparsers)`` adds them; each parses its flags into one typed config
(``serve_config``) and calls its ``run_*`` function. Exit codes: 0 ok, 1 refused by the broker
(or keygen would overwrite), 2 bad flags or configuration, 3 broker unreachable.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from synth_server.cli import args as cli_args
from synth_server.cli.args import UsageError
from synth_server.dealer import ControlClient
from synth_server.serve.config import (CLIENT_KEY, SERVER_KEY, WIRE_DTYPES, BrokerConfig, ControlConfig, KeygenConfig,
                           ServeConfig, StatsConfig, WorkerConfig, load_client_curve)

log = logging.getLogger(__name__)
LOCAL_BROKER = "tcp://127.0.0.1:5555"   # the default serve address, as seen from the server host
EXIT_REFUSED, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3


def _count_or_auto(text: str) -> int | None:
    """'auto' -> None, '3' -> 3 (argparse type)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# -- serve -------------------------------------------------------------------------------------
def serve_config(args: argparse.Namespace) -> ServeConfig:
    if not Path(args.corpus).is_dir():
        raise UsageError(f"--corpus {args.corpus} is not a folder (an existing empty folder gets the demo corpus)")
    source = cli_args.source_config(args, args.corpus, seed=args.seed)
    workers_auto, reuse_auto = args.workers is None, args.reuse is None
    workers = max(1, args.min_workers) if workers_auto else args.workers
    max_workers = max(1, os.cpu_count() or 1) if args.max_workers is None else args.max_workers
    try:
        broker = BrokerConfig(
            bind=args.bind, port=args.port, pool_size=args.pool_size, dtype=args.dtype,
            reuse=1 if reuse_auto else args.reuse, reuse_auto=reuse_auto, max_reuse=args.max_reuse,
            workers=workers, workers_auto=workers_auto, min_workers=args.min_workers,
            max_workers=max_workers, seed=args.seed, curve_keys=args.curve_keys)
    except ValueError as exc:
        raise UsageError(f"{exc}") from None
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be in 0..65535, got {args.metrics_port}")
    if args.ready_file is not None and not args.ready_file.parent.is_dir():
        raise UsageError(f"--ready-file: folder {args.ready_file.parent} does not exist")
    return ServeConfig(source=source, broker=broker, metrics_port=args.metrics_port,
                       demo_songs=args.demo_songs, ready_file=args.ready_file)


def _ensure_corpus(root: Path, songs: int, seed: int) -> None:
    """Write the demo corpus into ``root`` when it holds no MIDI file (logged)."""
    from synth_server.synth.corpus import scan_midi_files
    from synth_server.synth.demo import write_demo_corpus

    if root.is_dir() and scan_midi_files(root):
        return
    log.warning("corpus %s holds no MIDI files: writing %d demo songs there (seed %d)", root, songs, seed)
    write_demo_corpus(root, songs, seed)


def _on_signals(stop: threading.Event) -> None:
    def handler(signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_serve(cfg: ServeConfig, stop: threading.Event | None = None) -> int:
    """Index the corpus, start the broker and the local workers, serve until SIGINT/SIGTERM."""
    from synth_server.serve.broker import Broker
    from synth_server.synth.corpus import build_index
    from synth_server.synth.soundfont import SoundfontError, check_holdout, soundfonts_for
    from synth_server.serve.metrics import MetricsServer
    from synth_server.serve.supervisor import Supervisor

    root = Path(cfg.source.corpus.root)
    _ensure_corpus(root, cfg.demo_songs, cfg.source.seed)
    try:
        check_holdout(soundfonts_for(cfg.source.render.soundfont, cfg.source.augment.enabled),
                      cfg.source.augment.soundfont.holdout)
        songs = build_index(cfg.source.corpus).eligible(cfg.source.split)
    except (ValueError, SoundfontError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if not songs:
        log.error("no eligible songs in split %r of %s (every class needs >= %d notes)",
                  cfg.source.split, root, cfg.source.corpus.min_notes)
        return EXIT_CONFIG
    if stop is None:
        stop = threading.Event()
        _on_signals(stop)
    try:
        metrics = MetricsServer(cfg.broker.bind, cfg.metrics_port) if cfg.metrics_port is not None else None
    except OSError as exc:
        log.error("cannot serve metrics on %s:%s: %s", cfg.broker.bind, cfg.metrics_port, exc)
        return EXIT_CONFIG
    try:
        broker = Broker(cfg.broker, cfg.source, songs, root, metrics=metrics)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        if metrics is not None:
            metrics.close()
        return EXIT_CONFIG
    template = WorkerConfig(connect=broker.connect_address(), soundfont=cfg.source.render.soundfont,
                            curve_keys=cfg.broker.curve_keys, parent_pid=os.getpid())
    supervisor = broker.supervisor = Supervisor(template, grace_s=cfg.grace_s)
    _log_start(cfg, broker, len(songs), metrics)
    try:
        supervisor.scale_to(cfg.broker.workers)
        if cfg.ready_file is not None and not _write_ready(cfg.ready_file, broker.connect_address()):
            return EXIT_CONFIG
        broker.run(stop)
    finally:
        if cfg.ready_file is not None:
            cfg.ready_file.unlink(missing_ok=True)
        broker.close()
        supervisor.shutdown()
        if metrics is not None:
            metrics.close()
    log.info("broker stopped")
    return 0


def _write_ready(path: Path, address: str) -> bool:
    """Write ``address`` and a newline to ``path`` atomically (a reader never sees half of it)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(address + "\n")
        os.replace(partial, path)
    except OSError as exc:
        log.error("cannot write --ready-file %s: %s", path, exc)
        partial.unlink(missing_ok=True)
        return False
    return True


def _log_start(cfg: ServeConfig, broker, n_songs: int, metrics) -> None:
    b, spec = cfg.broker, broker.spec
    log.info("broker on %s: %d eligible songs (split %s)%s", broker.address, n_songs, cfg.source.split,
             ", CURVE encrypted" if b.curve_keys else "")
    log.info("pool budget %.1f MiB = %d chunks x %d stems x %d samples x %d bytes (%s); with metadata %.1f MiB",
             broker.budget_bytes() / 2**20, b.pool_size, len(spec.stems), spec.window,
             spec.np_dtype.itemsize, b.dtype, broker.pool.memory_bytes / 2**20)
    aug = cfg.source.augment
    log.info("augment %s%s", aug.preset if aug.enabled else "none",
             f"; held-out soundfonts {', '.join(aug.soundfont.holdout)}" if aug.soundfont.holdout else "")
    log.info("reuse %s (max %d); workers %s", "auto" if b.reuse_auto else b.reuse, b.max_reuse,
             f"auto {b.min_workers}..{b.max_workers}" if b.workers_auto else b.workers)
    if metrics is not None:
        log.info("Prometheus metrics on http://%s:%d/metrics", b.bind, metrics.port)


def cmd_serve(args: argparse.Namespace) -> int:
    return run_serve(serve_config(args))


# -- worker ------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from synth_server.serve.worker import run_worker

    _check_address(args.connect)
    return run_worker(WorkerConfig(connect=args.connect, soundfont=args.soundfont, curve_keys=args.curve_keys,
                                   worker_id=args.id or ""))


# -- ctl and stats -----------------------------------------------------------------------------
def _check_address(address: str) -> None:
    if not address.startswith("tcp://") or ":" not in address[6:]:
        raise UsageError(f"--connect must look like tcp://HOST:PORT, got {address!r}")


def _ask(connect: str, curve_keys: Path | None, timeout: float, header: dict | None = None) -> dict:
    """The reply to ``header``, or the stats object when ``header`` is None."""
    with ControlClient(connect, load_client_curve(curve_keys) if curve_keys is not None else None) as control:
        return control.stats(timeout) if header is None else control.ask(header, timeout)


def _asked(call):
    """``(call(), None)``, or ``(None, exit code)`` with the error printed when the broker is
    unreachable (TimeoutError) or the keys or the reply are bad (ValueError)."""
    try:
        return call(), None
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, EXIT_UNREACHABLE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, EXIT_CONFIG


def run_ctl(cfg: ControlConfig) -> int:
    header = {"type": "ctl", "cmd": cfg.cmd}
    if cfg.cmd == "set":
        header.update(key=cfg.key, value=cfg.value)
    reply, code = _asked(lambda: _ask(cfg.connect, cfg.curve_keys, cfg.timeout, header))
    if reply is None:
        return code
    ok = reply.get("type") == "ctl_reply" and reply.get("ok") is True
    print(str(reply.get("message", reply))[:1000], file=sys.stdout if ok else sys.stderr)
    return 0 if ok else EXIT_REFUSED


def run_stats(cfg: StatsConfig) -> int:
    from synth_server.serve.stats import format_stats

    try:
        while True:
            snap, code = _asked(lambda: _ask(cfg.connect, cfg.curve_keys, cfg.timeout))
            if snap is None:
                return code
            print(json.dumps(snap, indent=2) if cfg.as_json else format_stats(snap), flush=True)
            if cfg.watch is None:
                return 0
            time.sleep(cfg.watch)
            print()
    except KeyboardInterrupt:
        return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    _check_address(args.connect)
    if args.cmd == "set":
        if args.key not in ("reuse", "workers") or args.value is None:
            raise UsageError("usage: ctl --connect ADDR set reuse|workers N|auto")
        try:
            _count_or_auto(args.value)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{args.key}: {exc}") from None
    elif args.key is not None:
        raise UsageError(f"{args.cmd} takes no arguments")
    return run_ctl(ControlConfig(connect=args.connect, cmd=args.cmd, key=args.key or "",
                                 value=args.value or "", curve_keys=args.curve_keys, timeout=args.timeout))


def cmd_stats(args: argparse.Namespace) -> int:
    _check_address(args.connect)
    if args.watch is not None and args.watch <= 0:
        raise UsageError("--watch SECONDS must be > 0")
    return run_stats(StatsConfig(connect=args.connect, as_json=args.json, watch=args.watch,
                                 curve_keys=args.curve_keys, timeout=args.timeout))


# -- keygen ------------------------------------------------------------------------------------
def run_keygen(cfg: KeygenConfig) -> int:
    import zmq.auth

    names = [f"{n}.{ext}" for n in (SERVER_KEY, CLIENT_KEY) for ext in ("key", "key_secret")]
    existing = [n for n in names if (cfg.out / n).exists()]
    if existing:
        print(f"error: {cfg.out} already holds {', '.join(existing)}; not overwriting", file=sys.stderr)
        return EXIT_REFUSED
    cfg.out.mkdir(parents=True, exist_ok=True)
    for name in (SERVER_KEY, CLIENT_KEY):
        _public, secret = zmq.auth.create_certificates(cfg.out, name)
        os.chmod(secret, 0o600)
    print(f"wrote {', '.join(names)} to {cfg.out}\n"
          f"serve --curve-keys {cfg.out} accepts every *.key public key in that folder; a remote worker "
          f"or trainer needs {SERVER_KEY}.key, {CLIENT_KEY}.key and {CLIENT_KEY}.key_secret")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    return run_keygen(KeygenConfig(out=args.out))


# -- parsers -----------------------------------------------------------------------------------
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="broker + local workers: stream chunks to trainers over ZeroMQ")
    p.add_argument("--corpus", type=Path, required=True, help="MIDI folder (empty: a demo corpus is written)")
    p.add_argument("--workers", type=_count_or_auto, default=2, metavar="N|auto")
    p.add_argument("--min-workers", type=int, default=1, help="lower bound for --workers auto")
    p.add_argument("--max-workers", type=_count_or_auto, default=None, metavar="N|auto",
                   help="upper bound for --workers auto (auto: one per CPU core)")
    p.add_argument("--reuse", type=_count_or_auto, default=1, metavar="R|auto",
                   help="times each chunk is served (auto: adapt to production and demand)")
    p.add_argument("--max-reuse", type=int, default=8, help="upper bound of R")
    p.add_argument("--pool-size", type=int, default=4096, help="chunks held by the reuse pool")
    p.add_argument("--dtype", choices=WIRE_DTYPES, default="float16", help="wire and pool sample type")
    p.add_argument("--bind", default="127.0.0.1", help="interface (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus text on http://BIND:PORT/metrics")
    p.add_argument("--curve-keys", type=Path, metavar="DIR", help="CURVE encryption with keys from `keygen`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-songs", type=int, default=24, help="demo songs written into an empty corpus")
    p.add_argument("--ready-file", type=Path, metavar="PATH",
                   help="once the broker is bound and the local workers are started, write its connect "
                        "address to PATH (atomically); removed at shutdown")
    cli_args.add_source_args(p)
    p.set_defaults(run=cmd_serve)


def register(sub) -> None:
    """Add serve, worker, ctl, stats and keygen to ``sub`` (argparse subparsers)."""
    _add_serve(sub)
    p = sub.add_parser("worker", help="a remote synthesis worker for a running `serve`")
    p.add_argument("--connect", required=True, help="broker address, e.g. tcp://10.0.0.2:5555")
    p.add_argument("--soundfont", type=Path, help="a .sf2 file or a folder of them")
    p.add_argument("--curve-keys", type=Path, metavar="DIR")
    p.add_argument("--id", help="worker id shown in stats (default HOST:PID)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("ctl", help="change a running server: set reuse|workers N|auto, pause, resume")
    p.add_argument("--connect", default=LOCAL_BROKER, help=f"broker address (default {LOCAL_BROKER})")
    p.add_argument("--curve-keys", type=Path, metavar="DIR")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("cmd", choices=("set", "pause", "resume"))
    p.add_argument("key", nargs="?", help="reuse or workers (with set)")
    p.add_argument("value", nargs="?", help="N or auto (with set)")
    p.set_defaults(run=cmd_ctl)

    p = sub.add_parser("stats", help="rates, pool, reuse, workers, clients of a running server")
    p.add_argument("--connect", default=LOCAL_BROKER, help=f"broker address (default {LOCAL_BROKER})")
    p.add_argument("--curve-keys", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS", help="repeat every SECONDS")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("keygen", help="write CURVE server and client key pairs into a folder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_keygen)
