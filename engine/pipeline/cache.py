"""The cache machinery of the request path, behind one call (:func:`cached_answer`).

Tiers are looked up in order (a hit in a slower tier fills the faster ones); a dirty hit is
revalidated against the store, a stale one served and refreshed behind; a miss is computed
once among concurrent requests (single flight) and stored in every tier.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..storage.store import StoreUnavailable
from ..types import RecommendationRequest
from .plan import Plan

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("rankly.pipeline")
#: A cache tier marks a hit due for early refresh (XFetch) with this field set to True.
REFRESH_FIELD = "_refresh"

#: A cache tier marks a hit whose user had an invalidating event since it was computed (the
#: L1's ``invalidation = "revalidate"``): served only through :func:`revalidate`.
DIRTY_FIELD = "_dirty"

#: Cached answers carry the next ranked items (``cache.spare_items``) under this field, to top
#: up a revalidated slate; never served. Fields starting with "_" are never served.
SPARE_FIELD = "_spare"

#: The computation's impression features (feedback/served.py): a capture on a computed answer,
#: its JSON record in a cache entry. Handed to the impression log by :func:`rank`, never served.
FEATURES_FIELD = "_features"

#: When the computation of a cached answer started (``time.monotonic()``, this process): an
#: in-process tier compares it with the user's last invalidation (see LocalCache.set).
STARTED_FIELD = "_started"

#: The start time given to an answer copied from a slower tier into the faster ones: earlier
#: than any invalidation, so a tier that compares start times stores it dirty (or not at all)
#: when its user was invalidated lately.
UNKNOWN_START = float("-inf")

_refreshing: set[asyncio.Task] = set()  # strong references to background recomputes

_queued: set[str] = set()  # cache keys whose background refresh waits for a slot

_refresh_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class Computed:
    """A freshly computed answer, as the computation hands it to the cache."""

    #: the JSON-ready answer, without ``request_id`` and ``cached``
    payload: dict
    #: whether the tiers may keep it (a fallback answer is served, never cached)
    cacheable: bool = True
    #: the next ranked items after the slate, to top up a revalidated one (``cache.spare_items``)
    spares: list[dict] | None = None


Compute = Callable[[], Awaitable[Computed]]


async def cached_answer(rt: Runtime, key: str, user_id: str | None,
                        compute: Compute) -> tuple[dict, bool]:
    """The answer for ``key`` and whether it came from a cache tier.

    A hit is served (a dirty one only once :func:`revalidate` made it safe; a stale or dirty
    one is recomputed behind it, see :func:`refresh_behind`). A miss is computed once however
    many requests ask for the key at the same time (single flight) and stored in every tier.
    The payload never carries the fields starting with "_", but :data:`FEATURES_FIELD`.
    """
    hit = await lookup_cache(rt, key, user_id)
    if hit is not None:
        stale = bool(hit.get(REFRESH_FIELD))
        if hit.get(DIRTY_FIELD):
            hit, stale = await revalidate(rt, user_id, hit), True
        if hit is not None:
            if stale:  # serve it, recompute behind it
                refresh_behind(rt, key, lambda: fill(rt, key, user_id, compute))
            return served(hit), True
    # NOTE: a computation of this key may have finished while this request was looking the
    # key up (its lookup missed, the flight is gone); the first tier then has the answer. An
    # in-process tier answers without suspending, so nothing can slip between this and run().
    if rt.caches and key not in rt.flights:
        try:
            recent = await rt.caches[0][1].get(key, user_id)
        except Exception:  # counted by lookup_cache's failed get just before; compute instead
            recent = None
        if recent is not None and not recent.get(REFRESH_FIELD) and not recent.get(DIRTY_FIELD):
            return served(recent), True
    payload, shared, started = await rt.flights.run_since(
        key, lambda: fill(rt, key, user_id, compute))
    if shared and user_id is not None and _invalidated_after(rt, user_id, started):
        # NOTE: this request joined a computation that began before its user's invalidating
        # event (a purchase acknowledged meanwhile): checked like a dirty entry, or computed
        # afresh when too few spare items are left
        payload = await revalidate(rt, user_id, payload) or await fill(
            rt, key, user_id, compute)
    return served(payload), False


def _invalidated_after(rt: Runtime, user_id: str, started: float) -> bool:
    """Whether a tier that remembers invalidations (the L1) saw ``user_id``'s at or after
    ``started`` (``time.monotonic()``)."""
    for _, cache in rt.caches:
        check = getattr(cache, "invalidated_after", None)
        if check is not None and check(user_id, started):
            return True
    return False


async def fill(rt: Runtime, key: str, user_id: str | None, compute: Compute) -> dict:
    """Compute the answer for ``key`` and store it in every tier when it may be cached."""
    started = time.monotonic()
    fresh = await compute()
    if fresh.cacheable:
        entry = {**fresh.payload, STARTED_FIELD: started}
        features = entry.get(FEATURES_FIELD)
        if features is not None and rt.caches:
            # NOTE: encoded here, on the miss path, because a tier keeps JSON; every hit of
            # the entry then logs these bytes as they are (#16). Without tiers the impression
            # logger encodes it off the request path
            entry[FEATURES_FIELD] = features.record()
        if fresh.spares:
            entry[SPARE_FIELD] = fresh.spares
        await store_cache(rt, key, user_id, entry)
    # the spare items go to whoever shares this computation (served() takes them out)
    return {**fresh.payload, SPARE_FIELD: fresh.spares} if fresh.spares else fresh.payload


def cache_key(req: RecommendationRequest, plan: Plan, version: str) -> str:
    """Everything that changes the answer: user, n, filters, session, plan (its components
    and their options), model version."""
    # NOTE: a variant's options are in the key, not only its name: a PUT of the experiment
    # may change them and keep the name, and its users must not be served the old answers
    options = json.dumps(plan.options, sort_keys=True, default=str) if plan.options else ""
    return _hashed_key(req.user_id or "", req.n, tuple(req.exclude), tuple(req.categories),
                       tuple(req.session_items), plan.experiment or "", plan.variant or "",
                       tuple(plan.candidates), tuple(plan.scorers), tuple(plan.rerankers),
                       options, version)


# NOTE: memoized: a cached answer's key is asked for on every hit, and hashing it again cost
# more than the rest of the lookup (#16). The arguments are strings and tuples of them.
@functools.lru_cache(maxsize=1 << 14)
def _hashed_key(user_id: str, n: int, exclude: tuple[str, ...], categories: tuple[str, ...],
                session: tuple[str, ...], experiment: str, variant: str,
                candidates: tuple[str, ...], scorers: tuple[str, ...],
                rerankers: tuple[str, ...], options: str, version: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in (user_id, str(n), "\x1f".join(sorted(exclude)), "\x1f".join(sorted(categories)),
                 "\x1f".join(session), experiment, variant, ",".join(candidates),
                 ",".join(scorers), ",".join(rerankers), options, version):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


async def lookup_cache(rt: Runtime, key: str, user_id: str | None = None) -> dict | None:
    """First hit over the tiers in order; a hit in a slower tier also fills the faster ones."""
    for pos, (tier, cache) in enumerate(rt.caches):
        start = time.perf_counter()
        try:
            value = await cache.get(key, user_id)
        except Exception:
            log.warning("cache tier %s failed on get", tier, exc_info=True)
            metrics.child(metrics.CACHE_LOOKUPS, tier, "error").inc()
            continue
        metrics.child(metrics.STAGE_LATENCY, "cache", tier).observe(time.perf_counter() - start)
        metrics.child(metrics.CACHE_LOOKUPS, tier, "hit" if value is not None else "miss").inc()
        if value is not None:
            # a hit in a slower tier fills the faster ones (a dirty one does not: the
            # refresh that follows it fills every tier)
            if pos and not value.get(DIRTY_FIELD):
                # NOTE: when it was computed is unknown here (another process's start time
                # means nothing), so it is filled as computed before any invalidation the
                # faster tiers remember: a worker hears of a purchase (pub/sub) before the
                # slower tier is marked, and a clean read in between must not stay clean
                fresh = {k: v for k, v in value.items()
                         if k not in (REFRESH_FIELD, DIRTY_FIELD, STARTED_FIELD)}
                fresh[STARTED_FIELD] = UNKNOWN_START
                await store_cache(rt, key, user_id, fresh, rt.caches[:pos])
            return value
    return None


async def revalidate(rt: Runtime, user_id: str | None, entry: dict) -> dict | None:
    """A dirty cache entry made safe to serve, or None when it cannot be (then the request
    computes a fresh answer). When the store cannot be read it is served as it is.

    The user had an invalidating event (a purchase, say) after ``entry`` was computed, and the
    store already has it. Items the user has now seen are removed and the slate is topped up
    from the entry's spare items, the next ones of the same ranking, so it keeps its length
    and the rerankers' order. It costs one store read (``fetch_user``) instead of a
    computation; the caller recomputes the key in the background (#9).
    """
    if not rt.settings.pipeline.exclude_seen:
        metrics.REVALIDATIONS.labels("served").inc()
        return entry
    try:
        async with asyncio.timeout(rt.settings.deadlines.store_ms / 1000.0 * 2):
            online = await rt.store.fetch_user(user_id)
    except (StoreUnavailable, TimeoutError, OSError):
        # NOTE: served as it is: what the user has seen since is in the store, so no answer
        # can leave it out now, and the store_down fallback would not be personalized either
        metrics.REVALIDATIONS.labels("store_down").inc()
        return entry
    seen = set(online.seen)
    seen.update(online.history)
    items = entry["items"]
    keep = [it for it in items if it["item_id"] not in seen]
    if len(keep) == len(items):
        metrics.REVALIDATIONS.labels("served").inc()
        return entry
    spare = [it for it in entry.get(SPARE_FIELD, ()) if it["item_id"] not in seen]
    need = len(items) - len(keep)
    if len(spare) < need:
        metrics.REVALIDATIONS.labels("too_few_spares").inc()
        return None
    metrics.REVALIDATIONS.labels("topped_up").inc()
    return {**entry, "items": keep + spare[:need], SPARE_FIELD: spare[need:]}


def served(entry: dict) -> dict:
    """A cache entry as :func:`rank` hands it on: without the fields starting with "_", but
    the impression features (which it takes out before the client sees the answer)."""
    return {k: v for k, v in entry.items() if k[0] != "_" or k == FEATURES_FIELD}


async def store_cache(rt: Runtime, key: str, user_id: str | None, payload: dict,
                      tiers: list | None = None) -> None:
    for tier, cache in rt.caches if tiers is None else tiers:
        try:
            await cache.set(key, user_id, payload)
        except Exception:
            log.warning("cache tier %s failed on set", tier, exc_info=True)


def refresh_behind(rt: Runtime, key: str, fn: Any) -> None:
    """Recompute ``key`` in the background, at most ``cache.max_background_refreshes`` at a
    time per event loop (a worker serves one runtime per loop; the first runtime's setting
    sizes the loop's slots); a key already queued or in flight is not queued again."""
    if key in _queued or key in rt.flights:
        return
    _queued.add(key)
    task = asyncio.create_task(_refresh(rt, key, fn))
    _refreshing.add(task)
    task.add_done_callback(_refreshed)


async def _refresh(rt: Runtime, key: str, fn: Any) -> None:
    loop = asyncio.get_running_loop()
    slots = _refresh_slots.get(loop)
    if slots is None:
        slots = _refresh_slots[loop] = asyncio.Semaphore(rt.settings.cache.max_background_refreshes)
    try:
        async with slots:
            _queued.discard(key)
            await rt.flights.run(key, fn)
    finally:
        _queued.discard(key)


def _refreshed(task: asyncio.Task) -> None:
    _refreshing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background cache refresh failed", exc_info=task.exception())
