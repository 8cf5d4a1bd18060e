"""RedisStore and the client factory, on standalone Redis and on a 3-master cluster."""

from __future__ import annotations

import asyncio
import time

import pytest

from rankly.engine.config import load_settings
from rankly.engine.storage.memory_store import MemoryStore
from rankly.engine.storage.opening import open_store
from rankly.engine.storage.redis_client import (
    CircuitOpen,
    GuardedRedis,
    make_redis,
    make_redis_sync,
    parse_url,
    redact,
)
from rankly.engine.storage.redis_store import RedisStore
from rankly.engine.storage.store import EMPTY_USER, StoreUnavailable

pytestmark = pytest.mark.redis


def settings_for(url: str, namespace: str, relaxed: bool = True, **kw):
    if relaxed:  # a loaded CI box; the deadline tests below pass relaxed=False
        kw.setdefault("deadlines", {"store_ms": 250.0, "request_ms": 2000.0})
    return load_settings(environ={}, store_url=url, namespace=namespace, **kw)


def run(coro):
    return asyncio.run(coro)


async def with_store(url: str, ns: str, fn):
    store = RedisStore(url, settings_for(url, ns))
    try:
        return await fn(store)
    finally:
        await store.close()


def test_open_store_picks_redis_for_redis_urls(redis_url, redis_namespace):
    store = open_store(settings_for(redis_url, redis_namespace))
    assert isinstance(store, RedisStore) and store.kind == "redis"
    assert isinstance(open_store(load_settings(environ={})), MemoryStore)


def test_ping(redis_url, redis_namespace):
    assert run(with_store(redis_url, redis_namespace, lambda s: s.ping())) is True


def test_unknown_user_is_empty(redis_url, redis_namespace):
    assert run(with_store(redis_url, redis_namespace, lambda s: s.fetch_user("nobody"))) \
        == EMPTY_USER


def test_history_is_most_recent_first_deduplicated_and_bounded(redis_url, redis_namespace):
    async def scenario(store: RedisStore):
        store.history_limit = 5
        for item in ["a", "b", "c", "a", "d", "e", "f", "g"]:
            await store.record_interaction("u1", item, seen=item in "ab")
        return await store.fetch_user("u1")

    user = run(with_store(redis_url, redis_namespace, scenario))
    assert user.history == ("g", "f", "e", "d", "a")
    assert user.seen == frozenset({"a", "b"})


def test_a_batch_of_interactions_equals_them_one_by_one(redis_url, redis_namespace):
    rows = [(f"u{n % 7}", f"i{n % 11}", n % 3 == 0) for n in range(1200)]  # 3 pipelines

    async def scenario(store: RedisStore):
        store.history_limit = 5
        await store.record_interactions(rows)
        batched = [await store.fetch_user(f"u{u}") for u in range(7)]
        for u in range(7):
            await store.guard.client.delete(*(store.keys.user(f"u{u}", kind)
                                              for kind in ("history", "seen", "times")))
        for user_id, item_id, seen in rows:
            await store.record_interaction(user_id, item_id, seen=seen)
        return batched, [await store.fetch_user(f"u{u}") for u in range(7)]

    batched, one_by_one = run(with_store(redis_url, redis_namespace, scenario))
    assert batched == one_by_one
    assert all(len(u.history) == 5 and u.seen for u in batched)


@pytest.mark.parametrize("days", [180.0, 0.0])
def test_online_state_expires_after_the_users_last_interaction(redis_url, redis_namespace, days):
    async def scenario():
        store = RedisStore(redis_url, settings_for(redis_url, redis_namespace, plugins={
            "redis": {"user_state_ttl_days": days}}))
        try:
            await store.record_interaction("u1", "a", seen=True)  # one by one
            await store.record_interactions([("u2", "b", True), ("u2", "c", False)])  # batched
            r = store.guard.client
            return [await r.pttl(store.keys.user(u, part))
                    for u in ("u1", "u2") for part in ("history", "seen", "times")]
        finally:
            await store.close()

    ttls = run(scenario())
    if days:
        assert all(179 * 86_400_000 < t <= 180 * 86_400_000 for t in ttls), ttls
    else:
        assert ttls == [-1] * 6  # kept forever


