"""The broker's control side: ctl commands and the auto rules, applied to a ``broker.Broker``.

Split from ``broker`` along the line between moving data (broker) and steering it (here);
everything runs on the broker's thread.
"""
from __future__ import annotations

import logging

from synth_server.serve.autoscale import WorkerScaler
from synth_server.serve.peers import parse_ctl
from synth_server.protocol import encode

log = logging.getLogger(__name__)


def handle_ctl(broker, ident: bytes, header: dict, payload=None) -> None:
    """Answer a "ctl" message (it is ``Broker._on_ctl``): the stats object, or the outcome of a command."""
    cmd, key, value = parse_ctl(header, broker.cfg.max_reuse)
    if cmd == "stats":
        broker.send(ident, encode({"type": "stats", "stats": broker.snapshot()}))
        return
    ok, message = apply_ctl(broker, cmd, key, value)
    if not ok:
        broker.errors["ctl_refused"] += 1
    broker.send(ident, encode({"type": "ctl_reply", "ok": ok, "message": message}))


def apply_ctl(broker, cmd: str, key: str, value: int | None) -> tuple[bool, str]:
    """pause / resume / set reuse N|auto / set workers N|auto (``value`` None means auto)."""
    if cmd in ("pause", "resume"):
        broker.paused = cmd == "pause"
        broker.grant_credit()
        return True, "production paused" if broker.paused else "production resumed"
    if key == "reuse":
        broker.reuse.auto = value is None
        if value is not None:
            broker.reuse.value = value
            broker.pool.set_reuse(value)
        broker.serve_clients()
        return True, f"reuse {'auto' if value is None else value}"
    if broker.supervisor is None:
        return False, "this broker runs no local workers"
    if value is None:
        broker.scaler = broker.scaler or WorkerScaler(broker.cfg.min_workers, broker.cfg.max_workers)
        return True, f"workers auto ({broker.cfg.min_workers}..{broker.cfg.max_workers})"
    broker.scaler = None
    broker.supervisor.scale_to(value)
    return True, f"workers {value}"


def run_auto_rules(broker, now: float) -> None:
    """``--reuse auto`` and ``--workers auto`` (see ``autoscale``), when due."""
    starved = broker.meters["starved"].rate()
    if broker.reuse.due(now):
        capacity = broker.peers.capacity_rate()
        before = broker.reuse.value
        after = broker.reuse.update(capacity, broker.meters["served"].rate(), starved)
        if after != before:
            broker.pool.set_reuse(after)
            log.info("reuse auto: R %d -> %d (capacity %.1f, served %.1f chunks/s, starved %.0f%%)",
                     before, after, capacity, broker.meters["served"].rate(), 100 * starved)
    if broker.scaler is not None and broker.supervisor is not None:
        broker.scaler.observe_fill(now, len(broker.pool) / broker.pool.capacity)
        step = broker.scaler.decide(now, broker.supervisor.target, broker.meters["received"].rate(), starved)
        if step:
            target = broker.supervisor.target + step
            log.info("workers auto: %d -> %d", broker.supervisor.target, target)
            broker.supervisor.scale_to(target)
