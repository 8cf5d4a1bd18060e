"""The store interface the pipeline talks to, and the values it returns.

A store holds what changes while serving: each user's online history and seen set (from
events). Trained item data never lives here per request; it is in process memory (``Model``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


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

    async def record_interactions(self, rows: Sequence[tuple[str, str, bool]]) -> None:
        """:meth:`record_interaction` for each ``(user_id, item_id, seen)``, in order (the
        events projection's batch). Stores on a network override it with one round trip.

        Raises :class:`StoreUnavailable` when the store cannot take them; re-applying rows
        that were partly applied gives the same state (each row is idempotent in effect)."""
        for user_id, item_id, seen in rows:
            await self.record_interaction(user_id, item_id, seen=seen)

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
