"""The embedded store (the default): per-process dictionaries, nothing to connect to."""

from __future__ import annotations

import collections

from .store import EMPTY_USER, OnlineUser, Store


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
