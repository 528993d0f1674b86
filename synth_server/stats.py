"""Broker statistics: rate meters, the text view of a stats snapshot, Prometheus text, /metrics.

A snapshot is the JSON object the broker answers to ``{"cmd": "stats"}`` (see ``Broker.snapshot``):
``rates``/``totals`` (chunks: rendered, kept, received, served), ``pool``, ``reuse``, ``workers``,
``clients``, ``rejections``, ``song_errors``, ``malformed``, ``errors``, ``paused``, ``uptime_s``.
"""
from __future__ import annotations

import http.server
import re
import threading
import time
from collections import deque
from typing import Any

_RATE_STAGES = ("rendered", "kept", "received", "served")
MALFORMED = ("protocol", "unexpected_type")    # plus every "bad_<message type>" reason
_GROUPS = {"rejected_": "rejections", "song_failed_": "song_errors"}


class RateMeter:
    """Per-second rate of a monotonically increasing total over a sliding time window."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def update(self, now: float, total: float) -> None:
        self._samples.append((now, float(total)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


def broker_snapshot(b) -> dict[str, Any]:
    """The stats object of a ``broker.Broker`` (JSON-ready)."""
    now, sup = time.monotonic(), b.supervisor
    groups: dict[str, dict] = {"rejections": {}, "song_errors": {}}
    for key, value in b.totals.items():
        for prefix, group in _GROUPS.items():
            if key.startswith(prefix):
                groups[group][key[len(prefix):]] = value
    groups["song_errors"]["too_short"] = b.totals["songs_too_short"]
    return {
        "address": b.address, "uptime_s": now - b.started, "paused": b.paused,
        "rates": {k: b.meters[k].rate() for k in _RATE_STAGES},
        "totals": {k: b.totals[k] for k in (*_RATE_STAGES, "batches", "songs_sent")},
        "pool": {"size": len(b.pool), "capacity": b.pool.capacity, "budget_bytes": b.budget_bytes(),
                 **b.pool.freshness()},
        "reuse": {"value": b.pool.reuse, "auto": b.reuse.auto, "max": b.cfg.max_reuse},
        "workers": {"alive": len(b.peers.workers), "target": sup.target if sup else 0,
                    "auto": b.scaler is not None, "min": b.cfg.min_workers, "max": b.cfg.max_workers,
                    "restarts": sup.restarts if sup else 0,
                    "list": [w.describe(now) for w in b.peers.workers.values()]},
        "clients": [c.describe() for c in b.peers.clients.values()],
        **groups,
        "malformed": sum(v for k, v in b.errors.items() if k in MALFORMED or k.startswith("bad_")),
        "errors": dict(b.errors),
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
    lines.append("chunks/s  " + "  ".join(f"{k} {r[k]:.1f}" for k in _RATE_STAGES)
                 + "   (totals " + " / ".join(str(t[k]) for k in _RATE_STAGES) + ")")
    lines += _fmt_pool(s["pool"])
    lines.append(f"reuse     R={reuse['value']} ({'auto' if reuse['auto'] else 'fixed'}, max {reuse['max']})")
    lines += _fmt_workers(s["workers"])
    lines.append("rejected  " + _fmt_counts(s["rejections"]))
    lines.append("song err  " + _fmt_counts(s["song_errors"]))
    banned = s.get("banned_songs") or {"count": 0, "songs": []}
    lines.append(f"banned    {banned['count']} songs" + "".join(
        f"\n  {b['path']}: {b['reason']}" for b in banned["songs"][:10]))
    lines += _fmt_clients(s["clients"])
    lines.append(f"malformed {s['malformed']}  ({_fmt_counts(s['errors'])})")
    return "\n".join(lines)


_LABEL_BAD = re.compile(r'[\\"\n]')


def _label(value: Any) -> str:
    return _LABEL_BAD.sub(lambda m: {"\\": r"\\", '"': r"\"", "\n": r"\n"}[m.group()], str(value))


def _metric(out: list[str], name: str, kind: str, help_: str,
            samples: list[tuple[dict[str, Any], float]]) -> None:
    out.append(f"# HELP stemstream_{name} {help_}")
    out.append(f"# TYPE stemstream_{name} {kind}")
    for labels, value in samples:
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        out.append(f"stemstream_{name}{{{lab}}} {float(value):.6g}" if lab
                   else f"stemstream_{name} {float(value):.6g}")


def prometheus_text(s: dict[str, Any]) -> str:
    """Prometheus text exposition (format 0.0.4) of a snapshot."""
    out: list[str] = []
    _metric(out, "chunks_total", "counter", "Chunks per pipeline stage",
            [({"stage": k}, s["totals"][k]) for k in _RATE_STAGES])
    _metric(out, "chunks_per_second", "gauge", "Chunk rate per stage (sliding window)",
            [({"stage": k}, s["rates"][k]) for k in _RATE_STAGES])
    pool = s["pool"]
    _metric(out, "pool_chunks", "gauge", "Chunks in the reuse pool", [({}, pool.get("size", 0))])
    _metric(out, "pool_capacity", "gauge", "Reuse pool capacity", [({}, pool.get("capacity", 0))])
    _metric(out, "pool_budget_bytes", "gauge", "Pool memory budget", [({}, pool.get("budget_bytes", 0))])
    fresh = [({"figure": k}, v) for k, v in sorted(pool.items())
             if k not in ("size", "capacity", "budget_bytes") and isinstance(v, (int, float))]
    _metric(out, "pool_freshness", "gauge", "Freshness figures of the pool", fresh)
    _metric(out, "reuse", "gauge", "Current reuse factor R", [({"auto": int(s["reuse"]["auto"])}, s["reuse"]["value"])])
    w = s["workers"]
    _metric(out, "workers_alive", "gauge", "Workers with a recent heartbeat", [({}, w["alive"])])
    _metric(out, "workers_target", "gauge", "Local workers wanted", [({}, w["target"])])
    _metric(out, "worker_restarts_total", "counter", "Local worker restarts", [({}, w["restarts"])])
    _metric(out, "worker_kept_per_second", "gauge", "Chunks received per worker",
            [({"worker": p["id"]}, p["recv_rate"]) for p in w.get("list", [])])
    _metric(out, "rejected_total", "counter", "Chunks rejected by the filter",
            [({"reason": k}, v) for k, v in sorted(s["rejections"].items())])
    _metric(out, "song_errors_total", "counter", "Songs skipped by workers",
            [({"reason": k}, v) for k, v in sorted(s["song_errors"].items())])
    _metric(out, "banned_songs", "gauge", "Songs no longer handed out (failed or killed workers)",
            [({}, (s.get("banned_songs") or {}).get("count", 0))])
    _metric(out, "malformed_total", "counter", "Malformed messages dropped",
            [({"reason": k}, v) for k, v in sorted(s["errors"].items())] or [({"reason": "none"}, 0)])
    _metric(out, "client_starved_share", "gauge", "Share of time a client waited on an empty pool",
            [({"client": c["id"]}, c["starved_share"]) for c in s["clients"]])
    _metric(out, "client_wait_share", "gauge", "Data-wait share reported by the client",
            [({"client": c["id"]}, c["wait_share"]) for c in s["clients"] if c.get("wait_share") is not None])
    _metric(out, "paused", "gauge", "1 while production is paused", [({}, int(s.get("paused", False)))])
    return "\n".join(out) + "\n"


class MetricsServer:
    """GET /metrics on ``host:port`` in a daemon thread, serving the latest published snapshot.

    The broker thread calls ``publish(snapshot)``; the HTTP thread only reads that reference.
    """

    def __init__(self, host: str, port: int) -> None:
        self._latest: dict[str, Any] | None = None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                snap = owner._latest
                if self.path.split("?")[0] != "/metrics" or snap is None:
                    self.send_error(404 if snap is not None else 503)
                    return
                body = prometheus_text(snap).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def publish(self, snapshot: dict[str, Any]) -> None:
        self._latest = snapshot

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
