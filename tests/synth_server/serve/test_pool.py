"""Reuse pool: capacity, reuse limits, shuffling, ownership and freshness figures."""
from collections import Counter

import numpy as np
import pytest

from synth_server.serve.pool import ReusePool

S, W = 2, 8


def make_pool(capacity=10, reuse=2, seed=0, dtype="int16") -> ReusePool:
    return ReusePool(capacity, S, W, dtype, reuse, np.random.default_rng(seed))


def chunks(start: int, n: int, dtype="int16"):
    """n chunks whose samples all equal their index; meta song 's<index>'."""
    ids = np.arange(start, start + n)
    stems = np.broadcast_to(ids[:, None, None], (n, S, W)).astype(dtype)
    return stems, [{"song": f"s{i}", "offset": int(i) * 10} for i in ids]


def test_add_respects_capacity_and_refuses_overflow():
    pool = make_pool(capacity=5)
    assert pool.free() == 5 and len(pool) == 0
    assert pool.add(*chunks(0, 3)) == 3
    assert pool.add(*chunks(3, 4)) == 2            # only two slots were free
    assert pool.free() == 0 and len(pool) == 5
    assert pool.add(*chunks(7, 1)) == 0
    assert pool.added == 5
    stems, meta = pool.draw(10, "a")
    assert sorted(m["song"] for m in meta) == [f"s{i}" for i in range(5)]
    assert pool.memory_bytes >= 5 * S * W * 2


def test_add_rejects_wrong_geometry():
    pool = make_pool()
    with pytest.raises(ValueError, match="shape"):
        pool.add(np.zeros((1, S, W + 1), np.int16), [{"song": "a", "offset": 0}])
    with pytest.raises(ValueError, match="dtype"):
        pool.add(np.zeros((1, S, W), np.float16), [{"song": "a", "offset": 0}])


def test_draw_returns_matching_copy():
    pool = make_pool(capacity=4, reuse=3)
    pool.add(*chunks(0, 4))
    stems, meta = pool.draw(4, "a")
    assert stems.shape == (4, S, W) and stems.flags.c_contiguous
    for arr, m in zip(stems, meta):                     # samples follow their metadata
        index = int(m["song"][1:])
        assert (arr == index).all() and m["offset"] == index * 10 and m["uses"] == 1
    stems[:] = -1
    again, meta2 = pool.draw(4, "a")
    assert (again >= 0).all() and {m["uses"] for m in meta2} == {2}


def test_pick_without_commit_records_nothing():
    # a batch the broker could not send (client queue full) must not use up fresh chunks
    pool = make_pool(capacity=4, reuse=1)
    pool.add(*chunks(0, 4))
    drawn = pool.pick(4, "a")
    assert len(drawn.meta) == 4 and {m["uses"] for m in drawn.meta} == {1}
    assert pool.served == 0 and len(pool) == 4 and pool.available("a") == 4
    again = pool.pick(4, "a")                      # still all there, still first uses
    pool.commit(again)
    assert pool.served == 4 and len(pool) == 0 and pool.retired == 4
    assert sorted(int(m["song"][1:]) for m in again.meta) == [0, 1, 2, 3]


