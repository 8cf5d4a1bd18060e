"""The Redis store (online user state, pub/sub) and the model-version feature store on Redis.

Per user: ``<ns>:{u:<id>}:history`` (list, most recent first, bounded) and
``<ns>:{u:<id>}:seen`` (set), both forgotten ``user_state_ttl_days`` after the user's last
interaction; they share one hash tag, so :meth:`RedisStore.fetch_user` is one
pipeline to one node, also on a cluster. Model versions: see :class:`ModelVersions`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankly.engine.config import ConfigError, Settings
from rankly.engine.keys import Keys
from rankly.engine.model import MANIFEST, ArtifactError
from rankly.engine.redis_client import (
    BACKGROUND_TIMEOUT_MS,
    UNAVAILABLE,
    AsyncRedis,
    GuardedRedis,
    make_pubsub_client,
    make_redis,
    redact,
)
from rankly.engine.store import EMPTY_USER, OnlineUser, Store, StoreUnavailable

log = logging.getLogger("rankly.redis")

# KEYS: history, seen. ARGV: item, history limit, "1" to add to seen, TTL ms (0: none). Atomic
# on one slot. Every interaction renews the TTL of both keys: a user's online state is
# forgotten after that long without one.
RECORD_INTERACTION = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""
#: Days without an interaction after which Redis forgets a user's online history and seen set
#: (``[plugins.redis] user_state_ttl_days``; 0 keeps them forever). The trained history still
#: excludes what the model was trained on.
USER_STATE_TTL_DAYS = 180.0
PROJECTION_CHUNK = 500  # rows per pipeline of record_interactions
PROJECTION_DEADLINE_S = 2.0  # per pipeline, like the event stream's appends


class RedisStore(Store):
    """Online user state in Redis; one pipeline round trip per ``fetch_user``.

    Holds two guarded clients: ``guard`` for the request path (``deadlines.store_ms``, one
    retry, breaker) and ``background`` for bulk work (model download, 5 s timeouts).
    """

    kind = "redis"

    def __init__(self, url: str, settings: Settings, history_limit: int | None = None) -> None:
        opts = settings.plugin_options("redis")
        self.url = url
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.history_limit = int(history_limit or opts.get("history_limit", 200))
        ttl_days = float(opts.get("user_state_ttl_days", USER_STATE_TTL_DAYS))
        if ttl_days < 0:
            raise ConfigError("plugins.redis.user_state_ttl_days must be >= 0")
        self.user_state_ttl_ms = int(ttl_days * 86_400_000)
        self.guard = GuardedRedis(make_redis(url, settings), settings)
        self.background = GuardedRedis(
            make_redis(url, settings, timeout_ms=BACKGROUND_TIMEOUT_MS), settings,
            deadline_s=60.0,
        )
        self._record = self.guard.client.register_script(RECORD_INTERACTION)

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, namespace={self.keys.namespace!r})"

    async def ping(self) -> bool:
        try:
            return bool(await self.guard.run(lambda r: r.ping()))
        except StoreUnavailable:
            return False

    async def fetch_user(self, user_id: str) -> OnlineUser:
        hist_key = self.keys.user(user_id, "history")
        seen_key = self.keys.user(user_id, "seen")

        async def query(r: AsyncRedis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.lrange(hist_key, 0, self.history_limit - 1)
            pipe.smembers(seen_key)
            return await pipe.execute()

        history, seen = await self.guard.run(query)
        if not history and not seen:
            return EMPTY_USER
        return OnlineUser(tuple(h.decode() for h in history), frozenset(s.decode() for s in seen))

    async def record_interaction(self, user_id: str, item_id: str, *, seen: bool) -> None:
        keys = [self.keys.user(user_id, "history"), self.keys.user(user_id, "seen")]
        args = [item_id, self.history_limit, "1" if seen else "0", self.user_state_ttl_ms]
        await self.guard.run(lambda r: self._record(keys=keys, args=args))

    async def record_interactions(self, rows: Sequence[tuple[str, str, bool]]) -> None:
        """One pipeline of the same script per ``PROJECTION_CHUNK`` rows, on the background
        client: the events projection is bulk work, kept off the request path's client, its
        30 ms budget and its breaker (one call per event cost ~15% of the event loop under
        a sustained load, benchmarks/README.md). EVAL, not EVALSHA: a cluster pipeline
        cannot reload a script a node has not seen; Redis caches it after the first call."""
        for start in range(0, len(rows), PROJECTION_CHUNK):
            chunk = rows[start:start + PROJECTION_CHUNK]

            async def write(r: AsyncRedis, chunk: Sequence[tuple[str, str, bool]] = chunk
                            ) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                for user_id, item_id, seen in chunk:
                    pipe.eval(RECORD_INTERACTION, 2, self.keys.user(user_id, "history"),
                              self.keys.user(user_id, "seen"), item_id, self.history_limit,
                              "1" if seen else "0", self.user_state_ttl_ms)
                return await pipe.execute()

            await self.background.run(write, deadline_s=PROJECTION_DEADLINE_S)

    async def publish(self, channel: str, message: str) -> None:
        name = self.keys.channel(channel)
        await self.guard.run(lambda r: r.publish(name, message))

    async def subscribe(self, channel: str) -> AsyncIterator[str | None]:
        """Yield messages of ``channel``; reconnects by itself (0.2-2 s backoff), yielding
        ``None`` after every (re)subscription. On a cluster, listens on one seed node."""
        name = self.keys.channel(channel)
        backoff = 0.2
        me = asyncio.current_task()
        while True:
            client = make_pubsub_client(self.url, self.settings)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(name)
                backoff = 0.2
                yield None
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if me is not None and me.cancelling():
                        # redis-py may swallow a cancellation inside get_message
                        raise asyncio.CancelledError
                    if msg is not None and msg.get("type") == "message":
                        data = msg["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except UNAVAILABLE as exc:
                log.debug("subscription to %s lost (%s); retrying", name, exc)
            finally:
                await _quietly(pubsub.aclose())
                await _quietly(client.aclose())
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def versions(self) -> ModelVersions:
        """The model-version feature store of this namespace (uses the background client)."""
        return ModelVersions(self.background, self.keys)

    async def close(self) -> None:
        await self.guard.close()
        await self.background.close()


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except (*UNAVAILABLE, RuntimeError):
        pass


# --- model versions: the feature store -------------------------------------------------------

CHUNK_BYTES = 4 * 1024 * 1024
_PATH_OK = re.compile(r"(?:[A-Za-z0-9_\-]+/){0,3}[A-Za-z0-9_\-.]+\.(?:npy|json)")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    published_at: float
    active: bool
    n_items: int
    n_users: int
    bytes: int


class ModelVersions:
    """Publish, list, activate and download trained model versions in Redis.

    A version is every file of its artifact directory, stored in chunks of 4 MiB under
    ``<ns>:model:{v:<version>}:blob:<file>:<chunk>``, plus a JSON description (the artifact
    manifest, each file's path, size and SHA-256) written *after* the blobs. The active
    version is one string key, flipped with one ``SET`` (atomic) and announced on the
    ``model`` channel. Versions stay until pruned, so a rollback is one :meth:`activate`.
    """

    def __init__(self, guard: GuardedRedis, keys: Keys) -> None:
        self.guard = guard
        self.keys = keys

    async def _run(self, fn: Any) -> Any:
        return await self.guard.run(fn)

    async def publish(self, artifacts: str | Path, *, activate: bool = True,
                      keep: int = 5) -> str:
        """Upload the artifact directory ``artifacts``; return its version.

        With ``activate``, flip the active pointer to it afterwards. Keeps the ``keep`` most
        recent versions plus the active one, deleting older ones.
        """
        root = Path(artifacts)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{root}: not an artifact directory ({exc})") from None
        version = str(manifest["version"])
        files = []
        for no, path in enumerate(sorted(p for p in root.rglob("*") if p.is_file()
                                         and not p.name.startswith("."))):
            rel = path.relative_to(root).as_posix()
            if not _PATH_OK.fullmatch(rel):
                raise ArtifactError(f"{root}: unexpected file {rel!r} in an artifact directory")
            data = path.read_bytes()
            chunks = max(1, -(-len(data) // CHUNK_BYTES))
            for start in range(0, chunks, 8):  # at most 32 MiB per round trip

                async def put(r: AsyncRedis, start: int = start, data: bytes = data,
                              no: int = no, chunks: int = chunks) -> None:
                    pipe = r.pipeline(transaction=False)
                    for c in range(start, min(start + 8, chunks)):
                        blob = data[c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES]
                        pipe.set(self.keys.version_blob(version, no, c), blob)
                    await pipe.execute()

                await self._run(put)
            files.append({"path": rel, "size": len(data), "chunks": chunks,
                          "sha256": hashlib.sha256(data).hexdigest()})
        doc = json.dumps({"manifest": manifest, "files": files, "published_at": time.time()})
        await self._run(lambda r: r.set(self.keys.version_manifest(version), doc))
        await self._run(lambda r: r.zadd(self.keys.versions(), {version: time.time()}))
        if activate:
            await self.activate(version)
        await self.prune(keep)
        return version

    async def activate(self, version: str) -> None:
        """Make ``version`` the active one (one ``SET``) and notify serving workers."""
        exists = await self._run(lambda r: r.exists(self.keys.version_manifest(version)))
        if not exists:
            raise KeyError(f"model version {version!r} is not published")
        await self._run(lambda r: r.set(self.keys.active_version(), version))
        await self._run(lambda r: r.publish(self.keys.channel("model"), version))

    async def active(self) -> str | None:
        value = await self._run(lambda r: r.get(self.keys.active_version()))
        return value.decode() if value is not None else None

    async def describe(self, version: str) -> dict[str, Any] | None:
        raw = await self._run(lambda r: r.get(self.keys.version_manifest(version)))
        return None if raw is None else json.loads(raw)

    async def list(self) -> list[VersionInfo]:
        """Published versions, oldest first."""
        rows = await self._run(lambda r: r.zrange(self.keys.versions(), 0, -1, withscores=True))
        active = await self.active()
        out = []
        for raw, score in rows:
            version = raw.decode()
            doc = await self.describe(version)
            if doc is None:
                continue
            m = doc["manifest"]
            out.append(VersionInfo(version, float(score), version == active,
                                   int(m.get("n_items", 0)), int(m.get("n_users", 0)),
                                   sum(f["size"] for f in doc["files"])))
        return out

    async def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (never the active one)."""
        rows = await self._run(lambda r: r.zrange(self.keys.versions(), 0, -1))
        active = await self.active()
        old = [v.decode() for v in rows][:-keep] if keep > 0 else []
        removed = []
        for version in old:
            if version == active:
                continue
            await self.delete(version)
            removed.append(version)
        return removed

    async def delete(self, version: str) -> None:
        doc = await self.describe(version)
        await self._run(lambda r: r.zrem(self.keys.versions(), version))
        await self._run(lambda r: r.delete(self.keys.version_manifest(version)))
        if doc is None:
            return
        blobs = [self.keys.version_blob(version, no, c)
                 for no, f in enumerate(doc["files"]) for c in range(f["chunks"])]
        for start in range(0, len(blobs), 256):
            await self._run(lambda r, s=start: r.delete(*blobs[s:s + 256]))

    async def download(self, version: str, dest: str | Path) -> Path:
        """Write ``version``'s artifact directory to ``dest`` (atomically; verified by SHA-256).

        File paths come from Redis, so they are checked against the artifact layout: nothing
        can be written outside ``dest``. Returns ``dest``.
        """
        dest = Path(dest)
        doc = await self.describe(version)
        if doc is None:
            raise KeyError(f"model version {version!r} is not published")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".download-"))
        try:
            for no, f in enumerate(doc["files"]):
                rel = f["path"]
                if not _PATH_OK.fullmatch(rel) or ".." in rel.split("/"):
                    raise ArtifactError(f"version {version}: refusing file path {rel!r}")
                keys = [self.keys.version_blob(version, no, c) for c in range(f["chunks"])]
                parts: list[bytes] = []
                for start in range(0, len(keys), 8):
                    got = await self._run(lambda r, s=start: r.mget(keys[s:s + 8]))
                    if any(g is None for g in got):
                        raise ArtifactError(f"version {version}: {rel} is incomplete in Redis")
                    parts.extend(got)
                data = b"".join(parts)
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    raise ArtifactError(f"version {version}: {rel} fails its checksum")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest
