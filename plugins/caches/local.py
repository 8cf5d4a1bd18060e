"""In-process L1 cache: LRU bounded by entries and bytes, TTL with jitter, per-user invalidation."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import OrderedDict
from typing import Any

import orjson

from rankly.engine.api import CacheEntry, ComponentContext, Store, check_invalidation, hookimpl

log = logging.getLogger("rankly.cache")
INVALIDATE_CHANNEL = "invalidate"
#: How long a user's last invalidation time is kept: a computation lasts at most the request
#: deadline (a plugin past it is abandoned and its answer is not cached).
INVALIDATION_MEMORY_S = 60.0


class LocalCache:
    """A bounded LRU of JSON-ready payloads.

    Size of an entry is the length of its compact JSON encoding (what it costs to serve).
    Eviction is least-recently-used once either ``max_entries`` or ``max_bytes`` is exceeded;
    an entry lives ``ttl * (1 +- jitter)`` seconds. ``invalidate_user`` drops every key of a
    user through a per-user key index, so it costs O(keys of that user).

    Stale while revalidate: for ``stale`` seconds after its expiry an entry is still returned,
    marked for refresh, so the pipeline serves it and recomputes the key in the background
    (single flight: once per key). Keys that expire together then never make requests wait
    for their recomputation. Staleness is bounded by ``ttl * (1 + jitter) + stale``.

    Invalidation (``invalidation``): "drop" removes the user's entries at once. "revalidate"
    (the default) keeps them, marked dirty: a dirty entry is returned marked
    (``CacheEntry.dirty``), and the pipeline serves it only after removing what the user has
    seen since (see ``pipeline.cache.revalidate``), recomputing the key behind it. The next ``set``
    of the key clears the mark. A dirty entry still expires with its TTL.

    A computation that started before its user's last invalidation (the entry's
    ``started``, ``time.monotonic()``) may hold what the event changed: its ``set``
    stores it dirty ("revalidate") or not at all ("drop"). Invalidation times are kept for
    ``INVALIDATION_MEMORY_S``, longer than any computation can last. A resubscription to the
    other workers' invalidations clears the tier, and an answer whose computation started
    before it is treated the same way: invalidations sent meanwhile were missed.
    """

    tier = "l1"
    #: set() compares an answer's start time with its user's last invalidation, so this tier
    #: needs no second, delayed invalidation (events_api)
    checks_start_times = True

    def __init__(self, max_entries: int, max_bytes: int, ttl: float, jitter: float = 0.1,
                 stale: float = 0.0, clock=time.monotonic,
                 rng: random.Random | None = None, invalidation: str = "drop") -> None:
        check_invalidation(invalidation)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.jitter = jitter
        self.stale = stale
        self.revalidate = invalidation == "revalidate"
        self.clock = clock
        self.rng = rng or random.Random()
        self._data: OrderedDict[str, tuple[float, int, str | None, dict[str, Any]]] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        self._dirty: set[str] = set()  # keys whose user had an invalidating event since
        self._invalidated: dict[str, float] = {}  # user -> last invalidation (monotonic),
        # oldest first
        self._cleared_at: float | None = None  # last clear (monotonic): see clear()
        self.bytes = 0
        self.store: Store | None = None
        self._follower: asyncio.Task | None = None
        self.following = asyncio.Event()

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str, user_id: str | None = None) -> dict[str, Any] | None:
        self._ensure_following()
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, _, _, value = entry
        now = self.clock()
        if expires <= now:
            if now >= expires + self.stale:
                self._drop(key)
                return None
            # the refresh's set() replaces the entry; a dirty one is still revalidated
            # first, or an expired answer would serve what its user has just bought
            return CacheEntry.marked(value, refresh=True, dirty=key in self._dirty)
        self._data.move_to_end(key)
        if self._dirty and key in self._dirty:
            return CacheEntry.marked(value, dirty=True)
        return value

    async def set(self, key: str, user_id: str | None, value: dict[str, Any]) -> None:
        self._ensure_following()
        # NOTE: orjson, the encoder that serves the entry: ~7x faster than json.dumps on a
        # slate, and its UTF-8 length is what the entry costs to serve (#8)
        size = len(orjson.dumps(value))
        if size > self.max_bytes:
            self._drop(key)  # not kept; nor is the older answer it was to replace
            return
        started = CacheEntry.of(value).started
        # a user without a remembered invalidation has none an answer could predate (an
        # answer of unknown age, copied from a slower tier, says it started at -inf)
        invalidated = None if user_id is None else self._invalidated.get(user_id)
        late = started is not None and invalidated is not None and invalidated >= started
        if not late and started is not None and user_id is not None:
            late = self._cleared_before(started)
        if late and not self.revalidate:
            return  # computed before the user's last invalidation: not stored
        if key in self._data:
            self._drop(key)
        self._dirty.discard(key)
        if late:
            self._dirty.add(key)
        ttl = self.ttl * (1 + self.rng.uniform(-self.jitter, self.jitter))
        self._data[key] = (self.clock() + ttl, size, user_id, value)
        self.bytes += size
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(key)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    async def invalidate_user(self, user_id: str) -> None:
        """Invalidate ``user_id``'s entries here, then tell every other worker's L1 to do the
        same."""
        self.drop_user(user_id)
        if self.store is not None:
            await self.store.publish(INVALIDATE_CHANNEL, user_id)

    def invalidated_after(self, user_id: str, t: float) -> bool:
        """Whether ``user_id`` was invalidated at or after ``t`` (``time.monotonic()``), as
        far as this process remembers (the last ``INVALIDATION_MEMORY_S`` seconds)."""
        at = self._invalidated.get(user_id)
        return at is not None and at >= t

    def drop_user(self, user_id: str) -> None:
        """Invalidate ``user_id``'s entries in this process only: drop them, or mark them
        dirty (``invalidation="revalidate"``)."""
        self._remember_invalidation(user_id)
        if self.revalidate:
            self._dirty.update(self._by_user.get(user_id, ()))
            return
        for key in self._by_user.pop(user_id, ()):
            self._drop(key)

    def _remember_invalidation(self, user_id: str) -> None:
        now = time.monotonic()  # the clock of CacheEntry.started, not the TTL clock
        seen = self._invalidated
        seen.pop(user_id, None)
        seen[user_id] = now
        for oldest in list(itertools.islice(seen, 64)):  # amortized: stop at the first recent
            if seen[oldest] >= now - INVALIDATION_MEMORY_S:
                break
            del seen[oldest]

    def follow(self, store: Store) -> None:
        """Apply invalidations broadcast through ``store`` (started now if a loop runs)."""
        self.store = store
        self._ensure_following()

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.wait([self._follower], timeout=2.0)
            self._follower = None

    def _ensure_following(self) -> None:
        if self.store is None or self._follower is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._follower = loop.create_task(self._follow(self.store), name="l1-invalidations")

    async def _follow(self, store: Store) -> None:
        async for user_id in store.subscribe(INVALIDATE_CHANNEL):
            if user_id is None:
                # (re)subscribed: invalidations sent meanwhile were missed
                await self.clear()
                self.following.set()
            else:
                self.drop_user(user_id)

    async def clear(self) -> None:
        """Forget every entry, for when invalidations may have been missed (a lost
        subscription): a user's answer whose computation started before now is then stored
        dirty, or not at all, like one that started before its user's invalidation. The
        invalidation times heard so far are kept for the same reason."""
        self._data.clear()
        self._by_user.clear()
        self._dirty.clear()
        self._cleared_at = time.monotonic()
        self.bytes = 0

    def _cleared_before(self, started: float) -> bool:
        """Whether a computation that started at ``started`` may have missed an invalidation
        that the last :meth:`clear` stands for. An answer of unknown start (copied from a
        slower tier, which keeps its own invalidation marks) is not taken as one."""
        cleared = self._cleared_at
        if cleared is None or started == float("-inf") or started > cleared:
            return False
        return time.monotonic() - cleared < INVALIDATION_MEMORY_S

    def _drop(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is None:
            return
        _, size, user_id, _ = entry
        self.bytes -= size
        self._dirty.discard(key)
        if user_id is not None:
            keys = self._by_user.get(user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[user_id]


#: The option keys of the ``l1`` tier (``[plugins.l1]``); unset ones follow ``cache.*``.
L1_OPTIONS = ("max_entries", "max_bytes", "ttl_seconds", "jitter", "stale_seconds",
              "invalidation", "follow_invalidations")


@hookimpl
def register_caches(register):
    def l1(ctx: ComponentContext) -> LocalCache:
        c = ctx.cache
        opts = ctx.options
        cache = LocalCache(
            max_entries=int(opts.get("max_entries", c.l1_max_entries)),
            max_bytes=int(opts.get("max_bytes", c.l1_max_bytes)),
            ttl=float(opts.get("ttl_seconds", c.ttl_seconds)),
            jitter=float(opts.get("jitter", c.jitter)),
            # NOTE: 10% of the TTL by default, so entries expiring together are refreshed
            # behind stale answers instead of making their requests wait (#9)
            stale=float(opts.get("stale_seconds",
                                 0.1 * float(opts.get("ttl_seconds", c.ttl_seconds)))),
            invalidation=str(opts.get("invalidation", c.invalidation)),
        )
        if ctx.store is not None and opts.get("follow_invalidations", True):
            cache.follow(ctx.store)
        return cache

    register("l1", l1, options=L1_OPTIONS)
