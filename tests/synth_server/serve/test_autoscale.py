"""The adaptive rules: reuse factor from production capacity vs demand, worker count from starvation."""
import math

from synth_server.serve.autoscale import ReuseController, WorkerScaler


def run_reuse(ctl, capacity, served, starved, steps):
    return [ctl.update(capacity, served, starved) for _ in range(steps)]


def test_reuse_settles_at_ceil_of_demand_over_capacity_with_safety():
    ctl = ReuseController(value=1, max_reuse=8, auto=True)
    values = run_reuse(ctl, capacity=100.0, served=260.0, starved=0.0, steps=20)
    assert values[-1] == math.ceil(260 * 1.25 / 100) == 4
    assert values == sorted(values)                     # rises monotonically, no oscillation


def test_reuse_rises_under_starvation_even_when_served_rate_is_capped():
    ctl = ReuseController(value=2, max_reuse=5, auto=True)
    # starving clients: served rate equals what the pool can give (capacity x R), demand unknown
    values = [ctl.update(100.0, 100.0 * ctl.value, 0.5) for _ in range(30)]
    assert values[-1] == 5 and max(values) == 5         # climbs to the cap, never beyond


def test_reuse_falls_only_past_the_hysteresis_band_and_ignores_missing_capacity():
    ctl = ReuseController(value=4, max_reuse=8, auto=True)
    assert ctl.update(0.0, 500.0, 0.9) == 4             # no production measured yet: unchanged
    run_reuse(ctl, capacity=100.0, served=300.0 / 1.25, starved=0.0, steps=30)   # need = 3.0
    assert ctl.value == 4                                # within a step of 4: held
    run_reuse(ctl, capacity=100.0, served=150.0 / 1.25, starved=0.0, steps=30)   # need = 1.5
    assert ctl.value == 2
    run_reuse(ctl, capacity=100.0, served=0.0, starved=0.0, steps=30)           # no demand
    assert ctl.value == 1


def test_reuse_due_only_when_auto_and_period_elapsed():
    ctl = ReuseController(value=1, max_reuse=4, auto=False, period_s=2.0)
    assert not ctl.due(0.0) and not ctl.due(5.0)
    ctl.auto = True
    assert ctl.due(6.0) and not ctl.due(7.0) and ctl.due(8.1) and not ctl.due(9.0)


def test_scaler_adds_while_starving_and_gaining_then_reverts_a_useless_worker():
    s = WorkerScaler(min_workers=1, max_workers=4, period_s=1, settle_s=10)
    t, n = 0.0, 1
    assert s.decide(t, n, kept_rate=50.0, starved=0.5) == 1      # starving -> add
    n += 1
    assert s.decide(t + 5, n, kept_rate=95.0, starved=0.5) == 0  # settling
    assert s.decide(t + 11, n, kept_rate=95.0, starved=0.5) == 1  # +90 %: it helped, add again
    n += 1
    assert s.decide(t + 22, n, kept_rate=97.0, starved=0.5) == -1  # +2 %: no gain -> revert
    n -= 1
    assert s.decide(t + 33, n, kept_rate=95.0, starved=0.5) == 0  # ceiling holds at 2
    assert s.decide(t + 160, n, kept_rate=95.0, starved=0.5) == 1  # ceiling expired: try again


def test_scaler_removes_only_after_the_pool_stayed_full():
    s = WorkerScaler(min_workers=1, max_workers=4, period_s=1, settle_s=0, full_s=30)
    s.observe_fill(0.0, 1.0)
    assert s.decide(10.0, 3, 80.0, 0.0) == 0
    s.observe_fill(15.0, 0.5)                                       # a dip resets the clock
    s.observe_fill(16.0, 0.99)
    assert s.decide(40.0, 3, 80.0, 0.0) == 0
    assert s.decide(47.0, 3, 80.0, 0.0) == -1
    s.observe_fill(48.0, 1.0)
    assert s.decide(100.0, 1, 80.0, 0.0) == 0                       # never below min
