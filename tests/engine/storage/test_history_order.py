"""The online history is ordered by event time, on the embedded store and on Redis alike: a
late event (a phone back online, a retried batch) does not count as the user's newest."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from rankly.engine.config import load_settings
from rankly.engine.storage.memory_store import MemoryStore
from rankly.engine.storage.redis_store import RedisStore
from rankly.engine.storage.store import TIMED_ITEMS, Store, history_position

T = 1_700_000_000.0


class Stores:
    """Fresh stores of one kind (Redis: a real server or a 3-master cluster, each store in its
    own namespace), closed in the event loop that used them."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind, self.url = kind, url
        self.opened: list[Store] = []

    def make(self, limit: int = 200) -> Store:
        if self.url is None:
            store: Store = MemoryStore(history_limit=limit)
        else:
            store = RedisStore(self.url, load_settings(
                environ={}, store_url=self.url, namespace=f"order-{uuid.uuid4().hex[:10]}",
                deadlines={"store_ms": 250.0, "request_ms": 2000.0}), history_limit=limit)
        self.opened.append(store)
        return store

    def run(self, scenario):
        async def main():
            try:
                return await scenario()
            finally:
                for store in self.opened:
                    await store.close()
                self.opened.clear()

        return asyncio.run(main())


@pytest.fixture(params=["memory", pytest.param("standalone", marks=pytest.mark.redis),
                        pytest.param("cluster", marks=pytest.mark.redis)])
def stores(request) -> Stores:
    if request.param == "memory":
        return Stores("memory", None)
    deployment = request.getfixturevalue(
        "redis_server" if request.param == "standalone" else "redis_cluster")
    return Stores(request.param, deployment.url)


async def _history(store: Store, rows, user: str = "u") -> tuple[str, ...]:
    for item, ts, *seen in rows:
        await store.record_interaction(user, item, seen=bool(seen and seen[0]), timestamp=ts)
    return (await store.fetch_user(user)).history


def history_of(stores: Stores, rows, limit: int = 200) -> tuple[str, ...]:
    return stores.run(lambda: _history(stores.make(limit), rows))


def test_events_in_order_are_newest_first(stores):
    rows = [("a", T), ("b", T + 1), ("c", T + 2)]
    assert history_of(stores, rows) == ("c", "b", "a")


def test_a_late_event_goes_behind_the_newer_ones(stores):
    rows = [("a", T), ("b", T + 10), ("c", T + 20), ("late", T + 5), ("oldest", T - 1)]
    assert history_of(stores, rows) == ("c", "b", "late", "a", "oldest")


def test_an_item_keeps_the_place_of_its_latest_event(stores):
    rows = [("a", T), ("b", T + 10), ("a", T + 5),  # an older event of a: a stays behind b
            ("c", T + 20), ("b", T + 30)]  # a newer event of b: b moves to the front
    assert history_of(stores, rows) == ("b", "c", "a")


def test_equal_times_keep_arrival_order(stores):
    rows = [("a", T), ("b", T), ("c", T), ("a", T)]
    assert history_of(stores, rows) == ("a", "c", "b")


def test_a_late_seen_event_still_marks_the_item_seen(stores):
    async def scenario(store: Store):
        await _history(store, [("a", T + 10), ("b", T + 20), ("a", T, True)])
        return await store.fetch_user("u")

    user = stores.run(lambda: scenario(stores.make()))
    assert user.history == ("b", "a") and user.seen == frozenset({"a"})


def test_the_bound_drops_the_oldest_events_even_when_they_arrive_last(stores):
    rows = [(f"i{k}", T + k) for k in range(5)] + [("too-late", T - 100), ("mid", T + 2.5)]
    assert history_of(stores, rows, limit=4) == ("i4", "i3", "mid", "i2")


def test_a_very_late_event_goes_right_behind_the_timed_items(stores):
    rows = [(f"i{k}", T + k) for k in range(TIMED_ITEMS + 8)] + [("late", T - 1000)]
    history = history_of(stores, rows)
    assert history[TIMED_ITEMS] == "late" and len(history) == TIMED_ITEMS + 9
    assert history[:TIMED_ITEMS] == tuple(f"i{k}" for k in range(TIMED_ITEMS + 7, 7, -1))


def test_without_a_timestamp_the_event_is_the_newest(stores):
    rows = [("a", T), ("b", T + 1), ("now", None)]
    assert history_of(stores, rows) == ("now", "b", "a")


