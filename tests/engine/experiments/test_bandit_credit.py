"""A bandit draws a user again each epoch: an outcome goes to the variant the user was
exposed to last, on the embedded store and on Redis alike."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rankly.engine.config import load_settings
from rankly.engine.experiments import parse_experiment
from rankly.engine.experiments.assignment import Assignment
from rankly.engine.experiments.tracking import make_tracker
from rankly.engine.storage.memory_store import MemoryStore
from rankly.engine.storage.redis_store import RedisStore

BANDIT = parse_experiment({"key": "thompson", "status": "running", "bandit": True,
                           "primary_metric": "ctr",
                           "variants": [{"name": "a"}, {"name": "b"}]})


def _assigned(variant: int) -> Assignment:
    return Assignment(BANDIT, BANDIT.variants[variant], BANDIT.phase, 0.5)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def store_factory(request):
    if request.param == "embedded":
        return MemoryStore
    url = request.getfixturevalue("redis_server").url
    return lambda: RedisStore(url, load_settings(environ={}, store_url=url,
                                                 namespace=f"credit-{uuid.uuid4().hex[:8]}"))


def test_an_outcome_goes_to_the_variant_the_user_saw_last(store_factory):
    async def scenario():
        store = store_factory()
        tracker = make_tracker(store)
        try:
            assert await tracker.expose(_assigned(0), "u")  # epoch 1: arm a
            assert await tracker.expose(_assigned(1), "u")  # epoch 2: drawn into arm b
            credited = await tracker.outcome("u", "click", [BANDIT])
            counts = {c.name: (c.exposures, c.clicks) for c in await tracker.counts(BANDIT)}
            return credited.per_user, counts
        finally:
            await store.close()

    per_user, counts = asyncio.run(scenario())
    assert per_user == [("thompson", 0, "b")]
    assert counts == {"a": (1, 0), "b": (1, 1)}
