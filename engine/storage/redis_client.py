"""The Redis client factory (standalone, TLS, unix socket, Cluster) and the breaker around it.

One place decides how rankly talks to Redis, so the store, the L2 cache, the model loader and
the events code all get the same timeouts, retry policy, credentials and TLS handling:

- ``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``: standalone.
- ``redis+cluster://[user:pass@]h1:p1,h2:p2`` (``rediss+cluster://`` with TLS), or any standalone
  URL with ``[plugins.redis] cluster = true``: a Redis Cluster client seeded with those nodes.

On the request path every call is bounded: socket timeouts are ``deadlines.store_ms`` and a
failed call is retried at most once (redis-py's defaults, 5 s with retries, would blow the
200 ms request deadline). :class:`GuardedRedis` adds a hard per-call deadline and a circuit
breaker so a dead Redis is not hammered: while open, calls fail at once with
``StoreUnavailable``, and one probe per cooldown finds out whether Redis is back.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff

from ..breaker import Breaker
from ..config import Settings
from .store import StoreUnavailable

T = TypeVar("T")

AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
#: Errors that mean "Redis did not answer": timeouts, refused/reset connections, cluster churn.
UNAVAILABLE = (redis.RedisError, OSError, asyncio.TimeoutError)
#: Replies that mean "Redis answered but will not serve this call now": out of memory under
#: ``noeviction``, a read-only replica or a master that is down, a cluster slot being moved or
#: without a master, a user whose ACL forbids it. Callers degrade as for an outage
#: (``StoreUnavailable``), but the breaker is not tripped: Redis is responsive, and reads
#: usually still work while writes are refused.
REFUSED = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
           redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
           redis.exceptions.NoPermissionError)
BACKGROUND_TIMEOUT_MS = 5000.0  # pub/sub, model download, CLI: not on the request path
CLUSTER_INIT_S = 2.0


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: standalone (``url``) or cluster (seed ``nodes``)."""

    cluster: bool
    url: str = field(default="", repr=False)  # may carry credentials; see redact()
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)


def is_redis_url(url: str) -> bool:
    """True when ``url`` names a Redis deployment this module can open."""
    return url.split("://", 1)[0].lower() in SCHEMES and "://" in url


