"""Prometheus exposition of the broker's stats snapshot (``prometheus_client``), and /metrics.

The broker thread publishes a snapshot (``Broker.snapshot``) about once a second; a collector
turns the latest one into metric families when Prometheus scrapes. Counters keep their
``_total`` names (``stemstream_chunks_total``, ...).
"""
from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from synth_server.serve.stats import RATE_STAGES

_POOL_SIZES = ("size", "capacity", "budget_bytes")


def _family(kind, name: str, help_: str, labels: tuple[str, ...], samples) -> Metric:
    family = kind("stemstream_" + name, help_, labels=list(labels))
    for label_values, value in samples:
        family.add_metric([str(v) for v in label_values], float(value))
    return family


def snapshot_metrics(s: dict[str, Any]) -> Iterator[Metric]:
    """Metric families of one snapshot."""
    C, G = CounterMetricFamily, GaugeMetricFamily
    pool, w, reuse = s["pool"], s["workers"], s["reuse"]
    yield _family(C, "chunks", "Chunks per pipeline stage", ("stage",),
                  [((k,), s["totals"][k]) for k in RATE_STAGES])
    yield _family(G, "chunks_per_second", "Chunk rate per stage (sliding window)", ("stage",),
                  [((k,), s["rates"][k]) for k in RATE_STAGES])
    yield _family(G, "pool_chunks", "Chunks in the reuse pool", (), [((), pool.get("size", 0))])
    yield _family(G, "pool_capacity", "Reuse pool capacity", (), [((), pool.get("capacity", 0))])
    yield _family(G, "pool_budget_bytes", "Pool memory budget", (), [((), pool.get("budget_bytes", 0))])
    yield _family(G, "pool_freshness", "Freshness figures of the pool", ("figure",),
                  [((k,), v) for k, v in sorted(pool.items())
                   if k not in _POOL_SIZES and isinstance(v, (int, float))])
    yield _family(G, "reuse", "Current reuse factor R", ("auto",), [((int(reuse["auto"]),), reuse["value"])])
    yield _family(G, "workers_alive", "Workers with a recent heartbeat", (), [((), w["alive"])])
    yield _family(G, "workers_target", "Local workers wanted", (), [((), w["target"])])
    yield _family(G, "worker_capacity_chunks_per_second",
                  "Kept chunks per busy second, summed over workers (what they make when not held back)",
                  (), [((), w.get("capacity_rate", 0.0))])
    yield _family(C, "worker_restarts", "Local worker restarts", (), [((), w["restarts"])])
    yield _family(G, "worker_kept_per_second", "Chunks received per worker", ("worker",),
                  [((p["id"],), p["recv_rate"]) for p in w.get("list", [])])
    yield _family(C, "excerpts", "Excerpt renders, and those whose pre-roll the cap cut short", ("kind",),
                  [((k,), v) for k, v in sorted((s.get("excerpts") or {}).items())])
    yield _family(C, "rejected", "Chunks rejected by the filter", ("reason",),
                  [((k,), v) for k, v in sorted(s["rejections"].items())])
    yield _family(C, "song_errors", "Songs skipped by workers", ("reason",),
                  [((k,), v) for k, v in sorted(s["song_errors"].items())])
    yield _family(G, "banned_songs", "Songs no longer handed out (failed or killed workers)", (),
                  [((), (s.get("banned_songs") or {}).get("count", 0))])
    yield _family(C, "malformed", "Malformed messages dropped", ("reason",),
                  [((k,), v) for k, v in sorted(s["errors"].items())] or [(("none",), 0)])
    yield _family(G, "client_starved_share", "Share of time a client waited on an empty pool", ("client",),
                  [((c["id"],), c["starved_share"]) for c in s["clients"]])
    yield _family(G, "client_wait_share", "Data-wait share reported by the client", ("client",),
                  [((c["id"],), c["wait_share"]) for c in s["clients"] if c.get("wait_share") is not None])
    yield _family(G, "paused", "1 while production is paused", (), [((), int(s.get("paused", False)))])


class _Latest:
    """A collector of the latest published snapshot (none: no metrics)."""

    def __init__(self, snapshot: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from snapshot_metrics(self.snapshot)


def prometheus_text(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition (format 0.0.4) of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Latest(snapshot))
    return generate_latest(registry).decode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """GET /metrics on ``host:port`` in a daemon thread, serving the latest published snapshot
    (503 until the first one)."""

    def __init__(self, host: str, port: int) -> None:
        self._latest = _Latest()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._latest)
        app = make_wsgi_app(registry)

        def guarded(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics" or self._latest.snapshot is None:
                status = "404 Not Found" if self._latest.snapshot is not None else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [status.encode()]
            return app(environ, start_response)

        self._server = make_server(host, port, guarded, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def publish(self, snapshot: dict[str, Any]) -> None:
        self._latest.snapshot = snapshot

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
