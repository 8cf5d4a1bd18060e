"""Server-wide admission control of event ingestion: an in-flight cap and a token bucket of
events, answered with 429 and ``Retry-After`` (the per-client limits are
:mod:`rankly.engine.serving.ratelimit`)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import RateLimits


@dataclass
class Bucket:
    tokens: float
    updated: float

    def refill(self, now: float, rate: float, capacity: float) -> None:
        """Add the tokens earned since the last refill, up to ``capacity``."""
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now



@dataclass(frozen=True)
class Refusal:
    """Why an ingest request is refused (a bounded set of reasons) and its ``Retry-After``."""

    reason: str  # "inflight", "rate" (refused before the body is read) or "over_budget"
    retry_after: int  # whole seconds, at least 1


class IngestSlot:
    """An admitted ingest request's in-flight slot; released exactly once.

    Once the append is started, :meth:`hand_over` ties the release to the append task, so a
    client that disconnects does not free the slot while its (shielded) append still runs.
    """

    __slots__ = ("_admission", "_held", "_handed")

    def __init__(self, admission: EventAdmission) -> None:
        self._admission = admission
        self._held = True
        self._handed = False

    def hand_over(self, task: asyncio.Future[Any]) -> None:
        self._handed = True
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._release()
        if not task.cancelled():
            task.exception()  # retrieved: an append that outlived its request logs no warning

    def close(self) -> None:
        """Release the slot unless an append task holds it (call in ``finally``)."""
        if not self._handed:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._admission.inflight -= 1


class EventAdmission:
    """Server-wide (per worker process) admission control for event ingestion.

    Two limits, both answered with 429 + ``Retry-After``:

    * at most ``max_inflight`` ingest requests at once (0: no cap), checked before the body is
      read, so a flood costs O(1) per refused request and bodies held in memory are bounded;
    * a token bucket of events (not requests): ``rate`` events per second, ``capacity`` at
      most (0 rate: unlimited). Before the body is read the bucket must hold as many tokens
      as the body can hold events (``events_hint``: from its Content-Length, see
      ``events.max_events_in``; at least one, at most the capacity), so a flood is refused
      without reading or parsing its bodies. Once the batch is parsed, its number of valid
      events is charged at once, and a batch larger than what the bucket holds is refused
      whole (nothing of it is stored), so a batch is never half-accepted.

    Single-threaded (one event loop per worker), so no locks; every call is O(1).
    """

    def __init__(self, rate: float, capacity: float, max_inflight: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = max(0.0, float(rate))
        self.capacity = max(1.0, float(capacity))
        self.max_inflight = max(0, int(max_inflight))
        self.clock = clock
        self.bucket = Bucket(self.capacity, clock())
        self.inflight = 0

    @property
    def tokens(self) -> float:
        return self.bucket.tokens

    @classmethod
    def from_settings(cls, limits: RateLimits, max_batch: int,
                      clock: Callable[[], float] = time.monotonic) -> EventAdmission:
        """Capacity: ``events_global_burst``, or one second's worth but at least one full
        batch (``limits.max_events_batch``), so that every valid batch can be admitted."""
        rate = limits.events_global_per_second
        capacity = limits.events_global_burst or max(rate, max_batch)
        return cls(rate, capacity, limits.events_max_inflight, clock)

    def _refill(self) -> None:
        self.bucket.refill(self.clock(), self.rate, self.capacity)

    def _wait(self, needed: float) -> int:
        return max(1, math.ceil((needed - self.tokens) / self.rate))

    def enter(self, events_hint: int = 1) -> IngestSlot | Refusal:
        """Before the body is read: a slot if under the in-flight cap and the bucket holds
        ``events_hint`` tokens (the most events the body can hold; capped at the capacity)."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            return Refusal("inflight", 1)
        if self.rate > 0:
            self._refill()
            needed = min(max(1.0, float(events_hint)), self.capacity)
            if self.tokens < needed:
                return Refusal("rate", self._wait(needed))
        self.inflight += 1
        return IngestSlot(self)

    def charge(self, events: int) -> Refusal | None:
        """Take ``events`` tokens, all or none; ``None`` when admitted."""
        if self.rate <= 0 or events <= 0:
            return None
        self._refill()
        if events > self.tokens:
            return Refusal("over_budget", self._wait(min(float(events), self.capacity)))
        self.bucket.tokens -= events
        return None
