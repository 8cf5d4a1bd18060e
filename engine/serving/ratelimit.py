"""Per-client request rate limits: token buckets per route group, as pure ASGI middleware.

The server-wide admission control of event ingestion is :mod:`rankly.engine.events.admission`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import RateLimits
from ..events.admission import Bucket

#: Route groups and the path prefixes they cover (anything else is never limited).
GROUPS: dict[str, tuple[str, ...]] = {
    "recommendations": ("/recommendations", "/items/"),
    "events": ("/events", "/track/click"),
}


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
