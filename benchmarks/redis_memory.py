"""Measure Redis memory per user (online state + cached answers), per item (model version) and
per event in the partitioned event log, and the Redis CPU time of the events projection's
user-state script per event (``INFO commandstats``).

Usage: python benchmarks/redis_memory.py --redis redis://127.0.0.1:6379/0 [--users 20000]
       [--events 200000 --partitions 16]
Writes through the real RedisStore / RedisCache / RedisStreamLog code paths into a scratch
namespace, reads INFO memory before and after, extrapolates to one million, then deletes what
it wrote (FLUSHDB: give it a scratch Redis). The event log is measured twice: stream entries
plus their idempotency keys (an event within the idempotency window, 24 h by default), then
the stream entries alone (the keys deleted: an event older than the window).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time

import numpy as np

from rankly.engine.config import CacheSettings, load_settings
from rankly.engine.pipeline.cache import SPARE_FIELD, STARTED_FIELD
from rankly.engine.storage.redis_store import RedisStore
from rankly.plugins.caches.redis import RedisCache


async def used(r) -> int:
    return int((await r.info("memory"))["used_memory"])


def payload(n: int, spares: int = CacheSettings().spare_items) -> dict:
    """A cached answer as the pipeline stores it: n items, plus the spare items that top up a
    revalidated slate and the computation's start time (the L2 keeps the spares)."""
    def item(i: int) -> dict:
        return {"item_id": str(1000 + i), "score": 1.234567,
                "reasons": ["Because you liked Classic Novel #12"]}

    return {"user_id": "u", "items": [item(i) for i in range(n)],
            "variant": None, "experiment": None, "model_version": "20250101T000000-abcdef12",
            "fallback": None, SPARE_FIELD: [item(n + i) for i in range(spares)],
            STARTED_FIELD: time.monotonic()}


async def main(url: str, users: int, history: int, answers: int, n: int, items: int) -> None:
    s = load_settings(environ={}, store_url=url, namespace="memtest")
    store = RedisStore(url, s)
    cache = RedisCache(store, ttl=3600)
    r = store.background.client
    await r.flushdb()
    base = await used(r)
    now = time.time()
    await r.config_resetstat()
    for start in range(0, users, 100):  # through the events projection's write path
        rows = [(str(u), str(100000 + (u * 7 + k) % 50000), True, now - history + k)
                for u in range(start, min(start + 100, users)) for k in range(history)]
        await store.record_interactions(rows)
    state = await used(r) - base
    script_us = (await r.info("commandstats"))["cmdstat_eval"]["usec_per_call"]
    body = payload(n)
    for u in range(users):
        for a in range(answers):
            await cache.set(f"{a:024x}", str(u), body)
    recs = await used(r) - base - state
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    for arr in (rng.normal(size=(items, 64)).astype(np.float32),  # ALS item factors
                rng.integers(0, items, (items, 50)).astype(np.int32),  # itemknn neighbours
                rng.random((items, 50)).astype(np.float32), rng.random(items).astype(np.float32)):
        np.save(buf, arr, allow_pickle=False)
    await r.set("memtest:model:blob", buf.getvalue())
    model = await used(r) - base - state - recs
    await r.flushdb()
    await store.close()
    m = 1_000_000
    print(json.dumps({
        "users_measured": users, "history_len": history, "cached_answers_per_user": answers,
        "items_per_answer": n, "items_measured": items,
        "online_state_MiB_per_million_users": round(state / users * m / 2**20, 1),
        "projection_script_us_per_event": script_us,  # Redis CPU of one user-state write
        "l2_cache_MiB_per_million_users": round(recs / users * m / 2**20, 1),
        "model_MiB_per_million_items": round(model / items * m / 2**20, 1),
    }, indent=2))


async def event_log(url: str, events: int, users: int, partitions: int) -> None:
    """Memory of ``events`` click events from ``users`` users in ``partitions`` streams."""
    from rankly.engine.events.log import RedisStreamLog
    from rankly.engine.events.values import Event

    s = load_settings(environ={}, store_url=url, namespace="memtest",
                      events={"partitions": partitions})
    store = RedisStore(url, s)
    log = RedisStreamLog(store, s)
    r = store.background.client
    await r.flushdb()
    base = await used(r)
    rng = np.random.default_rng(1)
    user_of = rng.integers(0, users, events)
    item_of = rng.integers(0, 50_000, events)
    now = time.time()
    for start in range(0, events, 1000):
        await log.append([Event(f"{i:016x}", str(user_of[i]), str(item_of[i]), "click",
                                now + i / 1000) for i in range(start, min(start + 1000, events))])
    total = await used(r) - base
    async for key in r.scan_iter(match="memtest:{ev:*}:evt:*", count=10_000):
        await r.unlink(key)
    streams = await used(r) - base
    await r.flushdb()
    await store.close()
    m = 1_000_000
    print(json.dumps({
        "events_measured": events, "users": users, "partitions": partitions,
        "event_log_MiB_per_million_events_within_window": round(total / events * m / 2**20, 1),
        "event_log_MiB_per_million_events_streams_only": round(streams / events * m / 2**20, 1),
        "idempotency_keys_MiB_per_million_events": round((total - streams) / events * m / 2**20,
                                                         1),
    }, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis", required=True)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--answers", type=int, default=2)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--items", type=int, default=100000)
    p.add_argument("--events", type=int, default=0, help="also measure the event log")
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--skip-users", action="store_true", help="only the event log")
    a = p.parse_args()
    if not a.skip_users:
        asyncio.run(main(a.redis, a.users, a.history, a.answers, a.n, a.items))
    if a.events:
        asyncio.run(event_log(a.redis, a.events, a.users, a.partitions))
