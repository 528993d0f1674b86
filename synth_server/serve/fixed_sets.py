"""The broker's fixed-set service: render on request in a spawned process, cache, answer.

A ``fixed_set_request`` (``synth_server.fixed_set``) for a cached key is answered at once; for a
key being rendered the peer joins the waiting list; otherwise the render is submitted to a
single spawned process (``synth.fixed_excerpts.render_fixed_set``; FluidSynth stays out of the
broker process and the stream's workers keep streaming). The broker loop calls ``poll`` every
tick to send finished sets. At most ``MAX_CACHED`` sets are kept (least recently used dropped).
A held-out-timbre request to a server without held-out soundfonts is refused at once.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections import Counter, OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

from synth_server.config import ChunkSourceConfig, heldout_timbres
from synth_server.fixed_set import FixedSetKey, encode_fixed_set
from synth_server.protocol import ProtocolError, encode
from synth_server.serve.config import source_to_json
from synth_server.synth.fixed_excerpts import render_fixed_set

log = logging.getLogger(__name__)

MAX_CACHED = 4
MAX_WAITING = 64        # peers waiting on one key


class FixedSets:
    """``send(ident, frames) -> bool`` is the broker's non-blocking send."""

    def __init__(self, source: ChunkSourceConfig, send: Callable[[bytes, list], bool]) -> None:
        self.source, self.send = source, send
        self.stem_names = tuple(c.name for c in source.corpus.classes)
        self.cache: OrderedDict[FixedSetKey, list] = OrderedDict()
        self.pending: dict[FixedSetKey, tuple[Future, list[bytes]]] = {}
        self.counts: Counter = Counter()      # requests, rendered, served, failed
        self._executor: ProcessPoolExecutor | None = None

    def request(self, ident: bytes, header: dict) -> None:
        """Handle one request (ProtocolError for a malformed or oversized one)."""
        key = FixedSetKey.from_header(header)
        key.check_size(len(self.stem_names), self.source.audio.sample_rate)
        if key.timbres == "holdout":
            try:
                heldout_timbres(self.source, key.split)
            except ValueError as exc:
                raise ProtocolError(f"fixed set with held-out timbres: {exc}") from None
        self.counts["requests"] += 1
        if key in self.cache:
            self.cache.move_to_end(key)
            self._answer(ident, self.cache[key])
        elif key in self.pending:
            waiting = self.pending[key][1]
            if len(waiting) < MAX_WAITING:
                waiting.append(ident)
        else:
            log.info("rendering fixed set %s", key)
            self.pending[key] = (self._pool().submit(render_fixed_set, self.source, key), [ident])

    def poll(self) -> None:
        """Answer the peers of every finished render."""
        for key in [k for k, (future, _) in self.pending.items() if future.done()]:
            future, waiting = self.pending.pop(key)
            try:
                stems, excerpts, digest = future.result()
                frames = encode_fixed_set(key, stems, excerpts, self.stem_names,
                                          self.source.audio.sample_rate, digest, source_to_json(self.source))
            except Exception as exc:  # noqa: BLE001 - a failed render is reported, never fatal
                self.counts["failed"] += 1
                log.warning("fixed set %s failed: %s", key, exc)
                frames = encode({"type": "error", "code": "fixed_set_failed",
                                 "message": f"fixed set {key.split}/{key.n}x{key.seconds:g}s/{key.timbres}: {exc}"[:500]})
                self._broken_pool()
            else:
                self.counts["rendered"] += 1
                self.cache[key] = frames
                while len(self.cache) > MAX_CACHED:
                    self.cache.popitem(last=False)
            for ident in waiting:
                self._answer(ident, frames)

    def _answer(self, ident: bytes, frames: list) -> None:
        if self.send(ident, frames) and len(frames) == 2:
            self.counts["served"] += 1

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def _broken_pool(self) -> None:
        """After a failure the process may be dead (BrokenProcessPool): start afresh next time."""
        if self._executor is not None and getattr(self._executor, "_broken", False):
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def describe(self) -> dict:
        return {**{k: self.counts[k] for k in ("requests", "rendered", "served", "failed")},
                "cached": len(self.cache), "rendering": len(self.pending)}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
