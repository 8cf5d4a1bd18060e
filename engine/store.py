"""The store interface the pipeline talks to, and the embedded in-memory store (the default).

A store holds what changes while serving: each user's online history and seen set (from
events). Trained item data never lives here per request; it is in process memory (``Model``).
"""

from __future__ import annotations

import abc
import collections
from dataclasses import dataclass

from rankly.engine.config import Settings


class StoreUnavailable(RuntimeError):
    """The store cannot be reached within its deadline; callers degrade, never fail."""


@dataclass(frozen=True, slots=True)
class OnlineUser:
    """A user's online state: recent item ids (most recent first) and item ids not to repeat."""

    history: tuple[str, ...] = ()
    seen: frozenset[str] = frozenset()


EMPTY_USER = OnlineUser()


class Store(abc.ABC):
    """What the pipeline needs from a store; every method is one round trip at most."""

    kind: str = "abstract"

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Return True when the store answers within its deadline."""

    @abc.abstractmethod
    async def fetch_user(self, user_id: str) -> OnlineUser:
        """Return the user's online state in one round trip (``EMPTY_USER`` if none).

        Raises :class:`StoreUnavailable` when the store cannot answer in time.
        """

    @abc.abstractmethod
    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool) -> None:
        """Prepend ``item_id`` to the user's online history (and to ``seen`` when asked)."""

    async def close(self) -> None:  # noqa: B027 - optional hook for stores holding connections
        """Release connections; the default store holds none."""


class MemoryStore(Store):
    """The embedded store: per-process dictionaries with bounded per-user history."""

    kind = "memory"

    def __init__(self, history_limit: int = 200) -> None:
        self.history_limit = history_limit
        self._history: dict[str, collections.deque[str]] = {}
        self._seen: dict[str, set[str]] = {}

    async def ping(self) -> bool:
        return True

    async def fetch_user(self, user_id: str) -> OnlineUser:
        hist = self._history.get(user_id)
        if hist is None:
            return EMPTY_USER
        return OnlineUser(tuple(hist), frozenset(self._seen.get(user_id, ())))

    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool) -> None:
        hist = self._history.setdefault(user_id, collections.deque(maxlen=self.history_limit))
        if item_id in hist:
            hist.remove(item_id)
        hist.appendleft(item_id)
        if seen:
            self._seen.setdefault(user_id, set()).add(item_id)


def open_store(settings: Settings) -> Store:
    """Return the store named by ``settings.store_url`` (``memory`` is the embedded default)."""
    url = settings.store_url
    if url in ("", "memory", "memory://"):
        return MemoryStore()
    raise ValueError(
        f"store_url {url.split('@')[-1]!r}: unsupported store (supported: memory)"
    )
