"""Coalesce concurrent computations of the same key within one process (single flight)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    """``await run(key, fn)``: the first caller runs ``fn``; callers arriving meanwhile share it.

    ``computations`` counts how many times ``fn`` actually ran (for tests and metrics).
    """

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task] = {}
        self._started: dict[str, float] = {}  # key -> when its computation began (monotonic)
        self.computations = 0

    def __contains__(self, key: str) -> bool:
        """True while a computation of ``key`` is in flight."""
        return key in self._inflight

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, shared)``; ``shared`` is True when another caller computed it.

        The computation runs in its own task: a caller that gives up (its request deadline
        passed) stops waiting but never cancels it, so the answer still lands in the cache
        for everyone after it.
        """
        result, shared, _ = await self.run_since(key, fn)
        return result, shared

    async def run_since(self, key: str, fn: Callable[[], Awaitable[T]]
                        ) -> tuple[T, bool, float]:
        """:meth:`run`, plus when the computation began (``time.monotonic()``): a caller that
        joined one may need to know what happened since (an invalidation of its user)."""
        task = self._inflight.get(key)
        if task is not None:
            started = self._started[key]
            return await asyncio.shield(task), True, started
        started = time.monotonic()
        task = asyncio.ensure_future(fn())
        self._inflight[key] = task
        self._started[key] = started
        self.computations += 1
        task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task), False, started

    def _landed(self, key: str, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
            self._started.pop(key, None)
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters re-raise it; nobody may be waiting
