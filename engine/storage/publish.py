"""``rankly publish`` (model versions into Redis) and the serving side: loader and hot-swap watcher.

Offline: ``rankly publish --artifacts DIR --redis URL`` uploads a trained artifact directory as
a new version and flips the active pointer; ``--activate VERSION`` rolls back or forward;
``--list`` shows what is stored. Serving: :func:`load_serving_model` picks the model a worker
starts with, and :class:`ModelWatcher` swaps to each newly activated version (notified over
pub/sub, with a periodic poll as a safety net) without a restart or a failed request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from .. import metrics
from ..config import Settings, load_settings, non_negative_int
from ..model import MANIFEST, ArtifactError, Model, load_model
from .keys import Keys, escape_id
from .redis_client import (
    BACKGROUND_TIMEOUT_MS,
    GuardedRedis,
    is_redis_url,
    make_redis,
    redact,
)
from .store import Store, StoreUnavailable
from .versions import ModelVersions, VersionInfo

log = logging.getLogger("rankly.publish")
MODEL_CHANNEL = "model"
#: downloaded versions kept in ``<data_dir>/models/<namespace>`` (the ones served last)
LOCAL_KEEP = 3
#: a download directory untouched this long belongs to a worker that died mid-download
STALE_DOWNLOAD_SECONDS = 24 * 3600.0


# --- command line ----------------------------------------------------------------------------


def add_arguments(subparsers: Any) -> None:
    """Add the ``publish`` sub-command to the ``rankly`` parser."""
    p = subparsers.add_parser("publish", help="publish, activate or list model versions in Redis")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--artifacts", help="artifact directory to publish as a new version")
    what.add_argument("--activate", metavar="VERSION", help="make VERSION active (rollback)")
    what.add_argument("--list", action="store_true", help="list stored versions")
    p.add_argument("--redis", help="Redis URL (default: store_url / RANKLY_STORE_URL / REDIS_URL)")
    p.add_argument("--namespace", help="key namespace (default: settings namespace)")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--no-activate", action="store_true", help="upload without activating")
    p.add_argument("--keep", type=non_negative_int, default=5,
                   help="versions to keep besides the active one (default 5)")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    """Run ``rankly publish``; returns the exit status."""
    overrides = {"namespace": args.namespace, "store_url": args.redis}
    settings = load_settings(args.config, **overrides)
    if not is_redis_url(settings.store_url):
        print("rankly publish: --redis URL is required (or set REDIS_URL)", file=sys.stderr)
        return 2
    try:
        if args.list:
            rows = asyncio.run(list_versions(settings))
            for row in rows:
                when = dt.datetime.fromtimestamp(row.published_at, dt.UTC)
                print(f"{'*' if row.active else ' '} {row.version:<32} {when:%Y-%m-%d %H:%M:%S}Z "
                      f"{row.n_items:>9} items {row.n_users:>9} users "
                      f"{row.bytes / 2**20:>9.1f} MiB")
            if not rows:
                print("no model versions published in namespace", settings.namespace)
            return 0
        if args.activate:
            asyncio.run(activate_version(settings, args.activate))
            print(f"active model version: {args.activate}")
            return 0
        version = asyncio.run(publish_version(settings, args.artifacts,
                                              activate=not args.no_activate, keep=args.keep))
        state = "published" if args.no_activate else "published and activated"
        print(f"{state} model version {version} to {redact(settings.store_url)}")
        return 0
    except KeyError as exc:  # str() of a KeyError quotes its message
        print(f"rankly publish: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except ArtifactError as exc:
        print(f"rankly publish: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"rankly publish: Redis at {redact(settings.store_url)} unavailable: {exc}",
              file=sys.stderr)
        return 1


@contextlib.asynccontextmanager
async def _versions(settings: Settings):
    guard = GuardedRedis(make_redis(settings.store_url, settings,
                                    timeout_ms=BACKGROUND_TIMEOUT_MS),
                         settings, deadline_s=120.0)
    try:
        yield ModelVersions(guard, Keys(settings.namespace))
    finally:
        await guard.close()


async def publish_version(settings: Settings, artifacts: str | Path, *, activate: bool = True,
                          keep: int = 5) -> str:
    """Upload ``artifacts`` to ``settings.store_url``; return the version (activated if asked)."""
    async with _versions(settings) as versions:
        return await versions.publish(artifacts, activate=activate, keep=keep)


async def activate_version(settings: Settings, version: str) -> None:
    async with _versions(settings) as versions:
        await versions.activate(version)


async def list_versions(settings: Settings) -> list[VersionInfo]:
    async with _versions(settings) as versions:
        return await versions.list()


# --- serving: which model to start with, and hot swaps ---------------------------------------


def cache_dir(settings: Settings) -> Path:
    """Where downloaded versions are kept: ``<data_dir>/models/<namespace>/<version>``."""
    return Path(settings.data_dir) / "models" / settings.namespace


def local_name(version: str) -> str:
    """The directory name of ``version`` in :func:`cache_dir`: its escaped id, with a leading
    dot escaped too (never ``.``, ``..`` or a hidden name, which the cache keeps for its
    downloads in progress). Injective: an escaped id never holds ``%2E``."""
    name = escape_id(version)
    return "%2E" + name[1:] if name.startswith(".") else name


async def fetch_model(versions: ModelVersions, version: str, root: Path) -> Model:
    """Load ``version``, downloading it into ``root`` first unless already there.

    The loaded copy is marked as the last one served (its manifest's mtime, which
    :func:`newest_cached_model` orders by), and ``root`` is pruned to the
    :data:`LOCAL_KEEP` copies served last."""
    dest = root / local_name(version)
    model = None
    if (dest / MANIFEST).exists():
        try:
            model = await anyio.to_thread.run_sync(load_model, dest)
        except ArtifactError as exc:
            # NOTE: Redis holds the verified copy: a local one damaged since (a full disk, a
            # stray edit) is replaced, or this worker could never serve the version
            log.warning("local copy of model version %s is damaged (%s); downloading it "
                        "again", version, exc)
    if model is None:
        await versions.download(version, dest, replace=(dest / MANIFEST).exists())
        model = await anyio.to_thread.run_sync(load_model, dest)
    await anyio.to_thread.run_sync(_mark_served, dest)
    await anyio.to_thread.run_sync(prune_cache, root, dest)
    return model


def _mark_served(dest: Path) -> None:
    """Make ``dest`` the newest copy: after a rollback, the version rolled back to is the one
    a restart with Redis down must serve, not the newer download it replaced."""
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(dest / MANIFEST, ns=(now, now))


def _served_at(d: Path) -> int:
    try:
        return (d / MANIFEST).stat().st_mtime_ns
    except OSError:
        return 0


def prune_cache(root: Path, serving: Path, keep: int | None = None) -> list[Path]:
    """Delete downloaded versions in ``root`` but the ``keep`` (default :data:`LOCAL_KEEP`)
    served last and ``serving``, and downloads abandoned for :data:`STALE_DOWNLOAD_SECONDS`
    (a worker killed mid-download); return what was deleted.

    Workers serving a deleted copy keep reading it: its arrays stay mapped until unmapped.
    """
    keep = LOCAL_KEEP if keep is None else keep
    removed: list[Path] = []
    try:
        entries = [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return removed
    now = time.time()
    copies = sorted((d for d in entries if not d.name.startswith(".")), key=_served_at,
                    reverse=True)
    for d in copies[keep:]:
        if d != serving:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    for d in entries:
        if d.name.startswith((".download-", ".replaced-")):
            with contextlib.suppress(OSError):
                if now - d.stat().st_mtime > STALE_DOWNLOAD_SECONDS:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
    return removed


def newest_cached_model(settings: Settings) -> Model | None:
    """The version served last on this machine that still loads (Redis down at start)."""
    root = cache_dir(settings)
    dirs = sorted((d for d in root.glob("*")
                   if not d.name.startswith(".") and (d / MANIFEST).exists()),
                  key=_served_at)
    for d in reversed(dirs):
        try:
            return load_model(d)
        except ArtifactError:
            continue
    return None


async def load_serving_model(settings: Settings, store: Store) -> Model:
    """The model a worker starts with: ``settings.artifacts`` when set (the watcher then moves
    to Redis's active version, if any); else Redis's active version; else, with Redis down,
    the newest version downloaded earlier. Raises ``RuntimeError`` when there is none."""
    if settings.artifacts is not None:
        return await anyio.to_thread.run_sync(load_model, settings.artifacts)
    versions_of = getattr(store, "versions", None)
    if versions_of is not None:
        try:
            versions = versions_of()
            version = await versions.active()
            if version is not None:
                return await fetch_model(versions, version, cache_dir(settings))
        except StoreUnavailable as exc:
            log.warning("Redis unavailable at start (%s); trying a cached model", exc)
        cached = newest_cached_model(settings)
        if cached is not None:
            return cached
        raise RuntimeError("no model: Redis has no active version (run `rankly publish`) and "
                           "no artifacts are set (--artifacts DIR)")
    raise RuntimeError("no model: set artifacts (rankly serve --artifacts DIR)")


#: How long a worker waits before it downloads again a version that failed to load (a
#: damaged publish): every try downloads the whole model.
FAILED_RETRY_S = 300.0


class ModelWatcher:
    """Keep ``rt`` on Redis's active model version.

    Wakes on every ``model`` channel message and at least every ``poll_seconds``; when the
    active version differs from the served one it downloads and loads it, then calls
    ``rt.swap_model`` in a worker thread. Requests already running keep the components they
    started with, so none fails. Errors (Redis down, a corrupt version) are logged and retried
    on the next wake-up; a version that failed to download or load is tried again only after
    :data:`FAILED_RETRY_S` (each try downloads it whole), unless another one is activated.
    """

    def __init__(self, rt: Any, poll_seconds: float = 10.0) -> None:
        self.rt = rt
        self.poll_seconds = poll_seconds
        self.versions: ModelVersions = rt.store.versions()
        self.root = cache_dir(rt.settings)
        self.swaps = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self.clock = time.monotonic
        self._failed: tuple[str, float] | None = None  # (version, when it last failed)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="model-listen"),
                       asyncio.create_task(self._loop(), name="model-watch")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # NOTE: bounded: a redis-py call may swallow the cancellation for up to ~1 s
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []

    async def check(self) -> bool:
        """Swap to the active version if it changed; return True when a swap happened."""
        async with self._lock:
            version = await self.versions.active()
            if version is None or version == self.rt.model.version:
                return False
            if (self._failed is not None and self._failed[0] == version
                    and self.clock() - self._failed[1] < FAILED_RETRY_S):
                return False
            try:
                model = await fetch_model(self.versions, version, self.root)
            except (ArtifactError, KeyError, OSError):
                self._failed = (version, self.clock())
                raise
            self._failed = None
            old = self.rt.model.version
            await anyio.to_thread.run_sync(self.rt.swap_model, model)
            metrics.MODEL_INFO.labels(version).set(1)
            with contextlib.suppress(KeyError):
                metrics.MODEL_INFO.remove(old)
            self.swaps += 1
            log.info("hot-swapped model %s -> %s", old, version)
            return True

    async def _listen(self) -> None:
        async for _ in self.rt.store.subscribe(MODEL_CHANNEL):
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            try:
                await self.check()
            except (StoreUnavailable, ArtifactError, KeyError, OSError) as exc:
                log.warning("model watcher: %s", exc)
            except Exception:
                log.exception("model watcher failed; retrying on the next poll")


def start_model_watcher(rt: Any) -> ModelWatcher | None:
    """Start a :class:`ModelWatcher` when the store keeps model versions (Redis), else None."""
    if not hasattr(rt.store, "versions"):
        return None
    poll = float(rt.settings.plugin_options("redis").get("model_poll_seconds", 10.0))
    watcher = ModelWatcher(rt, poll_seconds=poll)
    watcher.start()
    return watcher
