"""Rolling-window quality: the window math against hand-computed values, and bucket expiry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly.engine.pipeline.quality import QualityWindow

# 6 items; categories: 0 0 1 1 2 -1 (item 5 has none); popularity sums to 10 (mean 10/6)
CATS = np.array([0, 0, 1, 1, 2, -1])
POP = np.array([4.0, 3.0, 2.0, 1.0, 0.0, 0.0])


def window(**kw) -> QualityWindow:
    return QualityWindow(CATS, POP, window_seconds=kw.pop("window", 300.0),
                         bucket_seconds=kw.pop("bucket", 60.0), **kw)


def test_empty_window_reports_zeros():
    s = window().snapshot()
    assert s == {"slates": 0, "coverage": 0.0, "diversity": 0.0, "popularity": 0.0,
                 "novelty": 0.0, "cold_start_share": 0.0}


def test_coverage_counts_distinct_items_over_slates_and_buckets():
    w = window()
    w.observe(np.array([0, 1]), now=0.0)
    w.observe(np.array([1, 2]), now=10.0)
    w.observe(np.array([2, 3]), now=70.0)  # next bucket, items 2 seen in both
    assert w.snapshot()["coverage"] == pytest.approx(4 / 6)


def test_diversity_is_one_minus_same_category_pair_share():
    w = window()
    w.observe(np.array([0, 1, 2]), now=0.0)  # pairs 01 same, 02, 12 -> 1 - 1/3
    w.observe(np.array([4, 5, 3]), now=1.0)  # no same pairs (5 is uncategorized) -> 1
    w.observe(np.array([3]), now=2.0)  # a single item has no pairs: not in the mean
    assert w.snapshot()["diversity"] == pytest.approx(((1 - 1 / 3) + 1.0) / 2)


def test_uncategorized_items_are_never_the_same_category():
    cats = np.array([-1, -1, -1])
    w = QualityWindow(cats, np.ones(3))
    w.observe(np.array([0, 1, 2]), now=0.0)
    assert w.snapshot()["diversity"] == 1.0


def test_popularity_and_novelty_of_served_items():
    w = window()
    w.observe(np.array([0, 3]), now=0.0)
    w.observe(np.array([4]), now=1.0)  # popularity 0 counts as half the smallest positive
    s = w.snapshot()
    mean = 10 / 6
    assert s["popularity"] == pytest.approx((4 / mean + 1 / mean + 0.0) / 3)
    novelty = (-math.log2(4 / 10) - math.log2(1 / 10) - math.log2(0.5 / 10)) / 3
    assert s["novelty"] == pytest.approx(novelty)


def test_cold_start_share_is_per_slate():
    w = window()
    w.observe(np.array([0]), cold=True, now=0.0)
    for t in range(3):
        w.observe(np.array([1, 2]), now=float(t))
    assert w.snapshot()["cold_start_share"] == pytest.approx(1 / 4)
    assert w.snapshot()["slates"] == 4


def test_old_buckets_expire_and_their_items_leave_coverage():
    w = window(window=180.0, bucket=60.0)  # three one-minute buckets
    w.observe(np.array([0, 1, 2]), cold=True, now=0.0)  # bucket 0
    w.observe(np.array([2, 3]), now=60.0)  # bucket 1
    assert w.snapshot()["coverage"] == pytest.approx(4 / 6)
    w.expire(now=179.0)  # bucket 2: buckets 0..2 still inside
    assert w.snapshot()["slates"] == 2
    w.expire(now=180.0)  # bucket 3: bucket 0 leaves
    s = w.snapshot()
    assert s["slates"] == 1 and s["cold_start_share"] == 0.0
    assert s["coverage"] == pytest.approx(2 / 6)  # item 2 stays: bucket 1 saw it too
    assert s["diversity"] == 0.0  # items 2 and 3 share a category
    w.expire(now=1000.0)
    assert w.snapshot() == window().snapshot()
    assert len(w.buckets) == 1


def test_incremental_totals_match_a_recount_after_many_expiries():
    rng = np.random.default_rng(1)
    cats = rng.integers(-1, 5, 50)
    pop = rng.integers(0, 20, 50).astype(float)
    w = QualityWindow(cats, pop, window_seconds=300.0, bucket_seconds=60.0)
    log = []
    for step in range(400):
        now = step * 7.0
        items = rng.choice(50, rng.integers(1, 8), replace=False)
        cold = bool(rng.random() < 0.2)
        w.observe(items, cold, now=now)
        log.append((now, items, cold))
    ref = QualityWindow(cats, pop, window_seconds=300.0, bucket_seconds=60.0)
    first_kept = (math.floor(log[-1][0] / 60.0) - 4) * 60.0
    for now, items, cold in log:
        if now >= first_kept:
            ref.observe(items, cold, now=now)
    got, want = w.snapshot(), ref.snapshot()
    assert got["slates"] == want["slates"]
    for key in ("coverage", "diversity", "popularity", "novelty", "cold_start_share"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_history_gives_one_point_per_bucket():
    w = window()
    w.observe(np.array([0, 1]), now=0.0)
    w.observe(np.array([2, 4]), now=125.0)
    h = w.history()
    assert [p["t"] for p in h] == [0.0, 120.0]
    assert h[0]["coverage"] == pytest.approx(2 / 6) and h[0]["diversity"] == 0.0
    assert h[1]["diversity"] == 1.0


def test_window_must_hold_at_least_one_bucket():
    with pytest.raises(ValueError):
        QualityWindow(CATS, POP, window_seconds=30.0, bucket_seconds=60.0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), slates=st.integers(0, 200), span=st.floats(0, 2000))
def test_queued_slates_fold_to_the_same_window_as_one_by_one(seed, slates, span):
    """record() + drain() (vectorized per time bucket) == observe() per slate."""
    rng = np.random.default_rng(seed)
    n = 300
    cats, pop = rng.integers(-1, 9, n), rng.random(n)
    one = QualityWindow(cats, pop, clock=lambda: span)
    batched = QualityWindow(cats, pop, clock=lambda: span)
    times = np.sort(rng.random(slates) * span)
    for t in times.tolist():
        items = rng.integers(-2, n + 2, int(rng.integers(0, 12)))
        cold = bool(rng.random() < 0.3)
        one.observe(items, cold, t)
        batched.record(items, cold, t)
    a, b = one.snapshot(), batched.snapshot()  # snapshot drains the queue first
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), key
    assert [round(x["coverage"], 12) for x in one.history()] == [
        round(x["coverage"], 12) for x in batched.history()]
