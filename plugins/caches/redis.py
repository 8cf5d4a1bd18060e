"""Redis L2 cache: per-user hashes (one call invalidates a user), jittered TTLs, XFetch."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from rankly.engine.api import (
    CacheEntry,
    ComponentContext,
    StoreUnavailable,
    check_invalidation,
    hookimpl,
)

if TYPE_CHECKING:
    from rankly.engine.api import AsyncRedis

#: The hash field that holds the user's last invalidation time (wall clock, seconds); cache
#: keys are hex digests, so it never collides with one.
INVALIDATED = "~inv"
#: Workers' clocks are assumed to agree within this (NTP): an entry whose computation started
#: less than this after the user's last invalidation is treated as computed before it.
CLOCK_SKEW_S = 0.05
#: How long a user's invalidation time is kept when the user has no cached answer (longer
#: than any computation can last, so a late write is still seen as late).
INVALIDATION_MEMORY_MS = 60_000
#: While Redis cannot take writes, a failed write is said once per this many seconds: a
#: refusal (out of memory) does not open the breaker, so every miss would otherwise log a
#: traceback for as long as it lasts.
WRITE_WARNING_S = 10.0

log = logging.getLogger("rankly.cache")

# KEYS: the user's recs hash. ARGV: field, entry, ttl ms, max fields. One slot, atomic. When
# the hash is full it restarts with the newest entry, keeping the invalidation time.
SET_USER_ENTRY = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4]) then
  local inv = redis.call('HGET', KEYS[1], '~inv')
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if inv then redis.call('HSET', KEYS[1], '~inv', inv) end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS: the user's recs hash. ARGV: now (wall seconds), memory ms. Marks every entry of the
# user as computed before now, in one call; a hash made only for the mark expires.
MARK_INVALIDATED = """
redis.call('HSET', KEYS[1], '~inv', ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class RedisCache:
    """The L2 tier shared by every worker.

    Layout: a user's entries are fields of one hash ``<ns>:{u:<id>}:recs`` (field = cache key),
    so :meth:`invalidate_user` is one call on one key, never KEYS/SCAN: a ``DEL``
    (``invalidation="drop"``) or, by default (``"revalidate"``), the time of the invalidation
    written into the hash (field ``~inv``). A read returns an entry whose computation started
    before that time marked dirty (``CacheEntry.dirty``, see ``pipeline.cache.revalidate``), so a
    computation that straddles the invalidation cannot write back a clean stale answer.
    Entries without a user are plain keys ``<ns>:rc:<cache key>``. A write gives the entry a
    TTL of ``ttl * (1 +- jitter)`` (uniform), so keys written together do not expire
    together; a user's hash lives as long as its longest-lived entry. Redis 7.0 hashes have
    no per-field TTL, so each entry also stores its own expiry and is ignored once past it; a
    hash holds at most ``max_fields`` entries (when exceeded it restarts with the newest, and
    keeps the invalidation time). The invalidation compares clocks across workers: they are
    assumed to agree within ``CLOCK_SKEW_S`` (NTP).

    Early refresh (XFetch, Vattani et al. 2015): an entry stores ``d``, the seconds it took to
    compute (measured from this worker's miss to its write), and ``e``, its expiry. A read at
    time ``t`` returns the value marked for refresh when ``t - d * beta * ln(U) >= e``,
    ``U ~ Uniform(0, 1]``: the pipeline serves it and recomputes in the background. Values are
    never served past ``e``, which bounds staleness by the TTL.
    """

    tier = "l2"

    def __init__(self, store: Any, ttl: float, jitter: float = 0.1, beta: float = 1.0,
                 max_fields: int = 64, default_compute_s: float = 0.05,
                 clock=time.time, rng: random.Random | None = None,
                 invalidation: str = "drop") -> None:
        # NOTE: the Redis client's names load with the tier, not with the plugin: loading every
        # plugin (trainers, batch workers) must not import redis-py
        from rankly.engine.api import CircuitOpen

        self._circuit_open = CircuitOpen
        check_invalidation(invalidation)
        self.revalidate = invalidation == "revalidate"
        # a tier that compares start times needs no second, delayed invalidation (events_api)
        self.checks_start_times = self.revalidate
        self.guard = store.guard
        self.keys = store.keys
        self.ttl = ttl
        self.jitter = jitter
        self.beta = beta
        self.max_fields = max_fields
        self.default_compute_s = default_compute_s
        self.clock = clock
        self.rng = rng or random.Random()
        self._set_user_entry = self.guard.client.register_script(SET_USER_ENTRY)
        self._mark_invalidated = self.guard.client.register_script(MARK_INVALIDATED)
        self._miss_at: OrderedDict[str, float] = OrderedDict()  # bounded: see _note_miss
        self._write_warned_at = -WRITE_WARNING_S

    def where(self, key: str, user_id: str | None) -> tuple[str, str | None]:
        """The Redis key (and hash field) that holds ``key``."""
        if user_id is None:
            return self.keys.shared("rc", key), None
        return self.keys.user(user_id, "recs"), key

    def jittered_ttl(self) -> float:
        return self.ttl * (1 + self.rng.uniform(-self.jitter, self.jitter))

    async def get(self, key: str, user_id: str | None = None) -> dict[str, Any] | None:
        rkey, field = self.where(key, user_id)

        def read(r: AsyncRedis):
            if field is None:
                return r.get(rkey)
            return r.hmget(rkey, [field, INVALIDATED])

        try:
            got = await self.guard.run(read)
        except self._circuit_open:
            return None  # Redis is known to be down: a quiet miss, not an error per request
        raw, invalidated = (got, None) if field is None else got
        now = self.clock()
        entry = json.loads(raw) if raw is not None else None
        if entry is None or now >= entry["e"]:
            self._note_miss(key)
            return None
        if invalidated is not None and float(invalidated) + CLOCK_SKEW_S >= entry.get("w", 0.0):
            self._note_miss(key)  # the pipeline revalidates it and recomputes behind it
            return CacheEntry.marked(entry["v"], dirty=True)
        if entry["d"] * self.beta * -math.log(1.0 - self.rng.random()) >= entry["e"] - now:
            self._note_miss(key)  # the background recompute's write measures its duration
            return CacheEntry.marked(entry["v"], refresh=True)
        return entry["v"]

    async def set(self, key: str, user_id: str | None, value: dict[str, Any]) -> None:
        started = self._miss_at.pop(key, None)
        compute_s = time.monotonic() - started if started is not None else self.default_compute_s
        ttl = self.jittered_ttl()
        now = self.clock()
        # when the computation started, on the wall clock every worker shares
        given = CacheEntry.of(value)
        began = given.started
        began = now if began is None else now - max(0.0, time.monotonic() - began)
        entry = json.dumps({"v": given.payload, "d": round(compute_s, 6), "e": now + ttl,
                            "w": round(began, 6)}, separators=(",", ":"))
        rkey, field = self.where(key, user_id)
        ttl_ms = max(1, int(ttl * 1000))

        def write(r: AsyncRedis):
            if field is None:
                return r.set(rkey, entry, px=ttl_ms)
            return self._set_user_entry(keys=[rkey], args=[field, entry, ttl_ms,
                                                           self.max_fields])

        try:
            await self.guard.run(write)
        except StoreUnavailable as exc:
            # the answer is served all the same; the next request computes it again
            if not isinstance(exc, self._circuit_open):
                self._warn_write(exc)

    def _warn_write(self, exc: StoreUnavailable) -> None:
        now = time.monotonic()
        if now - self._write_warned_at >= WRITE_WARNING_S:
            self._write_warned_at = now
            log.warning("cache tier l2 cannot store answers (%s); said again in %.0f s at most",
                        exc, WRITE_WARNING_S)

    async def invalidate_user(self, user_id: str) -> None:
        """Invalidate every cached answer of ``user_id`` in Redis, in one call on one key:
        ``DEL``, or the invalidation time written into the user's hash (``revalidate``)."""
        rkey = self.keys.user(user_id, "recs")
        if not self.revalidate:
            await self.guard.run(lambda r: r.delete(rkey))
            return
        args = [repr(self.clock()), INVALIDATION_MEMORY_MS]
        await self.guard.run(lambda r: self._mark_invalidated(keys=[rkey], args=args))

    def _note_miss(self, key: str) -> None:
        self._miss_at[key] = time.monotonic()
        self._miss_at.move_to_end(key)
        while len(self._miss_at) > 10_000:
            self._miss_at.popitem(last=False)


@hookimpl
def register_caches(register):
    def l2(ctx: ComponentContext) -> RedisCache:
        store = ctx.store
        if store is None or not hasattr(store, "guard"):
            raise ValueError("cache tier 'l2' needs a Redis store: set store_url (or REDIS_URL) "
                             "to a redis:// URL, or remove 'l2' from cache.tiers")
        c = ctx.cache
        opts = ctx.options
        return RedisCache(
            store,
            ttl=float(opts.get("ttl_seconds", c.ttl_seconds)),
            jitter=float(opts.get("jitter", c.jitter)),
            beta=float(opts.get("beta", 1.0)),
            max_fields=int(opts.get("max_fields", 64)),
            invalidation=str(opts.get("invalidation", c.invalidation)),
        )

    register("l2", l2, options=("ttl_seconds", "jitter", "beta", "max_fields", "invalidation"))
