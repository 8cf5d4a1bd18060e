"""The cache tiers behind the request path: what an answer served from a tier may hold."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from rankly.engine import pipeline
from rankly.engine.runtime import build_runtime
from rankly.engine.serving.app import create_app
from rankly.engine.types import RecommendationRequest

from .test_pipeline import purchase


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(model, settings_for):
    settings = settings_for(model.path, deadlines={"request_ms": 5000},
                            cache={"ttl_seconds": 60, "jitter": 0.0},
                            plugins={"l1": {"stale_seconds": 30}})
    return build_runtime(settings, model)


def rank(rt, **fields):
    fields.setdefault("n", 10)
    req = RecommendationRequest(request_id="t", **fields)
    return asyncio.run(pipeline.rank(rt, req, pipeline.default_plan(rt)))


def ids(resp):
    return [it["item_id"] for it in resp["items"]]


def test_a_purchase_is_not_served_again_from_an_expired_answer_served_stale(runtime):
    (_, l1), = runtime.caches
    clock = l1.clock = Clock()
    first = rank(runtime, user_id="31")
    bought = ids(first)[0]
    clock.now += 61  # expired, inside the stale window: served while it refreshes
    purchase(runtime, "31", bought)
    again = rank(runtime, user_id="31")
    assert again["cached"] is True
    assert bought not in ids(again) and len(again["items"]) == 10


TOKEN = "qa-cache-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_an_experiment_variant_put_with_new_options_is_not_served_its_old_answers(
        artifacts, settings_for):
    def experiment(cap):
        variant = {"options": {"diversity": {"cap": cap}}}
        return {"key": "caps", "status": "running",
                "variants": [{"name": "a", **variant}, {"name": "b", **variant}]}

    def recommend(client):
        return client.get("/recommendations", params={"user_id": "3", "n": 10}).json()

    with TestClient(create_app(settings_for(artifacts, admin_token=TOKEN))) as client:
        assert client.put("/experiments/caps", json=experiment(1),
                          headers=AUTH).status_code == 201
        expected = recommend(client)  # what the variant serves with a cap of 1
    with TestClient(create_app(settings_for(artifacts, admin_token=TOKEN))) as client:
        assert client.put("/experiments/caps", json=experiment(10),
                          headers=AUTH).status_code == 201
        loose = recommend(client)
        assert client.put("/experiments/caps", json=experiment(1),
                          headers=AUTH).status_code == 200
        capped = recommend(client)
    assert loose["variant"] == capped["variant"] == expected["variant"]
    assert ids(loose) != ids(expected)  # the options change the answer
    assert ids(capped) == ids(expected) and capped["cached"] is False


@pytest.mark.parametrize("spares", [3, 0])
def test_a_request_joining_a_computation_begun_before_a_purchase_does_not_get_the_item(
        runtime, spares):
    """R1 computes u's answer from a store read taken before u's purchase; the purchase is
    acknowledged; R2 then asks for the same key and joins R1's computation. R2 must not be
    handed the purchased item: it is checked like a dirty entry (topped up from the spare
    items), or computed afresh when too few spares are left."""
    from rankly.engine.pipeline import cache

    items = [{"item_id": str(i), "score": float(-i), "reasons": []} for i in range(1, 6)]
    release, read = asyncio.Event(), asyncio.Event()
    calls = []

    async def compute():
        calls.append(1)
        seen = (await runtime.store.fetch_user("u")).seen  # the store read comes first
        if len(calls) == 1:
            read.set()
            await release.wait()  # R1: still computing when the purchase lands
        ranked = [i for i in items if i["item_id"] not in seen]
        return cache.Computed({"user_id": "u", "items": ranked[:3]},
                              spares=ranked[3:3 + spares])

    async def scenario():
        r1 = asyncio.create_task(cache.cached_answer(runtime, "k", "u", compute))
        await read.wait()  # R1's computation has read the store
        await runtime.store.record_interaction("u", "1", seen=True)
        for _, tier in runtime.caches:
            await tier.invalidate_user("u")
        r2 = asyncio.create_task(cache.cached_answer(runtime, "k", "u", compute))
        for _ in range(20):  # no I/O anywhere: R2 misses the L1 and joins the flight
            await asyncio.sleep(0)
        assert len(calls) == 1 and not r2.done()
        release.set()
        return await r1, await r2

    (first, _), (joined, cached) = asyncio.run(scenario())
    assert [i["item_id"] for i in first["items"]] == ["1", "2", "3"]  # asked before it
    assert cached is False and "1" not in [i["item_id"] for i in joined["items"]]
    assert len(joined["items"]) == 3 if spares else len(calls) == 2
