"""Trained model versions in Redis: publish, list, activate, download (the feature store)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model import MANIFEST, ArtifactError, load_model
from .keys import Keys
from .redis_client import (
    AsyncRedis,
    GuardedRedis,
)

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
        # NOTE: loaded as a worker will load it: a version no worker can load (a truncated
        # array, a missing part, another model's manifest) must never become active
        model = load_model(root)
        manifest = dict(model.manifest)
        version = model.version
        del model
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
        await self.prune(keep, also=(version,))
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

    async def prune(self, keep: int, also: tuple[str, ...] = ()) -> list[str]:
        """Delete all but the active version and the ``keep`` newest others (0: none), and
        never those in ``also`` (the version just published without activation)."""
        rows = await self._run(lambda r: r.zrange(self.keys.versions(), 0, -1))
        active = await self.active()
        others = [v.decode() for v in rows if v.decode() != active]
        old = others[:len(others) - keep] if keep < len(others) else []
        removed = []
        for version in old:
            if version in also:
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

    async def download(self, version: str, dest: str | Path, *, replace: bool = False) -> Path:
        """Write ``version``'s artifact directory to ``dest`` (atomically; verified by SHA-256).

        File paths come from Redis, so they are checked against the artifact layout: nothing
        can be written outside ``dest``. A ``dest`` holding a manifest by the end (another
        worker of this machine downloaded the version meanwhile, and may be loading it) is
        kept unless ``replace`` (a damaged copy). Returns ``dest``.
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
                    got = await self._run(lambda r, part=keys[start:start + 8]: r.mget(part))
                    if any(g is None for g in got):
                        raise ArtifactError(f"version {version}: {rel} is incomplete in Redis")
                    parts.extend(got)
                data = b"".join(parts)
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    raise ArtifactError(f"version {version}: {rel} fails its checksum")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if not replace and (dest / MANIFEST).exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            if dest.exists():
                # NOTE: moved aside in one rename, then deleted: a worker of this machine
                # never finds a half-deleted directory under the version's name
                aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".replaced-"))
                os.replace(dest, aside / "old")
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.replace(tmp, dest)
            except OSError:
                # another worker of this machine put its verified copy there meanwhile
                if not (dest / MANIFEST).exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest
