"""Rate meters: per-second rates of growing totals (broker, peers, heartbeats)."""
from __future__ import annotations

from collections import deque


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