def test_a_negative_user_state_ttl_is_a_configuration_error(redis_url, redis_namespace):
    from rankly.engine.config import ConfigError

    with pytest.raises(ConfigError, match="user_state_ttl_days"):
        RedisStore(redis_url, settings_for(redis_url, redis_namespace, plugins={
            "redis": {"user_state_ttl_days": -1}}))


def test_fetch_user_is_one_round_trip(redis_url, redis_namespace, redis_deployment):
    async def scenario(store: RedisStore):
        await store.record_interaction("u1", "i1", seen=True)
        calls = []
        client = store.guard.client
        original = client.pipeline

        def counting_pipeline(*a, **kw):
            pipe = original(*a, **kw)
            execute = pipe.execute

            async def counted(*ea, **ekw):
                calls.append(len(pipe))
                return await execute(*ea, **ekw)

            pipe.execute = counted
            return pipe

        client.pipeline = counting_pipeline
        user = await store.fetch_user("u1")
        return user, calls

    user, calls = run(with_store(redis_url, redis_namespace, scenario))
    assert user.history == ("i1",)
    assert calls == [2]  # one pipeline of LRANGE + SMEMBERS, both in the user's slot


@pytest.mark.parametrize("uid", ["{u:victim}", "victim}:x", "v:ictim", "%7Bu%3Avictim%7D",
                                 "victim\x00", "😀", "a" * 300])
def test_hostile_ids_never_touch_another_users_keys(redis_url, redis_namespace, uid):
    async def scenario(store: RedisStore):
        await store.record_interaction("victim", "secret", seen=True)
        await store.record_interaction(uid, "attack", seen=True)
        return await store.fetch_user("victim"), await store.fetch_user(uid)

    victim, attacker = run(with_store(redis_url, redis_namespace, scenario))
    assert victim.history == ("secret",) and attacker.history == ("attack",)


def test_namespaces_are_isolated(redis_url, redis_namespace):
    async def scenario():
        a = RedisStore(redis_url, settings_for(redis_url, redis_namespace + "a"))
        b = RedisStore(redis_url, settings_for(redis_url, redis_namespace + "b"))
        try:
            await a.record_interaction("u", "x", seen=False)
            return await b.fetch_user("u")
        finally:
            await a.close()
            await b.close()

    assert run(scenario()) == EMPTY_USER


def test_publish_reaches_subscribers_in_other_clients(redis_url, redis_namespace):
    async def scenario():
        sub = RedisStore(redis_url, settings_for(redis_url, redis_namespace))
        pub = RedisStore(redis_url, settings_for(redis_url, redis_namespace))
        got: list[str | None] = []
        stream = sub.subscribe("invalidate")
        try:
            got.append(await anext(stream))  # None: subscribed
            await pub.publish("invalidate", "user-7")
            got.append(await asyncio.wait_for(anext(stream), 5))
        finally:
            await stream.aclose()
            await sub.close()
            await pub.close()
        return got

    assert run(scenario()) == [None, "user-7"]


def test_sync_client_for_cli_tools(redis_url, redis_namespace):
    client = make_redis_sync(redis_url, settings_for(redis_url, redis_namespace))
    try:
        client.set(f"{redis_namespace}:probe", b"1")
        assert client.get(f"{redis_namespace}:probe") == b"1"
    finally:
        client.close()


# --- URLs and the breaker ---------------------------------------------------------------------


def test_cluster_urls_parse_with_credentials():
    t = parse_url("rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001?ssl_cert_reqs=none")
    assert t.cluster and t.tls and t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (t.username, t.password) == ("app", "p@ss")
    assert "p@ss" not in repr(t) and "p%40ss" not in redact("redis://app:p%40ss@h:1")
    assert not parse_url("unix:///run/redis.sock").cluster
    assert parse_url("redis://h:1", cluster=True).nodes == (("h", 1),)


