"""The in-process L1 tier's invalidation modes: "drop" and "revalidate" (dirty marks)."""

from __future__ import annotations

import asyncio
import time
from unittest.mock import ANY

import pytest

from rankly.engine.pipeline.cache import DIRTY_FIELD, REFRESH_FIELD, STARTED_FIELD
from rankly.engine.storage.memory_store import MemoryStore
from rankly.plugins.caches.local import LocalCache

PAYLOAD = {"user_id": "u1", "items": [{"item_id": "1", "score": 1.0, "reasons": ["Popular"]}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(invalidation: str, clock: Clock | None = None) -> LocalCache:
    return LocalCache(max_entries=100, max_bytes=10**6, ttl=60, jitter=0.0, stale=6.0,
                      clock=clock or Clock(), invalidation=invalidation)


def test_drop_removes_every_entry_of_the_user_and_only_theirs():
    async def scenario():
        cache = make("drop")
        for key, user in (("a", "u1"), ("b", "u1"), ("c", "u2")):
            await cache.set(key, user, PAYLOAD)
        await cache.invalidate_user("u1")
        return [await cache.get(k, u) for k, u in (("a", "u1"), ("b", "u1"), ("c", "u2"))]

    assert asyncio.run(scenario()) == [None, None, PAYLOAD]


def test_revalidate_marks_the_users_entries_until_their_next_set():
    async def scenario():
        cache = make("revalidate")
        for key, user in (("a", "u1"), ("b", "u1"), ("c", "u2")):
            await cache.set(key, user, PAYLOAD)
        await cache.invalidate_user("u1")
        marked = [await cache.get(k, u) for k, u in (("a", "u1"), ("b", "u1"), ("c", "u2"))]
        await cache.set("a", "u1", {**PAYLOAD, "items": []})  # the recompute lands
        return marked, await cache.get("a", "u1"), await cache.get("b", "u1"), cache

    marked, a, b, cache = asyncio.run(scenario())
    assert marked == [{**PAYLOAD, DIRTY_FIELD: True}] * 2 + [PAYLOAD]
    assert a == {**PAYLOAD, "items": []}  # clean again
    assert b == {**PAYLOAD, DIRTY_FIELD: True}
    assert DIRTY_FIELD not in PAYLOAD  # the stored value itself is never marked
    assert cache._dirty == {"b"}


def test_a_dirty_entry_still_expires_with_its_ttl():
    clock = Clock()

    async def scenario():
        cache = make("revalidate", clock)
        await cache.set("a", "u1", PAYLOAD)
        await cache.invalidate_user("u1")
        clock.now += 61  # past the TTL, within the stale window: due for refresh
        in_grace = await cache.get("a", "u1")
        clock.now += 10  # past the stale window
        return in_grace, await cache.get("a", "u1"), cache

    in_grace, gone, cache = asyncio.run(scenario())
    assert in_grace[REFRESH_FIELD] is True
    assert gone is None and not cache._dirty and cache.bytes == 0


def test_eviction_and_clear_forget_dirty_marks():
    async def scenario():
        cache = LocalCache(max_entries=2, max_bytes=10**6, ttl=60, invalidation="revalidate")
        await cache.set("a", "u1", PAYLOAD)
        await cache.invalidate_user("u1")
        await cache.set("b", "u2", PAYLOAD)
        await cache.set("c", "u3", PAYLOAD)  # evicts "a"
        evicted = set(cache._dirty)
        await cache.set("d", "u4", PAYLOAD)
        await cache.invalidate_user("u4")
        await cache.clear()
        return evicted, set(cache._dirty)

    assert asyncio.run(scenario()) == (set(), set())


def test_another_workers_invalidation_marks_entries_here():
    async def scenario():
        store = MemoryStore()
        here, there = make("revalidate"), make("revalidate")
        here.follow(store)
        there.follow(store)
        await here.get("a", "u1")  # starts the followers (a (re)subscription clears the L1)
        await there.get("a", "u1")
        await asyncio.wait_for(here.following.wait(), 2.0)
        await asyncio.wait_for(there.following.wait(), 2.0)
        await here.set("a", "u1", PAYLOAD)
        await there.invalidate_user("u1")
        for _ in range(100):
            if here._dirty:
                break
            await asyncio.sleep(0.01)
        got = await here.get("a", "u1")
        await here.close()
        await there.close()
        return got

    assert asyncio.run(scenario()) == {**PAYLOAD, DIRTY_FIELD: True}


def test_an_unknown_invalidation_mode_is_refused():
    with pytest.raises(ValueError, match="invalidation"):
        make("sometimes")


@pytest.mark.parametrize("mode", ["revalidate", "drop"])
def test_an_answer_computed_before_the_users_invalidation_is_not_stored_clean(mode):
    async def scenario():
        cache = make(mode)
        before = time.monotonic()  # a computation starts ...
        await cache.invalidate_user("u1")  # ... the user buys something meanwhile ...
        await cache.set("a", "u1", {**PAYLOAD, STARTED_FIELD: before})  # ... and it lands
        after = time.monotonic()
        await cache.set("b", "u1", {**PAYLOAD, STARTED_FIELD: after})  # started after: clean
        await cache.set("c", "u2", {**PAYLOAD, STARTED_FIELD: before})  # another user: clean
        return [await cache.get(k, u) for k, u in (("a", "u1"), ("b", "u1"), ("c", "u2"))]

    late, fresh, other = asyncio.run(scenario())
    assert late == (None if mode == "drop" else {**PAYLOAD, STARTED_FIELD: ANY, DIRTY_FIELD: True})
    assert DIRTY_FIELD not in fresh and DIRTY_FIELD not in other


def test_invalidation_times_are_forgotten_after_the_memory(monkeypatch):
    from rankly.plugins.caches import local

    cache = make("revalidate")
    now = [1000.0]
    monkeypatch.setattr(local.time, "monotonic", lambda: now[0])
    for user in range(100):
        asyncio.run(cache.invalidate_user(f"u{user}"))
        now[0] += 1.0
    assert len(cache._invalidated) <= local.INVALIDATION_MEMORY_S + 2
    assert "u99" in cache._invalidated and "u0" not in cache._invalidated


def test_an_answer_too_large_to_keep_does_not_leave_the_one_it_replaces():
    async def scenario():
        cache = LocalCache(max_entries=100, max_bytes=400, ttl=60, invalidation="drop")
        await cache.set("k", "u1", PAYLOAD)
        big = {**PAYLOAD, "items": PAYLOAD["items"] * 20}  # over max_bytes: not kept
        await cache.set("k", "u1", big)
        return await cache.get("k", "u1"), cache.bytes

    assert asyncio.run(scenario()) == (None, 0)
