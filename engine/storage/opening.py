"""Open the store ``settings.store_url`` names: the embedded memory store or a Redis store."""

from __future__ import annotations

from ..config import Settings
from .memory_store import MemoryStore
from .store import Store


def open_store(settings: Settings) -> Store:
    """Return the store named by ``settings.store_url``: ``memory`` (the embedded default) or a
    Redis URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``). Never connects:
    a Redis that is down at start is retried by the store itself."""
    url = settings.store_url
    if url in ("", "memory", "memory://"):
        return MemoryStore()
    # NOTE: imported here, so that a process on the memory store (and every process that
    # imports the runtime without opening a store: batch workers, the testing kit) never
    # loads redis-py
    from .redis_client import is_redis_url
    from .redis_store import RedisStore

    if is_redis_url(url):
        return RedisStore(url, settings)
    raise ValueError(
        f"store_url {url.split('@')[-1]!r}: unsupported store (supported: memory, redis://, "
        "rediss://, unix://, redis+cluster://)"
    )