def test_a_batch_orders_like_the_same_rows_one_by_one(stores):
    rows = [(f"u{n % 3}", f"i{n % 7}", n % 4 == 0, T + (n * 37) % 11) for n in range(60)]

    async def scenario():
        batched, single = stores.make(limit=5), stores.make(limit=5)
        await batched.record_interactions(rows)
        for user, item, seen, ts in rows:
            await single.record_interaction(user + "-1", item, seen=seen, timestamp=ts)
        return ([await batched.fetch_user(f"u{u}") for u in range(3)],
                [await single.fetch_user(f"u{u}-1") for u in range(3)])

    batched, single = stores.run(scenario)
    assert batched == single and all(len(u.history) == 5 for u in batched)


@pytest.mark.redis
def test_a_history_written_before_times_were_kept_needs_no_migration(redis_url,
                                                                     redis_namespace):
    """A list left by an older rankly (no ``times`` hash): its items count as older than
    any event, so new events, late or not, go ahead of them; the list keeps its order."""
    async def scenario():
        store = RedisStore(redis_url, load_settings(environ={}, store_url=redis_url,
                                                    namespace=redis_namespace))
        try:
            key = store.keys.user("old", "history")
            await store.guard.client.rpush(key, "x", "y", "z")  # newest first, as it was
            await store.record_interaction("old", "new", seen=False, timestamp=T + 10)
            await store.record_interaction("old", "late", seen=False, timestamp=T)
            await store.record_interaction("old", "y", seen=False, timestamp=T + 5)
            return (await store.fetch_user("old")).history
        finally:
            await store.close()

    assert asyncio.run(scenario()) == ("new", "y", "late", "x", "z")


@pytest.mark.redis
def test_the_times_hash_stays_within_the_bound(redis_url, redis_namespace):
    async def scenario():
        store = RedisStore(redis_url, load_settings(environ={}, store_url=redis_url,
                                                    namespace=redis_namespace), history_limit=3)
        try:
            await store.record_interactions([("u", f"i{k}", False, T - k) for k in range(10)])
            await store.record_interactions([("v", f"i{k}", False, T + (k % 7) * (-1) ** k)
                                             for k in range(TIMED_ITEMS * 3)])
            r = store.guard.client
            return [(await r.llen(store.keys.user(u, "history")),
                     await r.hlen(store.keys.user(u, "times"))) for u in ("u", "v")]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [(3, 3), (3, 3)]
    store_limit = RedisStore(redis_url, load_settings(environ={}, store_url=redis_url,
                                                      namespace=redis_namespace + "-b"))

    async def long_history():
        try:
            await store_limit.record_interactions(
                [("w", f"i{k}", False, T + (k * 7919) % 101) for k in range(300)])
            r = store_limit.guard.client
            return (await r.llen(store_limit.keys.user("w", "history")),
                    await r.hlen(store_limit.keys.user("w", "times")))
        finally:
            await store_limit.close()

    assert asyncio.run(long_history()) == (200, TIMED_ITEMS)


def test_history_position():
    times = {"a": 30.0, "b": 20.0, "c": 10.0}
    assert history_position(["a", "b", "c"], times, 40.0) == 0
    assert history_position(["a", "b", "c"], times, 20.0) == 1  # ties: ahead (arrived later)
    assert history_position(["a", "b", "c"], times, 15.0) == 2
    assert history_position(["a", "b", "c"], times, 5.0) == 3
    assert history_position(["a", "legacy", "c"], times, 25.0) == 1  # no time: older


@pytest.mark.redis
def test_redis_and_the_embedded_store_keep_the_same_history(redis_server):
    """Random late and repeated events, histories longer than the timed head: the Lua
    script and the embedded store's Python agree row for row."""
    rng = random.Random(5)
    rows = [(f"u{rng.randrange(4)}", f"i{rng.randrange(60)}", rng.random() < 0.2,
             T + rng.randrange(500) + rng.choice([0.0, 0.0005, 0.25])) for _ in range(3000)]
    embedded, on_redis = Stores("memory", None), Stores("standalone", redis_server.url)

    async def histories(stores: Stores):
        store = stores.make(limit=45)
        await store.record_interactions(rows)
        return [await store.fetch_user(f"u{u}") for u in range(4)]

    assert embedded.run(lambda: histories(embedded)) == on_redis.run(
        lambda: histories(on_redis))
