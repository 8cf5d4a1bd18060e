"""The embedded store (the default): per-process dictionaries, nothing to connect to."""

from __future__ import annotations

from .store import (
    EMPTY_USER,
    TIMED_ITEMS,
    OnlineUser,
    Store,
    event_time_ms,
    history_position,
)


class MemoryStore(Store):
    """The embedded store: per-process dictionaries with bounded per-user history, ordered
    by event time (:meth:`Store.record_interaction`)."""

    kind = "memory"

    def __init__(self, history_limit: int = 200) -> None:
        self.history_limit = history_limit
        self._history: dict[str, list[str]] = {}  # newest first
        # item -> its latest event time (ms), for the TIMED_ITEMS newest items
        self._times: dict[str, dict[str, int]] = {}
        self._seen: dict[str, set[str]] = {}

    async def ping(self) -> bool:
        return True

    async def fetch_user(self, user_id: str) -> OnlineUser:
        hist = self._history.get(user_id)
        if hist is None:
            return EMPTY_USER
        return OnlineUser(tuple(hist), frozenset(self._seen.get(user_id, ())))

    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool,
                                 timestamp: float | None = None) -> None:
        ts = event_time_ms(timestamp)
        hist = self._history.setdefault(user_id, [])
        times = self._times.setdefault(user_id, {})
        if seen:
            self._seen.setdefault(user_id, set()).add(item_id)
        old = times.get(item_id)
        if old is not None and old > ts:
            return  # the item's place is that of its later event
        if item_id in hist:
            hist.remove(item_id)
        times[item_id] = ts
        hist.insert(history_position(hist, times, ts), item_id)
        cutoff = min(TIMED_ITEMS, self.history_limit)
        if len(hist) > cutoff:  # at most one item crossed it: it keeps no time
            times.pop(hist[cutoff], None)
        del hist[self.history_limit:]
