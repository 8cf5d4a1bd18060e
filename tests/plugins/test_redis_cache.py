"""The Redis L2 tier and the tiered cache, on standalone Redis and on a 3-master cluster."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import pytest
from starlette.testclient import TestClient

from rankly.engine import pipeline
from rankly.engine.config import load_settings
from rankly.engine.model import load_model
from rankly.engine.pipeline.cache import DIRTY_FIELD, REFRESH_FIELD, STARTED_FIELD
from rankly.engine.runtime import build_runtime
from rankly.engine.serving.app import create_app
from rankly.engine.storage.redis_store import RedisStore
from rankly.engine.storage.store import StoreUnavailable
from rankly.engine.types import RecommendationRequest
from rankly.plugins.caches.local import LocalCache
from rankly.plugins.caches.redis import (
    CLOCK_SKEW_S,
    INVALIDATED,
    INVALIDATION_MEMORY_MS,
    RedisCache,
)

pytestmark = pytest.mark.redis
PAYLOAD = {"user_id": "u1", "items": [{"item_id": "1", "score": 1.0, "reasons": ["Popular"]}],
           "model_version": "v1", "fallback": None}


def settings_for(url, ns, tmp_path=None, tiers=("l1", "l2"), **kw):
    extra = {"data_dir": tmp_path} if tmp_path is not None else {}
    # NOTE: functional tests run on a shared, loaded 2-core box: generous deadlines keep them
    # about behaviour; the deadline tests in test_redis_store.py use the 30 ms default
    return load_settings(environ={}, store_url=url, namespace=ns, cache={"tiers": list(tiers)},
                         deadlines={"store_ms": 1000.0, "request_ms": 5000.0}, **extra, **kw)


async def with_cache(url, ns, fn, **cache_kw):
    store = RedisStore(url, settings_for(url, ns))
    cache = RedisCache(store, **{"ttl": 60.0, **cache_kw})
    try:
        return await fn(cache, store)
    finally:
        await store.close()


def test_user_entries_live_in_one_hash_and_anonymous_ones_in_plain_keys(redis_url,
                                                                        redis_namespace):
    async def scenario(cache: RedisCache, store: RedisStore):
        await cache.set("k1", "u1", PAYLOAD)
        await cache.set("k2", "u1", PAYLOAD)
        await cache.set("k3", None, PAYLOAD)
        r = store.guard.client
        fields = await r.hkeys(store.keys.user("u1", "recs"))
        plain = await r.exists(store.keys.shared("rc", "k3"))
        return (sorted(fields), plain, await cache.get("k1", "u1"), await cache.get("k1", "u2"),
                await cache.get("k3"))

    fields, plain, hit, other_user, anon = asyncio.run(
        with_cache(redis_url, redis_namespace, scenario))
    assert fields == [b"k1", b"k2"] and plain == 1
    assert hit == PAYLOAD and other_user is None and anon == PAYLOAD


@pytest.mark.parametrize("mode", ["drop", "revalidate"])
def test_invalidation_is_one_call_without_keys_or_scan(redis_deployment, redis_namespace, mode):
    async def scenario(cache: RedisCache, store: RedisStore):
        for i in range(20):
            await cache.set(f"k{i}", "u1", PAYLOAD)
        await cache.set("other", "u2", PAYLOAD)
        await cache.invalidate_user("u3")  # loads the script (NOSCRIPT once per server)
        redis_deployment.reset_stats()
        await cache.invalidate_user("u1")
        calls = {c: redis_deployment.command_calls(c)
                 for c in ("del", "unlink", "keys", "scan", "evalsha", "eval")}
        gets = [await cache.get(f"k{i}", "u1") for i in range(20)]
        return calls, gets, await cache.get("other", "u2")

    calls, gets, other = asyncio.run(with_cache(redis_deployment.url, redis_namespace, scenario,
                                                invalidation=mode))
    assert calls["keys"] == calls["scan"] == calls["unlink"] == 0
    if mode == "drop":
        assert calls["del"] == 1 and calls["evalsha"] + calls["eval"] == 0
        assert gets == [None] * 20
    else:  # the invalidation time goes into the user's hash: every entry reads dirty
        assert calls["del"] == 0 and calls["evalsha"] + calls["eval"] == 1
        assert gets == [{**PAYLOAD, DIRTY_FIELD: True}] * 20
    assert other == PAYLOAD


def test_an_answer_computed_across_an_invalidation_reads_dirty(redis_url, redis_namespace):
    async def scenario(cache: RedisCache, store: RedisStore):
        before = time.monotonic()  # a computation starts ...
        await asyncio.sleep(0.1)
        await cache.invalidate_user("u1")  # ... the user buys something ...
        await cache.set("late", "u1", {**PAYLOAD, STARTED_FIELD: before})  # ... it lands
        await asyncio.sleep(2 * CLOCK_SKEW_S)
        await cache.set("fresh", "u1", {**PAYLOAD, STARTED_FIELD: time.monotonic()})
        r = store.guard.client
        stored = json.loads(await r.hget(store.keys.user("u1", "recs"), "fresh"))
        return await cache.get("late", "u1"), await cache.get("fresh", "u1"), stored

    late, fresh, stored = asyncio.run(with_cache(redis_url, redis_namespace, scenario,
                                                 invalidation="revalidate"))
    assert late == {**PAYLOAD, DIRTY_FIELD: True}
    assert fresh == PAYLOAD
    assert STARTED_FIELD not in stored["v"]  # a start time means nothing in other processes


def test_the_invalidation_time_outlives_an_empty_hash_and_a_full_one(redis_url,
                                                                     redis_namespace):
    async def scenario(cache: RedisCache, store: RedisStore):
        r = store.guard.client
        rkey = store.keys.user("u1", "recs")
        before = time.monotonic()
        await cache.invalidate_user("u1")  # nothing cached yet: a mark that expires
        marked_ttl = await r.pttl(rkey)
        await cache.set("k0", "u1", {**PAYLOAD, STARTED_FIELD: before})
        extended_ttl = await r.pttl(rkey)
        for i in range(1, 12):  # past max_fields: the hash restarts, keeping the mark
            await cache.set(f"k{i}", "u1", {**PAYLOAD, STARTED_FIELD: before})
        return (marked_ttl, extended_ttl, await r.hexists(rkey, INVALIDATED),
                await cache.get("k11", "u1"))

    marked_ttl, extended_ttl, kept, late = asyncio.run(with_cache(
        redis_url, redis_namespace, scenario, invalidation="revalidate", max_fields=8, ttl=600.0))
    assert 0 < marked_ttl <= INVALIDATION_MEMORY_MS
    assert extended_ttl > INVALIDATION_MEMORY_MS  # the entry's TTL (600 s +- 10%)
    assert kept and late == {**PAYLOAD, DIRTY_FIELD: True}


def test_ttl_jitter_is_uniform_within_ten_percent(redis_url, redis_namespace):
    async def scenario(cache: RedisCache, store: RedisStore):
        r = store.guard.client
        ttls = []
        for i in range(400):
            await cache.set(f"a{i}", None, PAYLOAD)
            ttls.append(await r.pttl(store.keys.shared("rc", f"a{i}")) / 1000.0)
        await cache.set("k", "u1", PAYLOAD)
        ttls_user = await r.pttl(store.keys.user("u1", "recs")) / 1000.0
        return ttls, ttls_user

    ttls, user_ttl = asyncio.run(with_cache(redis_url, redis_namespace, scenario, ttl=100.0,
                                            jitter=0.1, rng=random.Random(1)))
    assert 89.0 <= min(ttls) and max(ttls) <= 110.0 and 89.0 <= user_ttl <= 110.0
    assert statistics.mean(ttls) == pytest.approx(100.0, abs=1.0)
    assert statistics.pstdev(ttls) == pytest.approx(20 / 12 ** 0.5, rel=0.15)  # uniform(90, 110)
    deciles = [sum(90 + 2 * d <= t < 92 + 2 * d for t in ttls) for d in range(10)]
    assert min(deciles) >= 20  # 40 expected per bin: no clustering


def test_xfetch_refreshes_early_only_near_expiry(redis_url, redis_namespace):
    now = [1_000_000.0]

    async def scenario(cache: RedisCache, store: RedisStore):
        cache.default_compute_s = 1.0  # d = 1 s
        await cache.set("k", "u1", PAYLOAD)  # expires at now + 100 (jitter 0)
        fresh = [REFRESH_FIELD in (await cache.get("k", "u1")) for _ in range(300)]
        now[0] += 99.9  # 0.1 s before expiry: P(refresh) = exp(-0.1) ~ 0.905
        near = [REFRESH_FIELD in (await cache.get("k", "u1")) for _ in range(600)]
        now[0] += 0.2
        return fresh, near, await cache.get("k", "u1")

    fresh, near, expired = asyncio.run(with_cache(
        redis_url, redis_namespace, scenario, ttl=100.0, jitter=0.0, clock=lambda: now[0],
        rng=random.Random(3)))
    assert not any(fresh)
    assert 0.85 <= sum(near) / len(near) <= 0.96
    assert expired is None  # never served past its expiry


def test_hash_of_one_user_is_bounded(redis_url, redis_namespace):
    async def scenario(cache: RedisCache, store: RedisStore):
        for i in range(50):
            await cache.set(f"k{i}", "u1", PAYLOAD)
        return await store.guard.client.hlen(store.keys.user("u1", "recs"))

    assert asyncio.run(with_cache(redis_url, redis_namespace, scenario, max_fields=8)) <= 8


def test_l2_is_quiet_while_the_circuit_is_open(spare_redis):
    async def scenario():
        store = RedisStore(spare_redis.url, settings_for(spare_redis.url, "down"))
        cache = RedisCache(store, ttl=60.0)
        try:
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await cache.get("k", "u1")
            return await cache.get("k", "u1"), await cache.set("k", "u1", PAYLOAD)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (None, None)


def test_l1_is_bounded_by_entries_and_bytes():
    async def scenario():
        by_entries = LocalCache(max_entries=10, max_bytes=10**9, ttl=60)
        by_bytes = LocalCache(max_entries=10**6, max_bytes=2000, ttl=60)
        for i in range(100):
            await by_entries.set(f"k{i}", f"u{i % 7}", PAYLOAD)
            await by_bytes.set(f"k{i}", f"u{i % 7}", PAYLOAD)
        return by_entries, by_bytes

    by_entries, by_bytes = asyncio.run(scenario())
    assert len(by_entries) == 10 and by_bytes.bytes <= 2000 and len(by_bytes) >= 1
    assert sum(len(v) for v in by_entries._by_user.values()) == 10  # user index bounded too


# --- whole runtimes / apps sharing one Redis ---------------------------------------------------


def test_200_concurrent_requests_for_one_cold_key_compute_once_per_process(
        redis_url, redis_namespace, redis_artifacts):
    model = load_model(redis_artifacts)

    async def process():
        # XFetch off: an early background refresh is a deliberate second computation, and
        # a slow compute on a loaded box makes one likely; this test is about the stampede
        rt = build_runtime(settings_for(redis_url, redis_namespace,
                                        plugins={"l2": {"beta": 0.0}}), model)
        try:
            req = RecommendationRequest(user_id="3", n=10)
            plan = pipeline.default_plan(rt)
            answers = await asyncio.gather(*(pipeline.rank(rt, req, plan) for _ in range(200)))
            return rt.flights.computations, answers
        finally:
            for _, cache in rt.caches:
                if hasattr(cache, "close"):
                    await cache.close()
            await rt.store.close()

    first, answers = asyncio.run(process())
    second, answers2 = asyncio.run(process())  # another "process" (mostly served from L2)
    assert first == 1 and second <= 1
    assert len({str(a["items"]) for a in answers + answers2}) == 1


def _app(url, ns, artifacts, tmp_path, **kw):
    return create_app(settings_for(url, ns, tmp_path, artifacts=artifacts, **kw))


def test_two_servers_share_cached_answers_and_invalidations(redis_url, redis_namespace,
                                                           redis_artifacts, tmp_path):
    with TestClient(_app(redis_url, redis_namespace, redis_artifacts, tmp_path)) as a, \
            TestClient(_app(redis_url, redis_namespace, redis_artifacts, tmp_path)) as b:
        rt_a, rt_b = a.app_state["runtime"], b.app_state["runtime"]
        for rt in (rt_a, rt_b):
            assert a.portal.call(asyncio.wait_for, rt.caches[0][1].following.wait(), 5) is True
        first = a.get("/recommendations", params={"user_id": "5", "n": 5}).json()
        shared = b.get("/recommendations", params={"user_id": "5", "n": 5}).json()
        assert first["cached"] is False and shared["cached"] is True
        assert shared["items"] == first["items"]
        assert len(rt_b.caches[0][1]) == 1  # the L2 hit filled b's L1
        # a purchase seen by worker a: it invalidates every tier of every worker
        bought = first["items"][0]["item_id"]

        async def invalidate():
            await rt_a.store.record_interaction("5", bought, seen=True)
            for _, cache in reversed(rt_a.caches):  # L2 first, then L1 + broadcast
                await cache.invalidate_user("5")

        a.portal.call(invalidate)
        l1_b = rt_b.caches[0][1]
        deadline = time.monotonic() + 1.0
        while not l1_b._dirty and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(l1_b._dirty) == 1  # b's L1 entry is marked (cache.invalidation=revalidate)
        computed = rt_b.flights.computations
        after = b.get("/recommendations", params={"user_id": "5", "n": 5}).json()
        # served from b's L1 minus the purchase, topped up from the spares; recomputed behind
        assert after["cached"] is True and len(after["items"]) == 5
        assert bought not in [i["item_id"] for i in after["items"]]
        deadline = time.monotonic() + 2.0
        while l1_b._dirty and time.monotonic() < deadline:  # until the recompute lands
            time.sleep(0.01)
        assert rt_b.flights.computations == computed + 1 and not l1_b._dirty


def test_a_worker_without_the_answer_revalidates_the_l2_entry(redis_url, redis_namespace,
                                                              redis_artifacts, tmp_path):
    with TestClient(_app(redis_url, redis_namespace, redis_artifacts, tmp_path)) as a:
        first = a.get("/recommendations", params={"user_id": "6", "n": 5}).json()
        bought = first["items"][1]["item_id"]
        rt_a = a.app_state["runtime"]

        async def invalidate():
            await rt_a.store.record_interaction("6", bought, seen=True)
            for _, cache in reversed(rt_a.caches):
                await cache.invalidate_user("6")

        a.portal.call(invalidate)
    # a second worker that never saw user 6: its L1 misses, the L2 entry reads dirty
    with TestClient(_app(redis_url, redis_namespace, redis_artifacts, tmp_path)) as b:
        rt_b = b.app_state["runtime"]
        l1_b = rt_b.caches[0][1]
        after = b.get("/recommendations", params={"user_id": "6", "n": 5}).json()
        assert after["cached"] is True and len(after["items"]) == 5
        assert bought not in [i["item_id"] for i in after["items"]]
        assert [i["item_id"] for i in after["items"]][:4] == [
            i["item_id"] for i in first["items"] if i["item_id"] != bought]
        deadline = time.monotonic() + 2.0
        while rt_b.flights.computations == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt_b.flights.computations == 1  # recomputed behind the revalidated answer
        while not len(l1_b) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(l1_b) == 1 and not l1_b._dirty  # the L1 got the fresh answer, clean


def test_stale_entry_is_served_then_refreshed_in_background(redis_url, redis_namespace,
                                                            redis_artifacts, tmp_path):
    app = create_app(settings_for(redis_url, redis_namespace, tmp_path, tiers=("l2",),
                                  artifacts=redis_artifacts, plugins={"l2": {"beta": 1e9}}))
    with TestClient(app) as c:
        rt = c.app_state["runtime"]
        assert c.get("/recommendations", params={"user_id": "9"}).json()["cached"] is False
        served = c.get("/recommendations", params={"user_id": "9"}).json()
        assert served["cached"] is True and REFRESH_FIELD not in served
        deadline = time.monotonic() + 2
        while rt.flights.computations < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.flights.computations == 2


def test_server_starts_and_recovers_when_redis_is_down_at_start(spare_redis, redis_artifacts,
                                                                tmp_path):
    app = _app(spare_redis.url, "down", redis_artifacts, tmp_path)
    with TestClient(app) as c:
        r = c.get("/recommendations", params={"user_id": "5", "n": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        codes = {c.get("/recommendations", params={"user_id": str(u)}).status_code
                 for u in range(1, 50)}
        assert codes == {200}
        spare_redis.start()
        deadline = time.monotonic() + 5
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/ready").json()["status"] == "ready"
