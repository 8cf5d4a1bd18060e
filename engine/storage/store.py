"""The store interface the pipeline talks to, and the values it returns.

A store holds what changes while serving: each user's online history and seen set (from
events). Trained item data never lives here per request; it is in process memory (``Model``).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass


class StoreUnavailable(RuntimeError):
    """The store cannot be reached within its deadline; callers degrade, never fail."""


@dataclass(frozen=True, slots=True)
class OnlineUser:
    """A user's online state: recent item ids (most recent first) and item ids not to repeat."""

    history: tuple[str, ...] = ()
    seen: frozenset[str] = frozenset()


EMPTY_USER = OnlineUser()

#: How many of a user's newest history items keep their event time (what places a late
#: event). A late event older than all of them goes right behind them. The blend's recency
#: weights (``HISTORY_HALF_LIVES``) and transitions (``SEQ_HISTORY``) lean on the newest
#: items, whose order is exact; a time for every listed item would cost Redis memory for
#: each of them (docs/scaling.md gives the online state's memory per user).
TIMED_ITEMS = 16

#: One user-state write: ``(user_id, item_id, seen)`` or with the event's ``timestamp``
#: (unix seconds; None or absent: now) as a fourth field.
InteractionRow = tuple[str, str, bool] | tuple[str, str, bool, float | None]


def event_time_ms(timestamp: float | None) -> int:
    """The time a store keeps for an event: integer milliseconds (``timestamp`` None: now);
    events within one millisecond keep their arrival order."""
    return int((time.time() if timestamp is None else timestamp) * 1000)


def history_position(history: Sequence[str], times: Mapping[str, int], timestamp: int
                     ) -> int:
    """Where an item of ``timestamp`` goes in ``history`` (newest first, the item itself
    not in it): ahead of the first item whose time is at or before ``timestamp`` (so equal
    times keep arrival order, the later arrival first). Items without a time (beyond the
    :data:`TIMED_ITEMS` newest, or written before times were kept) count as older than any
    event."""
    for position, other in enumerate(history):
        t = times.get(other)
        if t is None or t <= timestamp:
            return position
    return len(history)


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
    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool,
                                 timestamp: float | None = None) -> None:
        """Put ``item_id`` in the user's online history at the place of ``timestamp`` (unix
        seconds; None: now), and in ``seen`` when asked.

        The history is ordered by event time, newest first, as :func:`history_position`
        says: an event that arrives late (a phone back online) goes behind the items of
        later events instead of counting as the newest (at most :data:`TIMED_ITEMS` deep),
        and an item keeps the place of its latest event.
        """

    async def record_interactions(self, rows: Sequence[InteractionRow]) -> None:
        """:meth:`record_interaction` for each ``(user_id, item_id, seen[, timestamp])``, in
        order (the events projection's batch). Stores on a network override it with one
        round trip.

        Raises :class:`StoreUnavailable` when the store cannot take them; re-applying rows
        that were partly applied gives the same state (each row is idempotent in effect)."""
        for user_id, item_id, seen, *rest in rows:
            await self.record_interaction(user_id, item_id, seen=seen,
                                          timestamp=rest[0] if rest else None)

    async def close(self) -> None:  # noqa: B027 - optional hook for stores holding connections
        """Release connections; the default store holds none."""

    async def publish(self, channel: str, message: str) -> None:
        """Broadcast ``message`` to every subscriber of ``channel`` in every worker.

        ``channel`` is a code constant (``"invalidate"``, ``"model"``). Best effort: raises
        :class:`StoreUnavailable` when the broadcast could not be sent.
        """
        for queue in tuple(self._subscribers().get(channel, ())):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[str | None]:
        """Yield messages published on ``channel`` until the consumer stops iterating.

        ``None`` is yielded whenever the subscription is (re)established: messages sent while
        it was down were missed, so consumers resynchronise (an L1 cache clears itself). The
        default reaches subscribers of this store object only (one process).
        """
        queue: asyncio.Queue[str] = asyncio.Queue()
        subs = self._subscribers().setdefault(channel, set())
        subs.add(queue)
        try:
            yield None
            while True:
                yield await queue.get()
        finally:
            subs.discard(queue)

    def _subscribers(self) -> dict[str, set[asyncio.Queue[str]]]:
        subs = self.__dict__.get("_local_subscribers")
        if subs is None:
            subs = self.__dict__["_local_subscribers"] = {}
        return subs
