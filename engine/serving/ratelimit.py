"""Per-client request rate limits (token buckets per route group, as pure ASGI middleware) and
the server-wide admission control of event ingestion (:class:`EventAdmission`)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from rankly.engine.config import RateLimits

#: Route groups and the path prefixes they cover (anything else is never limited).
GROUPS: dict[str, tuple[str, ...]] = {
    "recommendations": ("/recommendations", "/items/"),
    "events": ("/events", "/track/click"),
}


@dataclass
class Bucket:
    tokens: float
    updated: float

    def refill(self, now: float, rate: float, capacity: float) -> None:
        """Add the tokens earned since the last refill, up to ``capacity``."""
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now


class TokenBuckets:
    """One token bucket per client, refilled at ``rate`` per second up to ``burst``.

    Memory is bounded: at most ``max_clients`` buckets, the least recently seen client is
    dropped first (it comes back with a full bucket, which only errs towards letting it in).
    Each call is O(1).
    """

    def __init__(self, rate: float, burst: int, max_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst if burst > 0 else max(1, math.ceil(rate)))
        self.max_clients = max(1, max_clients)
        self.clock = clock
        self._buckets: collections.OrderedDict[str, Bucket] = collections.OrderedDict()

    def take(self, client: str) -> float:
        """Take one token for ``client``; return 0 if allowed, else seconds until a token."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = Bucket(self.burst, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket.refill(now, self.rate, self.burst)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def client_key(scope: Scope) -> str:
    """Who is asking: a hash of the API key or Authorization header, else the peer address.

    Credentials are hashed so the limiter never holds a token in memory as text.
    """
    for name, value in scope.get("headers", ()):
        if name in (b"x-api-key", b"authorization") and value:
            return "k:" + hashlib.blake2b(value, digest_size=16).hexdigest()
    client = scope.get("client")
    return "a:" + (client[0] if client else "unknown")


def route_group(path: str) -> str | None:
    for group, prefixes in GROUPS.items():
        if path.startswith(prefixes):
            return group
    return None


class RateLimitMiddleware:
    """Answer 429 with ``Retry-After`` when a client exceeds its route group's rate.

    Groups whose rate is 0 (the default) are not limited; the check runs before the body is
    read, so a rejected request costs O(1) whatever it carries.
    """

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.buckets: dict[str, TokenBuckets] = {}
        for group in GROUPS:
            rate = float(getattr(limits, f"{group}_per_second"))
            if rate > 0:
                self.buckets[group] = TokenBuckets(rate, int(getattr(limits, f"{group}_burst")),
                                                   limits.max_clients)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.buckets:
            await self.app(scope, receive, send)
            return
        group = route_group(scope.get("path", ""))
        buckets = self.buckets.get(group) if group else None
        wait = buckets.take(client_key(scope)) if buckets is not None else 0.0
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = str(max(1, math.ceil(wait)))
        body = json.dumps({"error": {"field": "rate", "message": f"too many {group} requests; "
                                     f"retry after {retry_after} s"}}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", retry_after.encode())]})
        await send({"type": "http.response.body", "body": body})


# --- server-wide admission control for event ingestion ----------------------------------------


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
