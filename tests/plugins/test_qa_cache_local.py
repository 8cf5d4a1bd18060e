"""The L1 tier across a lost subscription to other workers' invalidations."""

from __future__ import annotations

import asyncio
import time

import pytest

from rankly.engine.pipeline.cache import DIRTY_FIELD, STARTED_FIELD
from rankly.plugins.caches.local import LocalCache

PAYLOAD = {"user_id": "u1", "items": [{"item_id": "1", "score": 1.0, "reasons": ["Popular"]}]}


class Broadcasts:
    """A store's invalidation channel driven by the test: ``None`` is a (re)subscription,
    as ``Store.subscribe`` yields it after every reconnect."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def subscribe(self, channel):
        while True:
            yield await self.queue.get()

    async def publish(self, channel, message):
        pass

    async def delivered(self, message: str | None) -> None:
        await self.queue.put(message)
        while not self.queue.empty():
            await asyncio.sleep(0)
        for _ in range(3):  # the follower handles what it took
            await asyncio.sleep(0)


async def following(mode: str) -> tuple[LocalCache, Broadcasts]:
    cache = LocalCache(max_entries=100, max_bytes=10**6, ttl=60, invalidation=mode)
    channel = Broadcasts()
    cache.follow(channel)
    await channel.delivered(None)  # subscribed
    await asyncio.wait_for(cache.following.wait(), 2.0)
    return cache, channel


@pytest.mark.parametrize("mode", ["revalidate", "drop"])
def test_an_answer_computed_before_a_resubscription_is_not_stored_clean(mode):
    # invalidations sent while the subscription was down were missed: an answer whose
    # computation started before the resubscription may hold an item bought meanwhile
    async def scenario():
        cache, channel = await following(mode)
        started = time.monotonic()  # a computation starts; the subscription drops
        await channel.delivered(None)  # resubscribed: what was sent meanwhile is lost
        await cache.set("a", "u1", {**PAYLOAD, STARTED_FIELD: started})
        await cache.set("b", "u1", {**PAYLOAD, STARTED_FIELD: time.monotonic()})
        got = await cache.get("a", "u1"), await cache.get("b", "u1")
        await cache.close()
        return got

    late, fresh = asyncio.run(scenario())
    assert late is None if mode == "drop" else late[DIRTY_FIELD] is True
    assert DIRTY_FIELD not in fresh


def test_an_invalidation_heard_before_a_resubscription_is_remembered():
    async def scenario():
        cache, channel = await following("revalidate")
        started = time.monotonic()
        await channel.delivered("u1")  # the purchase is heard here ...
        await channel.delivered(None)  # ... then the subscription drops and comes back
        await cache.set("a", "u1", {**PAYLOAD, STARTED_FIELD: started})
        got = await cache.get("a", "u1")
        await cache.close()
        return got

    assert asyncio.run(scenario())[DIRTY_FIELD] is True
