"""Coalesce concurrent computations of the same key within one process (single flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    """``await run(key, fn)``: the first caller runs ``fn``; callers arriving meanwhile share it.

    ``computations`` counts how many times ``fn`` actually ran (for tests and metrics).
    """

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future] = {}
        self.computations = 0

    def __contains__(self, key: str) -> bool:
        """True while a computation of ``key`` is in flight."""
        return key in self._inflight

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, shared)``; ``shared`` is True when another caller computed it."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self.computations += 1
        try:
            result = await fn()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            del self._inflight[key]
