"""The L1 and L2 tiers together on a real Redis: what one tier hands the other."""

from __future__ import annotations

import asyncio

import pytest

from rankly.engine import pipeline
from rankly.engine.config import load_settings
from rankly.engine.model import load_model
from rankly.engine.runtime import build_runtime
from rankly.engine.types import RecommendationRequest

pytestmark = pytest.mark.redis


def settings_for(url, ns, **kw):
    return load_settings(environ={}, store_url=url, namespace=ns,
                         cache={"tiers": ["l1", "l2"]},
                         deadlines={"store_ms": 1000.0, "request_ms": 5000.0},
                         # invalidations are handed to the L1 by the test, in a known order
                         plugins={"l1": {"follow_invalidations": False},
                                  "l2": {"beta": 0.0}}, **kw)


async def closed(rt) -> None:
    for _, cache in rt.caches:
        if hasattr(cache, "close"):
            await cache.close()
    await rt.store.close()


def ids(resp):
    return [it["item_id"] for it in resp["items"]]


def test_an_l2_answer_filled_into_the_l1_after_the_users_invalidation_is_revalidated(
        redis_server, redis_namespace, redis_artifacts):
    # A purchase on another worker reaches this worker's L1 (pub/sub) before that worker
    # marks the user's L2 hash: a request here in between reads the L2 entry clean and
    # fills the L1 with it. Once the purchase is acknowledged, the L1 must not serve it.
    model = load_model(redis_artifacts)

    async def scenario():
        rt = build_runtime(settings_for(redis_server.url, redis_namespace), model)
        try:
            (_, l1), (_, l2) = rt.caches
            req = RecommendationRequest(user_id="7", n=5, request_id="t")
            plan = pipeline.default_plan(rt)
            first = await pipeline.rank(rt, req, plan)
            bought = ids(first)[0]
            await l1.clear()  # a worker that never computed this answer
            await rt.store.record_interaction("7", bought, seen=True)
            l1.drop_user("7")  # the broadcast arrives here first
            between = await pipeline.rank(rt, req, plan)  # L2 still clean: fills the L1
            await l2.invalidate_user("7")  # then the L2 is marked: the event is acknowledged
            after = await pipeline.rank(rt, req, plan)
            return first, between, after, bought
        finally:
            await closed(rt)

    first, between, after, bought = asyncio.run(scenario())
    assert between["cached"] is True and ids(between) == ids(first)  # before the ack: fine
    assert bought not in ids(after) and len(after["items"]) == 5


def test_an_l2_answer_of_a_user_never_invalidated_fills_the_l1_clean(
        redis_server, redis_namespace, redis_artifacts):
    model = load_model(redis_artifacts)

    async def scenario():
        rt = build_runtime(settings_for(redis_server.url, redis_namespace), model)
        try:
            (_, l1), _ = rt.caches
            req = RecommendationRequest(user_id="8", n=5, request_id="t")
            plan = pipeline.default_plan(rt)
            await pipeline.rank(rt, req, plan)
            await l1.clear()  # a worker that never computed this answer
            filled = await pipeline.rank(rt, req, plan)  # from the L2, into the L1
            return filled, set(l1._dirty), len(l1), rt.flights.computations
        finally:
            await closed(rt)

    filled, dirty, entries, computations = asyncio.run(scenario())
    assert filled["cached"] is True and entries == 1
    assert not dirty and computations == 1
