"""The Redis store: online user state and pub/sub (model versions: ``versions.py``).

Per user: ``<ns>:{u:<id>}:history`` (list, newest event first, bounded),
``<ns>:{u:<id>}:times`` (hash: the newest items' latest event times) and
``<ns>:{u:<id>}:seen`` (set), all forgotten ``user_state_ttl_days`` after the user's last
interaction; they share one hash tag, so :meth:`RedisStore.fetch_user` is one
pipeline to one node, also on a cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..config import ConfigError, Settings
from .keys import Keys
from .redis_client import (
    BACKGROUND_TIMEOUT_MS,
    UNAVAILABLE,
    AsyncRedis,
    GuardedRedis,
    make_pubsub_client,
    make_redis,
    redact,
)
from .store import (
    EMPTY_USER,
    TIMED_ITEMS,
    InteractionRow,
    OnlineUser,
    Store,
    StoreUnavailable,
    event_time_ms,
)
from .versions import ModelVersions

log = logging.getLogger("rankly.redis")

# KEYS: history, seen, times. ARGV: item, history limit, "1" to add to seen, TTL ms (0: none),
# the event's time (integer ms), TIMED_ITEMS. Atomic on one slot. The history is ordered by
# event time, newest first (Store.record_interaction, store.history_position): the common
# case, an event newer than the head, is one push; a late event reads the timed head of the
# list to find its place. ``times`` holds the latest event time of the TIMED_ITEMS newest
# items (integers: compact in a listpack); items without one (further back, or listed before
# times were kept) count as older than any event, so an existing history needs no migration.
# Every interaction renews the TTL of the three keys: a user's online state is forgotten
# after that long without one.
RECORD_INTERACTION = """
local item, limit, ts = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local timed = tonumber(ARGV[6])
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], item) end
local head = redis.call('LINDEX', KEYS[1], 0)
local found = redis.call('HMGET', KEYS[3], item, head or item)
local old = tonumber(found[1] or '')
if not (old and old > ts) then
  local length = redis.call('LLEN', KEYS[1]) - redis.call('LREM', KEYS[1], 0, item)
  redis.call('HSET', KEYS[3], item, ARGV[5])
  if head == item then head = redis.call('LINDEX', KEYS[1], 0) end
  local head_ts = head and tonumber((head == item and '') or found[2] or '')
  if head_ts and head_ts > ts then
    local items = redis.call('LRANGE', KEYS[1], 0, timed - 1)
    local times = redis.call('HMGET', KEYS[3], unpack(items))
    local placed = false
    for i = 2, #items do
      local t = tonumber(times[i] or '')
      if not t or t <= ts then
        redis.call('LINSERT', KEYS[1], 'BEFORE', items[i], item)
        placed = true
        break
      end
    end
    if not placed then
      redis.call('LINSERT', KEYS[1], 'AFTER', items[#items], item)
    end
  else
    redis.call('LPUSH', KEYS[1], item)
  end
  local cutoff = math.min(timed, limit)
  if length >= cutoff then
    redis.call('HDEL', KEYS[3], redis.call('LINDEX', KEYS[1], cutoff))
    if length >= limit then redis.call('LTRIM', KEYS[1], 0, limit - 1) end
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
"""
#: Days without an interaction after which Redis forgets a user's online history and seen set
#: (``[plugins.redis] user_state_ttl_days``; 0 keeps them forever). The trained history still
#: excludes what the model was trained on.
USER_STATE_TTL_DAYS = 180.0
PROJECTION_CHUNK = 500  # rows per pipeline of record_interactions
PROJECTION_DEADLINE_S = 2.0  # per pipeline, like the event stream's appends


class RedisStore(Store):
    """Online user state in Redis; one pipeline round trip per ``fetch_user``.

    Holds two guarded clients: ``guard`` for the request path (``deadlines.store_ms``, one
    retry, breaker) and ``background`` for bulk work (model download, 5 s timeouts).
    """

    kind = "redis"

    def __init__(self, url: str, settings: Settings, history_limit: int | None = None) -> None:
        opts = settings.plugin_options("redis")
        self.url = url
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.history_limit = int(history_limit or opts.get("history_limit", 200))
        ttl_days = float(opts.get("user_state_ttl_days", USER_STATE_TTL_DAYS))
        if ttl_days < 0:
            raise ConfigError("plugins.redis.user_state_ttl_days must be >= 0")
        self.user_state_ttl_ms = int(ttl_days * 86_400_000)
        self.guard = GuardedRedis(make_redis(url, settings), settings, name="store")
        self.background = GuardedRedis(
            make_redis(url, settings, timeout_ms=BACKGROUND_TIMEOUT_MS), settings,
            deadline_s=60.0, name="store_background",
        )
        self._record = self.guard.client.register_script(RECORD_INTERACTION)

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, namespace={self.keys.namespace!r})"

    async def ping(self) -> bool:
        try:
            return bool(await self.guard.run(lambda r: r.ping()))
        except StoreUnavailable:
            return False

    async def fetch_user(self, user_id: str) -> OnlineUser:
        hist_key = self.keys.user(user_id, "history")
        seen_key = self.keys.user(user_id, "seen")

        async def query(r: AsyncRedis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.lrange(hist_key, 0, self.history_limit - 1)
            pipe.smembers(seen_key)
            return await pipe.execute()

        history, seen = await self.guard.run(query)
        if not history and not seen:
            return EMPTY_USER
        return OnlineUser(tuple(h.decode() for h in history), frozenset(s.decode() for s in seen))

    def _script_call(self, user_id: str, item_id: str, seen: bool, timestamp: float | None
                     ) -> tuple[list[str], list[Any]]:
        keys = [self.keys.user(user_id, "history"), self.keys.user(user_id, "seen"),
                self.keys.user(user_id, "times")]
        return keys, [item_id, self.history_limit, "1" if seen else "0",
                      self.user_state_ttl_ms, event_time_ms(timestamp), TIMED_ITEMS]

    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool,
                                 timestamp: float | None = None) -> None:
        keys, args = self._script_call(user_id, item_id, seen, timestamp)
        await self.guard.run(lambda r: self._record(keys=keys, args=args))

    async def record_interactions(self, rows: Sequence[InteractionRow]) -> None:
        """One pipeline of the same script per ``PROJECTION_CHUNK`` rows, on the background
        client: the events projection is bulk work, kept off the request path's client, its
        30 ms budget and its breaker (one call per event cost ~15% of the event loop under
        a sustained load, benchmarks/README.md). EVAL, not EVALSHA: a cluster pipeline
        cannot reload a script a node has not seen; Redis caches it after the first call."""
        for start in range(0, len(rows), PROJECTION_CHUNK):
            chunk = rows[start:start + PROJECTION_CHUNK]

            async def write(r: AsyncRedis, chunk: Sequence[InteractionRow] = chunk
                            ) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                for user_id, item_id, seen, *rest in chunk:
                    keys, args = self._script_call(user_id, item_id, seen,
                                                   rest[0] if rest else None)
                    pipe.eval(RECORD_INTERACTION, len(keys), *keys, *args)
                return await pipe.execute()

            await self.background.run(write, deadline_s=PROJECTION_DEADLINE_S)

    async def publish(self, channel: str, message: str) -> None:
        name = self.keys.channel(channel)
        await self.guard.run(lambda r: r.publish(name, message))

    async def subscribe(self, channel: str) -> AsyncIterator[str | None]:
        """Yield messages of ``channel``; reconnects by itself (0.2-2 s backoff), yielding
        ``None`` after every (re)subscription. On a cluster, listens on one seed node."""
        name = self.keys.channel(channel)
        backoff = 0.2
        me = asyncio.current_task()
        while True:
            client = make_pubsub_client(self.url, self.settings)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(name)
                backoff = 0.2
                yield None
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if me is not None and me.cancelling():
                        # redis-py may swallow a cancellation inside get_message
                        raise asyncio.CancelledError
                    if msg is not None and msg.get("type") == "message":
                        data = msg["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except UNAVAILABLE as exc:
                log.debug("subscription to %s lost (%s); retrying", name, exc)
            finally:
                await _quietly(pubsub.aclose())
                await _quietly(client.aclose())
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def versions(self) -> ModelVersions:
        """The model-version feature store of this namespace (uses the background client)."""
        return ModelVersions(self.background, self.keys)

    async def close(self) -> None:
        await self.guard.close()
        await self.background.close()


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except (*UNAVAILABLE, RuntimeError):
        pass
