"""The two adaptive rules of the broker (``--reuse auto`` and ``--workers auto``), as pure logic.

Both are written down with their constants in docs/streaming.md. They take measured rates and
return decisions; the broker measures and applies them. Time is passed in (seconds, monotonic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ReuseController:
    """Adapts the reuse factor R in [1, max_reuse].

    Every ``period_s``: ``need = served_rate * safety / capacity_rate`` where capacity_rate is the
    sum of the workers' kept chunks per *busy* second (not throttled by back-pressure) and
    served_rate the chunk-servings per second to clients. If clients starved for more than
    ``starve_share`` of the period, ``need >= R + 1``. ``need`` is smoothed by an EMA (``alpha``).
    Up: smoothed > R -> R = ceil(smoothed). Down: only when ceil(smoothed + ``down_margin``) < R
    (hysteresis band of ``down_margin`` below a whole step).
    """

    value: int
    max_reuse: int
    auto: bool = False
    safety: float = 1.25
    alpha: float = 0.3
    down_margin: float = 0.3
    starve_share: float = 0.05
    period_s: float = 2.0
    smoothed: float | None = None
    _last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is None:
            self._last = now
        if not self.auto or now - self._last < self.period_s:
            return False
        self._last = now
        return True

    def update(self, capacity_rate: float, served_rate: float, starved: float) -> int:
        """One evaluation; returns the (possibly new) R. No production measured yet -> unchanged."""
        if capacity_rate <= 0:
            return self.value
        need = served_rate * self.safety / capacity_rate
        if starved > self.starve_share:
            need = max(need, self.value + 1)
        self.smoothed = need if self.smoothed is None else self.smoothed + self.alpha * (need - self.smoothed)
        if self.smoothed > self.value:
            self.value = min(self.max_reuse, math.ceil(self.smoothed))
        elif math.ceil(self.smoothed + self.down_margin) < self.value:
            self.value = max(1, math.ceil(self.smoothed + self.down_margin))
        return self.value


@dataclass
class WorkerScaler:
    """Decides +1 / -1 / 0 local workers every ``period_s``; nothing within ``settle_s`` of a change.

    - Clients starved (share of the period with a client waiting on an empty pool) above
      ``starve_share`` and n < max and n < ceiling -> +1, remembering the kept rate before.
    - After an addition has settled: if clients still starve and the kept rate did not grow by
      ``gain`` (x1.10), the addition did not help -> -1 and ceiling = n - 1 for ``ceiling_s``.
    - Pool at least ``full_fill`` full for ``full_s`` without a break (workers blocked on
      credit) and n > min -> -1.
    """

    min_workers: int
    max_workers: int
    period_s: float = 5.0
    settle_s: float = 15.0
    full_s: float = 30.0
    full_fill: float = 0.95
    gain: float = 1.10
    starve_share: float = 0.10
    ceiling_s: float = 120.0
    _last_change: float = -math.inf
    _last_eval: float = -math.inf
    _full_since: float | None = None
    _rate_before: float | None = None
    _ceiling: int | None = None
    _ceiling_until: float = -math.inf

    def observe_fill(self, now: float, fill: float) -> None:
        """Called every broker tick with the pool fill in [0, 1]."""
        if fill >= self.full_fill:
            self._full_since = now if self._full_since is None else self._full_since
        else:
            self._full_since = None

    def decide(self, now: float, n: int, kept_rate: float, starved: float) -> int:
        if now - self._last_eval < self.period_s or now - self._last_change < self.settle_s:
            return 0
        self._last_eval = now
        if now >= self._ceiling_until:
            self._ceiling = None
        step = self._step(now, n, kept_rate, starved)
        if step:
            self._last_change = now
            self._full_since = None
        return step

    def _step(self, now: float, n: int, kept_rate: float, starved: float) -> int:
        starving = starved > self.starve_share
        if self._rate_before is not None:
            before, self._rate_before = self._rate_before, None
            if starving and kept_rate < before * self.gain and n > self.min_workers:
                self._ceiling, self._ceiling_until = n - 1, now + self.ceiling_s
                return -1
        if n < self.min_workers:
            return 1
        limit = self.max_workers if self._ceiling is None else min(self.max_workers, self._ceiling)
        if starving and n < limit:
            self._rate_before = kept_rate
            return 1
        full_long = self._full_since is not None and now - self._full_since >= self.full_s
        if full_long and n > self.min_workers:
            return -1
        return 0