def test_request_path_clients_use_the_store_deadline():
    s = load_settings(environ={})
    client = make_redis("redis://127.0.0.1:1/0", s)
    kw = client.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == pytest.approx(0.030)
    assert kw["socket_connect_timeout"] == pytest.approx(0.030)
    assert client.get_retry().get_retries() == 1


def test_dead_redis_fails_fast_and_opens_the_breaker(spare_redis):
    url = spare_redis.url
    settings = settings_for(url, "dead", relaxed=False)

    async def scenario():
        store = RedisStore(url, settings)
        try:
            start = time.perf_counter()
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.fetch_user("u")
            first = time.perf_counter() - start
            assert store.guard.breaker.state == "open"
            start = time.perf_counter()
            with pytest.raises(CircuitOpen):
                await store.fetch_user("u")
            return first, time.perf_counter() - start
        finally:
            await store.close()

    five_failures, open_call = run(scenario())
    assert five_failures < 5 * 0.2  # each failure within its 2 x 30 ms deadline (+ slack)
    assert open_call < 0.005


def test_breaker_probes_redis_back(spare_redis):
    server = spare_redis
    url = server.url

    async def scenario():
        store = RedisStore(url, settings_for(url, "probe"))
        store.guard.breaker.cooldown = 0.2
        try:
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.fetch_user("u")
            assert store.guard.breaker.state == "open"
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.25)
            assert await store.fetch_user("u") == EMPTY_USER  # the probe
            return store.guard.breaker.state
        finally:
            await store.close()

    assert run(scenario()) == "closed"


def test_frozen_redis_call_is_cut_at_the_deadline(redis_server, redis_namespace):
    async def scenario():
        store = RedisStore(redis_server.url,
                           settings_for(redis_server.url, redis_namespace, relaxed=False))
        try:
            await store.ping()
            redis_server.servers[0].cli("CLIENT", "PAUSE", "300", "ALL")
            start = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.fetch_user("u")
            return time.perf_counter() - start
        finally:
            await asyncio.sleep(0.35)
            await store.close()

    assert run(scenario()) < 0.2  # request deadline, not redis-py's 5 s default


def _cancelled_call(guard: GuardedRedis) -> None:
    """One guarded call that hangs until the caller cancels it (a request's deadline)."""

    async def hang(_):
        await asyncio.sleep(10)

    async def scenario():
        task = asyncio.create_task(guard.run(hang, deadline_s=10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_a_call_cancelled_from_outside_does_not_open_the_breaker():
    # requests that run out of time elsewhere (slow scoring) cancel their Redis calls: that
    # says nothing about Redis, so a healthy Redis is not cut off
    settings = load_settings(environ={})
    guard = GuardedRedis(make_redis("redis://127.0.0.1:1/0", settings), settings)
    for _ in range(guard.breaker.threshold + 2):
        _cancelled_call(guard)
    assert guard.breaker.state == "closed" and guard.breaker.failures == 0


def test_a_cancelled_probe_gives_its_turn_back():
    settings = load_settings(environ={})
    guard = GuardedRedis(make_redis("redis://127.0.0.1:1/0", settings), settings)
    guard.breaker.threshold = 1
    guard.breaker.cooldown = 0.0
    guard.breaker.failure()
    assert guard.breaker.state == "open"
    _cancelled_call(guard)  # it was the probe
    assert guard.breaker.state == "open"
    assert guard.breaker.allow() and guard.breaker.state == "half_open"  # the next one probes


def test_own_deadline_still_counts_as_a_failure():
    settings = load_settings(environ={})
    guard = GuardedRedis(make_redis("redis://127.0.0.1:1/0", settings), settings)
    guard.breaker.threshold = 1

    async def hang(_):
        await asyncio.sleep(10)

    async def scenario():
        with pytest.raises(StoreUnavailable):
            await guard.run(hang, deadline_s=0.01)

    run(scenario())
    assert guard.breaker.state == "open"