def redact(url: str) -> str:
    """``url`` without its credentials (for logs and error messages)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def parse_url(url: str, cluster: bool = False) -> RedisTarget:
    """Parse a Redis URL; ``cluster`` forces cluster mode for a standalone-looking URL."""
    if not is_redis_url(url):
        raise ValueError(f"{redact(url)!r}: not a Redis URL (use one of {', '.join(SCHEMES)})")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    tls = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        cluster = True
    if not cluster:
        return RedisTarget(cluster=False, url=url if "+" not in scheme else url, tls=tls)
    if scheme == "unix":
        raise ValueError("Redis Cluster cannot be reached over a unix socket")
    rest, _, query = rest.partition("?")
    rest = rest.split("/", 1)[0]
    userinfo, _, hosts = rest.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = urllib.parse.unquote(user) if (user and sep) else None
        password = urllib.parse.unquote(pw if sep else user)
    nodes = []
    for hp in hosts.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{redact(url)!r}: cluster nodes must be host:port[,host:port]")
        nodes.append((host.strip("[]"), int(port)))
    options = dict(urllib.parse.parse_qsl(query))
    return RedisTarget(True, nodes=tuple(nodes), username=username, password=password,
                       tls=tls, options=options)


def _wants_cluster(settings: Settings) -> bool:
    return bool(settings.plugin_options("redis").get("cluster", False))


def _common(settings: Settings, timeout_ms: float | None) -> dict[str, Any]:
    seconds = (timeout_ms if timeout_ms is not None else settings.deadlines.store_ms) / 1000.0
    return {
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "health_check_interval": 15,  # ping connections idle this long before reuse
        "client_name": f"rankly:{settings.namespace}",
    }


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    opts: dict[str, Any] = {"ssl": True}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if key in target.options:
            opts[key] = target.options[key]
    return opts


def make_redis(url: str, settings: Settings, *, timeout_ms: float | None = None) -> AsyncRedis:
    """Return a ``redis.asyncio`` client (``RedisCluster`` for cluster URLs) for ``url``.

    Timeouts default to ``settings.deadlines.store_ms``; pass ``timeout_ms`` for background
    work (model download, pub/sub). Failed calls are retried once, without backoff. Creating
    the client never connects: it works when Redis is down and reconnects by itself.
    """
    from redis.asyncio.retry import Retry

    target = parse_url(url, _wants_cluster(settings))
    retry = Retry(NoBackoff(), 1)
    common = _common(settings, timeout_ms)
    max_conn = int(settings.plugin_options("redis").get("max_connections", 128))
    if not target.cluster:
        # NOTE: a blocking pool makes a burst of requests wait (within the deadline) for a
        # free connection instead of failing with MaxConnectionsError and tripping the breaker
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            target.url, max_connections=max_conn, timeout=common["socket_timeout"] * 2,
            retry=retry, **common)
        return redis.asyncio.Redis(connection_pool=pool, retry=retry)
    nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=nodes, username=target.username, password=target.password,
        retry=retry, require_full_coverage=True, max_connections=max_conn * 4,
        **common, **_tls_options(target),
    )


def make_redis_sync(url: str, settings: Settings, *,
                    timeout_ms: float = BACKGROUND_TIMEOUT_MS) -> SyncRedis:
    """Return a blocking client for CLI tools (``rankly publish``); same URL rules."""
    from redis.retry import Retry

    target = parse_url(url, _wants_cluster(settings))
    retry = Retry(NoBackoff(), 1)
    common = _common(settings, timeout_ms)
    if not target.cluster:
        return redis.from_url(target.url, retry=retry, **common)
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.nodes]
    return redis.cluster.RedisCluster(
        startup_nodes=nodes, username=target.username, password=target.password,
        retry=retry, **common, **_tls_options(target),
    )


def make_pubsub_client(url: str, settings: Settings) -> redis.asyncio.Redis:
    """Return a standalone async client for pub/sub (long timeouts).

    On a cluster this is a client of the first seed node: classic ``PUBLISH`` is broadcast to
    every node of a cluster, so subscribing on any one node receives every message.
    """
    from redis.asyncio.retry import Retry

    target = parse_url(url, _wants_cluster(settings))
    common = _common(settings, BACKGROUND_TIMEOUT_MS)
    if not target.cluster:
        return redis.asyncio.from_url(target.url, retry=Retry(NoBackoff(), 1), **common)
    host, port = target.nodes[0]
    return redis.asyncio.Redis(host=host, port=port, username=target.username,
                               password=target.password, retry=Retry(NoBackoff(), 1),
                               **common, **_tls_options(target))


class CircuitOpen(StoreUnavailable):
    """Raised without calling Redis: the breaker is open after repeated failures."""


class GuardedRedis:
    """A client plus a circuit breaker and a hard per-call deadline.

    ``await guard.run(lambda r: r.get(k))`` returns the result, or raises ``StoreUnavailable``
    when Redis failed, exceeded ``deadline_s`` (default: twice ``store_ms``: one call and its
    single retry), refused the call (:data:`REFUSED`) or the breaker is open. A call
    cancelled from outside (the request's deadline, a client gone) is no verdict on Redis:
    it counts neither way, so requests that run out of time on slow scoring do not open the
    breaker over a healthy Redis; a cancelled probe gives its turn back
    (:meth:`Breaker.release`), so the breaker is never stuck half-open.
    """

    def __init__(self, client: AsyncRedis, settings: Settings, *,
                 breaker: Breaker | None = None, deadline_s: float | None = None,
                 name: str | None = None) -> None:
        self.client = client
        # a named breaker shows in rankly_breaker_open{component=name} while it is open
        self.breaker = breaker or Breaker(threshold=5, cooldown=1.0, name=name)
        self.deadline_s = (deadline_s if deadline_s is not None
                           else 2 * settings.deadlines.store_ms / 1000.0)

    async def run(self, fn: Callable[[AsyncRedis], Awaitable[T]], *,
                  deadline_s: float | None = None) -> T:
        if not self.breaker.allow():
            raise CircuitOpen("redis circuit open")
        deadline = deadline_s or self.deadline_s
        if getattr(self.client, "_initialize", False):
            # a cluster client's first call loads the slot map from every node (~100 ms):
            # a one-time cost per process, given its own budget
            deadline = max(deadline, CLUSTER_INIT_S)
        ok: bool | None = False
        try:
            async with asyncio.timeout(deadline):
                result = await fn(self.client)
            ok = True
            return result
        except asyncio.CancelledError:
            ok = None  # cancelled from outside: our own deadline raises TimeoutError
            raise
        except REFUSED as exc:
            ok = True  # Redis answered: an outage of this call, not of Redis
            raise StoreUnavailable(f"redis refused: {type(exc).__name__}: {exc}") from exc
        except redis.ResponseError:
            ok = True  # Redis answered (a command error is a bug, not an outage)
            raise
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        finally:
            if ok is None:
                self.breaker.release()
            elif ok:
                self.breaker.success()
            else:
                self.breaker.failure()

    async def close(self) -> None:
        close = getattr(self.client, "aclose", None) or self.client.close
        try:
            await close()
        except UNAVAILABLE:
            pass
