"""The cache tiers behind the request path: what an answer served from a tier may hold."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from rankly.engine import pipeline
from rankly.engine.runtime import build_runtime
from rankly.engine.serving.app import create_app
from rankly.engine.types import RecommendationRequest


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


def purchase(rt, user_id, item_id):
    """What the events service does for a purchase: project it, then invalidate the user."""
    async def go():
        await rt.store.record_interaction(user_id, item_id, seen=True)
        for _, cache in rt.caches:
            await cache.invalidate_user(user_id)
    asyncio.run(go())


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
