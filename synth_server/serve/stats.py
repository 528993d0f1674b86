"""The text view of a broker stats snapshot (``synth-server stats``).

A snapshot is the JSON object the broker answers to ``{"cmd": "stats"}`` (``Broker.snapshot``):
``rates``/``totals`` (chunks: rendered, kept, received, served), ``pool``, ``reuse``, ``workers``,
``excerpts`` (rendered, preroll_capped), ``clients``, ``rejections``, ``song_errors``, ``malformed``, ``errors``,
``paused``, ``uptime_s``, ``banned_songs``, ``fixed_sets`` (requests, rendered, served, failed, cached,
rendering).
"""
from __future__ import annotations

import time
from typing import Any

RATE_STAGES = ("rendered", "kept", "received", "served")
MALFORMED = ("protocol", "unexpected_type")    # plus every "bad_<message type>" reason
_GROUPS = (("rejected_", "rejections"), ("song_failed_", "song_errors"))


def grouped_counters(totals: dict[str, int], errors: dict[str, int]) -> dict[str, Any]:
    """The snapshot's ``rejections`` / ``song_errors`` (from ``rejected_*`` / ``song_failed_*``
    totals, plus ``too_short``), ``malformed`` (sum of malformed-message reasons) and ``errors``."""
    groups: dict[str, Any] = {"rejections": {}, "song_errors": {}}
    for key, value in totals.items():
        for prefix, group in _GROUPS:
            if key.startswith(prefix):
                groups[group][key[len(prefix):]] = value
    groups["song_errors"]["too_short"] = totals.get("songs_too_short", 0)
    groups["malformed"] = sum(v for k, v in errors.items() if k in MALFORMED or k.startswith("bad_"))
    groups["errors"] = dict(errors)
    return groups


def broker_snapshot(broker) -> dict:
    """The stats object of a ``serve.broker.Broker`` (``Broker.snapshot``; layout above)."""
    now, sup = time.monotonic(), broker.supervisor
    return {
        "address": broker.address, "uptime_s": now - broker.started, "paused": broker.paused,
        "rates": {k: broker.meters[k].rate() for k in RATE_STAGES},
        "totals": {k: broker.totals[k] for k in (*RATE_STAGES, "batches", "songs_sent")},
        "excerpts": {"rendered": broker.totals["excerpts"], "preroll_capped": broker.totals["preroll_capped"]},
        "pool": {"size": len(broker.pool), "capacity": broker.pool.capacity, "budget_bytes": broker.budget_bytes(),
                 **broker.pool.freshness()},
        "reuse": {"value": broker.pool.reuse, "auto": broker.reuse.auto, "max": broker.cfg.max_reuse},
        "workers": {"alive": len(broker.peers.workers), "target": sup.target if sup else 0,
                    "auto": broker.scaler is not None, "min": broker.cfg.min_workers, "max": broker.cfg.max_workers,
                    "restarts": sup.restarts if sup else 0,
                    "capacity_rate": round(broker.peers.capacity_rate(), 2),
                    "list": [w.describe(now) for w in broker.peers.workers.values()]},
        "clients": [c.describe() for c in broker.peers.clients.values()],
        **grouped_counters(broker.totals, broker.errors),
        "banned_songs": broker.book.describe(), "fixed_sets": broker.fixed.describe(),
    }


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt_counts(counts: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _fmt_pool(pool: dict[str, Any]) -> list[str]:
    size, cap = pool.get("size", 0), pool.get("capacity", 0)
    lines = [f"pool      {size}/{cap} chunks ({100.0 * size / max(cap, 1):.0f}% full)"
             f"  budget {pool.get('budget_bytes', 0) / 2**20:.1f} MiB"]
    extra = {k: v for k, v in pool.items() if k not in ("size", "capacity", "budget_bytes")}
    if extra:
        lines.append("fresh     " + "  ".join(f"{k} {_num(v)}" for k, v in sorted(extra.items())))
    return lines


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt_workers(w: dict[str, Any]) -> list[str]:
    mode = f"auto {w['min']}..{w['max']}, target {w['target']}" if w.get("auto") else f"target {w['target']}"
    lines = [f"workers   {w['alive']} alive ({mode})  restarts {w['restarts']}"]
    for p in w.get("list", []):
        lines.append(f"  {p['id']:<24} {'local' if p['local'] else 'remote'} pid {p['pid']} {p['host']}"
                     f"  kept/s {p['recv_rate']:.1f} (busy {p['rate']:.1f})  credit {p['credit']}"
                     f"  seen {p['last_seen_s']:.1f}s ago")
    return lines


def _fmt_clients(clients: list[dict[str, Any]]) -> list[str]:
    lines = [f"clients   {len(clients)}"]
    for c in clients:
        reported = "-" if c.get("wait_share") is None else f"{100 * c['wait_share']:.0f}%"
        lines.append(f"  {c['id']:<24} {c['host']}  batches {c['batches']}  chunks/s {c['rate']:.1f}"
                     f"  credit {c['credit']}  starved {100 * c['starved_share']:.0f}%"
                     f"  data-wait (reported) {reported}")
    return lines


def format_stats(s: dict[str, Any]) -> str:
    """Human-readable multi-line view of a snapshot."""
    r, t = s["rates"], s["totals"]
    reuse = s["reuse"]
    head = f"stemstream broker {s.get('address', '')}  up {_fmt_duration(s['uptime_s'])}"
    lines = [head + ("  [PAUSED]" if s.get("paused") else "")]
    lines.append("chunks/s  " + "  ".join(f"{k} {r[k]:.1f}" for k in RATE_STAGES)
                 + "   (totals " + " / ".join(str(t[k]) for k in RATE_STAGES) + ")")
    lines += _fmt_pool(s["pool"])
    lines.append(f"reuse     R={reuse['value']} ({'auto' if reuse['auto'] else 'fixed'}, max {reuse['max']})")
    lines += _fmt_workers(s["workers"])
    ex = s.get("excerpts") or {"rendered": 0, "preroll_capped": 0}
    lines.append(f"excerpts  {ex['rendered']} rendered, {ex['preroll_capped']} with the pre-roll capped")
    lines.append("rejected  " + _fmt_counts(s["rejections"]))
    lines.append("song err  " + _fmt_counts(s["song_errors"]))
    banned = s.get("banned_songs") or {"count": 0, "songs": []}
    lines.append(f"banned    {banned['count']} songs" + "".join(
        f"\n  {b['path']}: {b['reason']}" for b in banned["songs"][:10]))
    lines += _fmt_clients(s["clients"])
    lines.append(f"malformed {s['malformed']}  ({_fmt_counts(s['errors'])})")
    return "\n".join(lines)