def test_draw_is_shuffled_and_uniform():
    pool = make_pool(capacity=100, reuse=10**6)
    pool.add(*chunks(0, 100))
    _, meta = pool.draw(100, "a")
    order = [m["offset"] // 10 for m in meta]
    assert sorted(order) == list(range(100)) and order != list(range(100))
    counts = Counter()
    for _ in range(2000):
        _, meta = pool.draw(5, "a")
        assert len({m["song"] for m in meta}) == 5     # distinct within a draw
        counts.update(m["song"] for m in meta)
    assert len(counts) == 100 and min(counts.values()) > 50 and max(counts.values()) < 160


def test_uses_never_exceed_reuse():
    rng = np.random.default_rng(5)
    pool = make_pool(capacity=20, reuse=3, seed=5)
    served, next_id = Counter(), 0
    for _ in range(300):
        k = pool.free()
        pool.add(*chunks(next_id, k))
        next_id += k
        _, meta = pool.draw(int(rng.integers(1, 8)), "a")
        assert all(1 <= m["uses"] <= 3 for m in meta)
        served.update(m["song"] for m in meta)
    assert max(served.values()) == 3
    assert pool.served == sum(served.values())


def test_reuse_one_never_repeats():
    pool = make_pool(capacity=16, reuse=1, seed=7)
    seen, next_id = [], 0
    for _ in range(100):
        k = pool.free()
        pool.add(*chunks(next_id, k))
        next_id += k
        _, meta = pool.draw(5, "a")
        seen.extend(m["song"] for m in meta)
    assert len(seen) == len(set(seen)) == 500
    assert pool.freshness()["first_use_share"] == 1.0


def test_draw_returns_fewer_when_short():
    pool = make_pool(capacity=10, reuse=1)
    pool.add(*chunks(0, 3))
    stems, meta = pool.draw(5, "a")
    assert stems.shape == (3, S, W) and len(meta) == 3
    stems, meta = pool.draw(5, "a")
    assert stems.shape == (0, S, W) and meta == []


def test_clients_get_disjoint_chunks():
    pool = make_pool(capacity=30, reuse=4, seed=3)
    served = {"a": set(), "b": set()}
    next_id = 0
    for step in range(200):
        k = pool.free()
        pool.add(*chunks(next_id, k))
        next_id += k
        client = "ab"[step % 2]
        _, meta = pool.draw(4, client)
        served[client].update(m["song"] for m in meta)
    assert served["a"] and served["b"] and not served["a"] & served["b"]


def test_release_client_lets_others_draw():
    pool = make_pool(capacity=4, reuse=5)
    pool.add(*chunks(0, 4))
    pool.draw(4, "a")
    assert pool.available("b") == 0 and pool.draw(2, "b")[1] == []
    assert pool.release_client("a") == 4 and pool.release_client("nobody") == 0
    _, meta = pool.draw(4, "b")
    assert len(meta) == 4 and {m["uses"] for m in meta} == {2}


def test_set_reuse_live():
    pool = make_pool(capacity=6, reuse=5)
    pool.add(*chunks(0, 6))
    pool.draw(6, "a")
    pool.draw(3, "a")                                   # three chunks now have 2 uses
    assert pool.set_reuse(2) == 3
    assert len(pool) == 3 and pool.retired == 3
    _, meta = pool.draw(6, "a")
    assert len(meta) == 3 and {m["uses"] for m in meta} == {2}
    assert len(pool) == 0
    with pytest.raises(ValueError, match="reuse"):
        pool.set_reuse(0)


def test_freshness_hand_traced():
    """capacity 3, reuse 3, one client; every draw takes all usable chunks (order-free)."""
    pool = make_pool(capacity=3, reuse=3)
    pool.add(*chunks(0, 2))           # A, B
    pool.draw(3, "a")                 # batch 0: A1 B1
    pool.add(*chunks(2, 1))           # C
    pool.draw(3, "a")                 # batch 1: A2 B2 (gaps 1, 1) C1
    pool.draw(3, "b")                 # b owns nothing and nothing is free: no batch
    pool.draw(3, "a")                 # batch 2: A3 B3 retire (gaps 1, 1), C2 (gap 1)
    pool.add(*chunks(3, 1))           # D
    pool.set_reuse(2)                 # C retired with 2 uses
    pool.draw(3, "a")                 # batch 3: D1
    pool.draw(3, "a")                 # batch 4: D2 (gap 1), retired
    fresh = pool.freshness()
    assert (fresh["added"], fresh["served"], fresh["retired"], fresh["stored"]) == (4, 10, 4, 0)
    assert fresh["first_use_share"] == pytest.approx(4 / 10)
    assert fresh["mean_uses_retired"] == pytest.approx((3 + 3 + 2 + 2) / 4)
    assert fresh["mean_reuse_distance"] == pytest.approx(1.0)


def test_freshness_matches_independent_trace():
    """Random draws; figures recomputed from the returned metadata alone."""
    rng = np.random.default_rng(11)
    pool = make_pool(capacity=12, reuse=3, seed=11)
    last, gaps, uses, next_id = {}, [], Counter(), 0
    for batch in range(400):
        k = pool.free()
        pool.add(*chunks(next_id, k))
        next_id += k
        _, meta = pool.draw(int(rng.integers(1, 6)), "a")
        for m in meta:
            uses[m["song"]] += 1
            assert m["uses"] == uses[m["song"]]
            if m["song"] in last:
                gaps.append(batch - last[m["song"]])
            last[m["song"]] = batch
    fresh = pool.freshness()
    retired = [u for u in uses.values() if u == 3]
    assert fresh["retired"] == len(retired)
    assert fresh["first_use_share"] == pytest.approx(len(uses) / sum(uses.values()))
    assert fresh["mean_reuse_distance"] == pytest.approx(np.mean(gaps))
    assert max(gaps) > 1


def test_augmentation_records_travel_with_their_chunks():
    pool = make_pool(capacity=4, reuse=1)
    stems, meta = chunks(0, 4)
    for i in (1, 3):
        meta[i]["augment"] = {"tempo": 1.0 + i / 10}
    pool.add(stems, meta)
    got, out = pool.draw(4, "c")
    by_index = {int(g[0, 0]): m for g, m in zip(got, out)}
    assert by_index[1]["augment"] == {"tempo": 1.1} and by_index[3]["augment"] == {"tempo": 1.3}
    assert "augment" not in by_index[0] and "augment" not in by_index[2]
    pool.add(*chunks(4, 4))                          # freed slots forget the old records
    assert all("augment" not in m for m in pool.draw(4, "c")[1])
