"""phase_figures: the trainer's log rows of one R span -> steps/s and time-weighted data-wait."""
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "bench")]

from gpu_stream import phase_figures  # noqa: E402


def _row(step, t, steps_per_s, wait, reuse=2):
    return {"step": step, "time": t, "steps_per_s": steps_per_s, "wait_share": wait, "reuse": reuse,
            "server_kept_per_s": 100.0}


def test_phase_figures_weigh_the_wait_by_window_time():
    # 10-step windows: one at 10 steps/s without waiting (1 s), one at 2 steps/s half waiting (5 s)
    rows = [_row(0, 99.0, 1, 0, reuse=1), _row(10, 100.0, 10, 0.9), _row(20, 101.0, 10, 0.0),
            _row(30, 106.0, 2, 0.5)]
    fig = phase_figures(rows, 99.5, 106.0, batch=12)
    assert fig["rows"] == 3
    assert fig["steps_per_s"] == pytest.approx(20 / 6)
    assert fig["chunks_per_s"] == pytest.approx(12 * 20 / 6)
    assert fig["wait_share"] == pytest.approx((0.0 * 0.1 + 0.5 * 0.5) / 0.6)   # rows after the first
    assert fig["reuse_seen"] == [2] and fig["server_kept_per_s"] == 100.0


def test_phase_figures_say_when_a_span_has_too_few_rows():
    assert phase_figures([_row(10, 100.0, 10, 0.0)], 99.0, 101.0, 12) == {
        "rows": 1, "note": "fewer than 2 log rows in this span"}
