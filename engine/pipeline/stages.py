"""The request path: cache -> features -> candidates -> filter -> score -> rerank -> respond.

``rank()`` reads top to bottom; each stage is one short function below it, timed once here.
CPU stages run in one worker thread under the request deadline; anything that raises, hangs
or returns garbage is skipped and the answer degrades to the fallback scorer, never to an error.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankly import _fast
from rankly.engine import metrics, quality
from rankly.engine.experiments import Assignment, assign_user
from rankly.engine.model import Model
from rankly.engine.runtime import Components, Runtime
from rankly.engine.store import EMPTY_USER, OnlineUser, StoreUnavailable
from rankly.engine.types import (
    Candidates,
    CatalogScorer,
    Ranking,
    Reason,
    RecommendationRequest,
    UserFeatures,
)

log = logging.getLogger("rankly.pipeline")
#: Worker threads of the selection stage, shared by the process's event loops. Enough of them
#: that plugins hanging past their deadline (abandoned, still running) do not starve it.
SELECT_THREADS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="rankly-select")

MIN_RERANK_DEPTH = 50
#: A cache tier marks a hit due for early refresh (XFetch) with this field set to True.
REFRESH_FIELD = "_refresh"
#: A cache tier marks a hit whose user had an invalidating event since it was computed (the
#: L1's ``invalidation = "revalidate"``): served only through :func:`revalidate`.
DIRTY_FIELD = "_dirty"
#: Cached answers carry the next ranked items (``cache.spare_items``) under this field, to top
#: up a revalidated slate; never served. Fields starting with "_" are never served.
SPARE_FIELD = "_spare"
#: When the computation of a cached answer started (``time.monotonic()``, this process): an
#: in-process tier compares it with the user's last invalidation (see LocalCache.set).
STARTED_FIELD = "_started"
_refreshing: set[asyncio.Task] = set()  # strong references to background recomputes
_queued: set[str] = set()  # cache keys whose background refresh waits for a slot
_refresh_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class Plan:
    """Which components serve this request: the defaults or an experiment variant's."""

    candidates: tuple[str, ...]
    scorers: tuple[str, ...]
    rerankers: tuple[str, ...]
    variant: str | None = None
    experiment: str | None = None
    probability: float | None = None
    options: Mapping[str, Mapping[str, Any]] | None = None


@dataclass
class Trace:
    """What happened while computing one answer: the fallback reason, each component call's
    outcome ("ok", "error", "invalid", "timeout") for its breaker, and stage timings."""

    fallback: str | None = None
    current: str = ""
    spares: Ranking | None = None  # the ranked items after the slate (cache.spare_items)
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    stages: list[tuple[str, str, float]] = field(default_factory=list)

    #: a component the general path leaves out (its fused call just failed)
    skip: str = ""
    #: (name, component) that explains a fused pool's items (see :func:`explained`)
    explainer: tuple[str, Any] | None = None

    def ok(self, component: str) -> None:
        self.outcomes.append((component, "ok"))

    def fail(self, component: str, kind: str, fallback: str) -> None:
        self.outcomes.append((component, kind))
        self.fallback = self.fallback or fallback


def default_plan(rt: Runtime) -> Plan:
    p = rt.settings.pipeline
    made = _default_plan
    if made[0] is not p:  # built once per settings: every request asks (#16)
        made[:] = [p, Plan(p.candidates, p.scorers, p.rerankers)]
    return made[1]


_default_plan: list[Any] = [None, None]  # [pipeline settings, their plan]


def choose_plan(rt: Runtime, req: RecommendationRequest) -> tuple[Plan, Assignment | None]:
    """The experiment variant's plan for this user, or the default plan (O(experiments))."""
    base = default_plan(rt)
    if not rt.experiments.running:
        return base, None
    a = assign_user(rt.experiments, req.user_id)
    if a is None:
        return base, None
    o = a.overrides
    return Plan(
        candidates=base.candidates if o.candidates is None else o.candidates,
        scorers=base.scorers if o.scorers is None else o.scorers,
        rerankers=base.rerankers if o.rerankers is None else o.rerankers,
        variant=a.variant_name or "holdout",
        experiment=a.experiment.key,
        probability=a.probability,
        options=o.options or None,
    ), a


#: Share of the request deadline the pipeline may use; the rest is left for serializing.
DEADLINE_SHARE = 0.95


def request_deadline(rt: Runtime) -> float:
    """Event-loop time by which a request started now must have its answer."""
    budget = rt.settings.deadlines.request_ms / 1000.0 * DEADLINE_SHARE
    return asyncio.get_running_loop().time() + budget


async def rank(rt: Runtime, req: RecommendationRequest, plan: Plan,
               deadline: float | None = None) -> dict:
    """Answer one recommendation request (JSON-ready); never raises for plugin/store failures.

    Whatever is slow (a frozen store, a loaded machine), the answer is ready by ``deadline``
    (event-loop time, default :func:`request_deadline`): past it the caller gets the fallback
    (``"fallback": "deadline"``) while the computation carries on and fills the cache.
    """
    try:
        async with asyncio.timeout_at(request_deadline(rt) if deadline is None else deadline):
            return await _rank(rt, req, plan)
    except TimeoutError:
        metrics.child(metrics.FALLBACKS, "deadline").inc()
        return safe_answer(rt, req, plan, "deadline")


def safe_answer(rt: Runtime, req: RecommendationRequest, plan: Plan, reason: str) -> dict:
    """The fallback slate without any I/O (trained history and session only, no store, no
    plugins), for when the pipeline cannot answer: past the deadline, or it raised."""
    comps = rt.components
    model = comps.model
    row = model.users.row(req.user_id)
    parts = [model.users.history(row)]
    if req.session_items:
        parts.append(model.catalog.lookup(req.session_items))
    seen = np.concatenate(parts)
    user = UserFeatures(req.user_id, row, seen, np.unique(seen[seen >= 0]),
                        session=bool(req.session_items))
    trace = Trace(fallback=reason)
    ranking = fallback_ranking(comps, user, req, req.n)
    return {**respond(comps, req, plan, user, ranking, trace), "cached": False,
            "request_id": req.request_id}


async def _rank(rt: Runtime, req: RecommendationRequest, plan: Plan) -> dict:
    comps = rt.components_for(plan.options)  # one snapshot: a hot swap does not mix models
    key = cache_key(req, plan, comps.model.version)
    hit = await lookup_cache(rt, key, req.user_id)
    if hit is not None:
        stale = bool(hit.get(REFRESH_FIELD))
        if hit.get(DIRTY_FIELD):
            hit, stale = await revalidate(rt, req, hit), True
        if hit is not None:
            if stale:  # serve it, recompute behind it
                refresh_behind(rt, key, lambda: compute(rt, comps, req, plan, key))
            return served(hit, True, req.request_id)
    # NOTE: a computation of this key may have finished while this request was looking the
    # key up (its lookup missed, the flight is gone); the first tier then has the answer. An
    # in-process tier answers without suspending, so nothing can slip between this and run().
    if rt.caches and key not in rt.flights:
        recent = await rt.caches[0][1].get(key, req.user_id)
        if recent is not None and not recent.get(REFRESH_FIELD) and not recent.get(DIRTY_FIELD):
            return served(recent, True, req.request_id)
    payload, _shared = await rt.flights.run(key, lambda: compute(rt, comps, req, plan, key))
    return {**payload, "cached": False, "request_id": req.request_id}


def served(entry: dict, cached: bool, request_id: str | None) -> dict:
    """A cache entry as the client sees it: without the fields starting with "_"."""
    out = {k: v for k, v in entry.items() if k[0] != "_"}
    out["cached"] = cached
    out["request_id"] = request_id
    return out


async def revalidate(rt: Runtime, req: RecommendationRequest, entry: dict) -> dict | None:
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
            online = await rt.store.fetch_user(req.user_id)
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


async def compute(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
                  key: str) -> dict:
    """Compute a fresh answer (payload without request_id) and store it in every tier."""
    started = time.monotonic()
    trace = Trace()
    user = await fetch_features(rt, comps.model, req, trace)
    deadline = rt.settings.deadlines.request_ms / 1000.0
    try:
        if inline(rt, comps, plan):
            ranking = select(rt, comps, req, plan, user, trace)
        else:
            # a worker thread: a plugin that hangs is abandoned at the deadline (the thread
            # finishes or hangs on its own) and the request gets the fallback
            async with asyncio.timeout(deadline * 0.8):
                ranking = await asyncio.get_running_loop().run_in_executor(
                    SELECT_THREADS, select, rt, comps, req, plan, user, trace)
        rt.breakers.success("pipeline")  # computed in time: an open pipeline breaker closes
    except TimeoutError:
        stuck = trace.current or "pipeline"
        record_outcome(rt, stuck, "timeout")
        trace.fallback = "plugin_timeout"
        trace.spares = None
        ranking = fallback_ranking(comps, user, req, req.n)
    for stage, component, seconds in trace.stages:
        metrics.child(metrics.STAGE_LATENCY, stage, component).observe(seconds)
    for component, kind in trace.outcomes:
        record_outcome(rt, component, kind)
    if trace.fallback:
        metrics.child(metrics.FALLBACKS, trace.fallback).inc()
    payload = respond(comps, req, plan, user, ranking, trace)
    quality.observe(rt, comps.model, ranking.items, user.is_cold)
    if trace.fallback in (None, "cold_start"):
        entry = {**payload, STARTED_FIELD: started}
        if trace.spares is not None and len(trace.spares):
            entry[SPARE_FIELD] = slate_items(comps.model, user, trace.spares)
        await store_cache(rt, key, req.user_id, entry)
    return payload


def inline(rt: Runtime, comps: Components, plan: Plan) -> bool:
    """Whether to select on the event loop (``pipeline.inline_selection``): by default when
    every component of the plan is one of rankly's own, whose cost is bounded. A thread hop
    and the caches of another core cost a miss of the default about as much as the selection
    itself; a third-party plugin keeps the worker thread, whose deadline can abandon it."""
    mode = rt.settings.pipeline.inline_selection
    if mode != "auto":
        return mode == "always"
    return comps.builtin_only(plan.candidates, plan.scorers, plan.rerankers)


async def warm_up(rt: Runtime) -> float:
    """Run the default plan once for the first trained user, off the record (no store, no
    cache, no metrics, no breakers); return the seconds it took.

    A process's first computation pays one-time costs: the selection worker
    thread, first touches of the memory-mapped factors, NumPy's first calls. On ML-100K the
    first request took 24 ms against 4 ms for the next ones, and 3 ms after this ran
    (``python benchmarks/first_request.py``); the app runs it before it serves.
    """
    comps = rt.components
    model = comps.model
    start = time.perf_counter()
    if len(model.users) == 0:
        return 0.0
    history = model.users.history(0)
    user = UserFeatures(str(model.users.user_ids[0]), 0, history, np.unique(history))
    req = RecommendationRequest(user_id=user.user_id, n=rt.settings.limits.n_default,
                                request_id="warm-up")
    try:
        async with asyncio.timeout(5 * rt.settings.deadlines.request_ms / 1000.0):
            await asyncio.get_running_loop().run_in_executor(
                SELECT_THREADS, select, rt, comps, req, default_plan(rt), user, Trace())
    except Exception:  # a broken plugin shows on real requests, with its breaker
        log.warning("warm-up computation failed", exc_info=True)
    return time.perf_counter() - start


# --- stages, in order -----------------------------------------------------------------------


def cache_key(req: RecommendationRequest, plan: Plan, version: str) -> str:
    """Everything that changes the answer: user, n, filters, session, plan, model version."""
    return _hashed_key(req.user_id or "", req.n, tuple(req.exclude), tuple(req.categories),
                       tuple(req.session_items), plan.experiment or "", plan.variant or "",
                       tuple(plan.candidates), tuple(plan.scorers), tuple(plan.rerankers),
                       version)


# NOTE: memoized: a cached answer's key is asked for on every hit, and hashing it again cost
# more than the rest of the lookup (#16). The arguments are strings and tuples of them.
@functools.lru_cache(maxsize=1 << 14)
def _hashed_key(user_id: str, n: int, exclude: tuple[str, ...], categories: tuple[str, ...],
                session: tuple[str, ...], experiment: str, variant: str,
                candidates: tuple[str, ...], scorers: tuple[str, ...],
                rerankers: tuple[str, ...], version: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in (user_id, str(n), "\x1f".join(sorted(exclude)), "\x1f".join(sorted(categories)),
                 "\x1f".join(session), experiment, variant, ",".join(candidates),
                 ",".join(scorers), ",".join(rerankers), version):
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
                # (another process's start time means nothing here)
                fresh = {k: v for k, v in value.items()
                         if k not in (REFRESH_FIELD, DIRTY_FIELD, STARTED_FIELD)}
                await store_cache(rt, key, user_id, fresh, rt.caches[:pos])
            return value
    return None


async def fetch_features(rt: Runtime, model: Model, req: RecommendationRequest,
                         trace: Trace) -> UserFeatures:
    """Merge the user's trained history with online state from the store (one round trip)."""
    start = time.perf_counter()
    online: OnlineUser = EMPTY_USER
    if req.user_id is not None:
        try:
            async with asyncio.timeout(rt.settings.deadlines.store_ms / 1000.0 * 2):
                online = await rt.store.fetch_user(req.user_id)
        except (StoreUnavailable, TimeoutError, OSError):
            trace.fallback = "store_down"
    row = model.users.row(req.user_id)
    catalog = model.catalog
    if not req.session_items and not online.history and not online.seen:
        # the trained history alone: already distinct item indices, newest first
        history = model.users.history(row)
        trace.stages.append(("features", rt.store.kind, time.perf_counter() - start))
        return UserFeatures(req.user_id, row, history, np.sort(history))
    parts = []
    if req.session_items:
        parts.append(catalog.lookup(req.session_items))
    if online.history:
        parts.append(catalog.lookup(online.history))
    parts.append(model.users.history(row))
    history = _unique_in_order(np.concatenate(parts))
    seen = history
    if online.seen:
        seen = np.concatenate([seen, catalog.lookup(tuple(online.seen))])
    seen = np.unique(seen[seen >= 0])
    trace.stages.append(("features", rt.store.kind, time.perf_counter() - start))
    return UserFeatures(req.user_id, row, history, seen, session=bool(req.session_items))


def select(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
           user: UserFeatures, trace: Trace) -> Ranking:
    """Candidates -> filter -> score -> order -> rerank (runs in a worker thread)."""
    depth = max(req.n * rt.settings.pipeline.rerank_depth, MIN_RERANK_DEPTH)
    if user.is_cold:  # popularity, still diversity-capped like every other slate
        trace.fallback = trace.fallback or "cold_start"
        pool = fallback_ranking(comps, user, req, depth)
        ranking = rerank(rt, comps, plan, user, pool, req.n, trace)
        trace.spares = spare_ranking(rt, comps, plan, user, pool, ranking, req.n)
        return ranking
    pool = fused_pool(rt, comps, req, plan, user, depth, trace)
    if pool is None:
        pool = chain_pool(rt, comps, req, plan, user, depth, trace)
        if pool is None:
            trace.fallback = trace.fallback or "no_candidates"
            return fallback_ranking(comps, user, req, req.n)
    ranking = rerank(rt, comps, plan, user, pool, req.n, trace)
    if len(ranking) < req.n:
        return backfill(comps, user, req, explained(ranking, user, trace))
    trace.spares = spare_ranking(rt, comps, plan, user, pool, ranking, req.n)
    if trace.spares is not None:
        trace.spares = explained(trace.spares, user, trace)
    return explained(ranking, user, trace)


#: The reason of a fused pool's items until :func:`explained` asks for them (after the
#: rerankers, so only the served items and spares are explained).
UNEXPLAINED = -1


def explained(ranking: Ranking, user: UserFeatures, trace: Trace) -> Ranking:
    """``ranking`` with the reasons of its unexplained items (a fused pool's) filled in by
    the fused component's ``explain``; a failure leaves them FOR_YOU without an anchor."""
    if trace.explainer is None:
        return ranking
    todo = np.flatnonzero(ranking.reasons == UNEXPLAINED)
    if todo.size == 0:
        return ranking
    reasons = ranking.reasons.copy()
    anchors = ranking.anchors.copy()
    name, comp = trace.explainer
    try:
        r, a = comp.explain(user, ranking.items[todo])
        r, a = np.asarray(r, dtype=np.int8), np.asarray(a, dtype=np.int64)
        if r.shape != todo.shape or a.shape != todo.shape:
            raise ValueError("explain returned arrays of another length")
    except Exception:
        log.warning("%s could not explain its items", name, exc_info=True)
        trace.fail(name, "error", "plugin_error")
        r = np.full(todo.size, int(Reason.FOR_YOU), dtype=np.int8)
        a = np.full(todo.size, -1, dtype=np.int64)
    reasons[todo] = r
    anchors[todo] = a
    return Ranking(ranking.items, ranking.scores, reasons, anchors)


def chain_pool(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
               user: UserFeatures, depth: int, trace: Trace) -> Ranking | None:
    """The general path: every generator's candidates, merged and filtered, scored by the
    first scorer that answers, the ``depth`` best in order (None: no candidates)."""
    cands = generate_candidates(rt, comps, plan, user, trace)
    cands = filter_candidates(rt, comps, req, user, cands, trace)
    if len(cands) == 0:
        return None
    scores = score_candidates(rt, comps, plan, user, cands, trace)
    return order(cands, scores, depth)


def fused_component(comps: Components, plan: Plan) -> tuple[str, CatalogScorer] | None:
    """The plan's first generator when it is also its first scorer and scores the whole
    catalog (:class:`CatalogScorer`); else None."""
    if not plan.candidates or not plan.scorers or plan.candidates[0] != plan.scorers[0]:
        return None
    name = plan.candidates[0]
    comp = comps.generators.get(name)
    # NOTE: attribute checks, not isinstance on the runtime-checkable protocol: this runs on
    # every miss, and the protocol check costs several microseconds
    if (comp is None or comp is not comps.scorers.get(name)
            or not hasattr(comp, "catalog_scores") or not hasattr(comp, "explain")):
        return None
    return name, comp


def fused_pool(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
               user: UserFeatures, depth: int, trace: Trace) -> Ranking | None:
    """The ``depth`` best items of the fused path, or None to take the general path.

    When the plan's first generator is also its first scorer and scores the whole catalog,
    the general path would generate its top items, add the other generators' candidates,
    drop seen, excluded and off-category ones, and score them all with that same component:
    its best allowed items, whenever its own top items outnumber the dropped ones. Here they
    come from one compiled top-k over its catalog scores with every exclusion at once (exact
    even when many are dropped). A failure or invalid output counts against the component's
    breaker and the request takes the general path, with its fallbacks.
    """
    found = fused_component(comps, plan)
    if found is None or not rt.settings.pipeline.exclude_seen:
        return None
    name, comp = found
    if not rt.breakers[name].allow():
        return None
    trace.current = name
    start = time.perf_counter()
    try:
        scores = np.asarray(comp.catalog_scores(user), dtype=np.float32)
        if scores.shape != (len(comps.model.catalog),):
            raise ValueError(f"catalog_scores returned shape {scores.shape}")
        if req.categories:
            scores = np.where(comps.category_mask(req.categories), scores, np.float32(np.nan))
        exclude = user.seen
        if req.exclude:
            exclude = np.concatenate([exclude, comps.model.catalog.lookup(req.exclude)])
        idx, vals = _fast.topk(scores, depth, exclude=exclude)
        if not np.isfinite(vals).all():
            raise ValueError("catalog_scores returned infinite scores")
        # reasons come after the rerankers, for the items they keep (:func:`explained`)
        pool = Ranking(idx, vals, np.full(idx.size, UNEXPLAINED, dtype=np.int8),
                       np.full(idx.size, -1, dtype=np.int64))
        trace.explainer = (name, comp)
    except Exception:
        log.warning("fused ranking by %s failed; taking the general path", name, exc_info=True)
        trace.fail(name, "error", "plugin_error")
        trace.skip = name  # the general path does not ask it again
        return None
    finally:
        trace.current = ""
        elapsed = time.perf_counter() - start
        trace.stages.append(("fused", name, elapsed))
    if elapsed > rt.settings.deadlines.stage_ms / 1000.0:
        trace.fail(name, "timeout", "plugin_timeout")
    else:
        trace.ok(name)
    return pool if len(pool) else None


def spare_ranking(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                  pool: Ranking, ranking: Ranking, n: int) -> Ranking | None:
    """The ``cache.spare_items`` items the rerankers rank right after the slate.

    The rerankers run again for ``n + spare_items`` slots (a diversity cap then holds over
    slate and spares together); the spares are that longer slate's items not in ``ranking``,
    in its order. Outcomes of this second pass are not counted: the slate's pass counted them.
    """
    m = rt.settings.cache.spare_items
    if m <= 0 or not rt.caches or len(pool) <= len(ranking):
        return None
    longer = rerank(rt, comps, plan, user, pool, n + m, Trace())  # isolates the plugins
    taken = set(ranking.items.tolist())
    rest = [i for i, item in enumerate(longer.items.tolist()) if item not in taken]
    return longer.take(np.asarray(rest[:m], dtype=np.int64))


def generate_candidates(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                        trace: Trace) -> Candidates:
    per = rt.settings.pipeline.candidates_per_generator
    n_items = len(comps.model.catalog)
    found: list[Candidates] = []
    for name in plan.candidates:
        gen = comps.generators.get(name)
        if gen is None or name == trace.skip or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            c = gen.generate(user, per)
            items = np.asarray(c.items, dtype=np.int64)
            if items.ndim != 1 or len(c.reasons) != items.size or len(c.anchors) != items.size:
                raise ValueError("candidate arrays of different lengths")
            ok = (items >= 0) & (items < n_items)
            if not ok.all():
                trace.fail(name, "invalid", "plugin_error")
                c = Candidates(items[ok], np.asarray(c.reasons)[ok], np.asarray(c.anchors)[ok])
            found.append(c)
        except Exception:
            log.warning("candidate generator %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
        trace.stages.append(("candidates", name, time.perf_counter() - start))
    trace.current = ""
    if not found:
        return Candidates.empty()
    items = np.concatenate([c.items for c in found])
    first = _first_occurrences(items)  # keep the first generator's reason for a repeat
    return Candidates(
        items[first],
        np.concatenate([np.asarray(c.reasons, dtype=np.int8) for c in found])[first],
        np.concatenate([np.asarray(c.anchors, dtype=np.int64) for c in found])[first],
    )


def filter_candidates(rt: Runtime, comps: Components, req: RecommendationRequest,
                      user: UserFeatures, cands: Candidates, trace: Trace) -> Candidates:
    """Drop already-seen items, the request's explicit excludes, and items outside categories."""
    start = time.perf_counter()
    keep = np.ones(len(cands), dtype=bool)
    if rt.settings.pipeline.exclude_seen and user.seen.size:
        keep &= ~np.isin(cands.items, user.seen, assume_unique=False)
    if req.exclude:
        keep &= ~np.isin(cands.items, comps.model.catalog.lookup(req.exclude))
    if req.categories:
        keep &= comps.category_mask(req.categories)[cands.items]
    trace.stages.append(("filter", "builtin", time.perf_counter() - start))
    return cands.take(np.flatnonzero(keep))


def score_candidates(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                     cands: Candidates, trace: Trace) -> np.ndarray:
    """Score with the first scorer of the chain whose output is valid; else the fallback."""
    stage_budget = rt.settings.deadlines.stage_ms / 1000.0
    for name in plan.scorers:
        scorer = comps.scorers.get(name)
        if scorer is None or name == trace.skip or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            scores = np.asarray(scorer.score(user, cands.items), dtype=np.float32)
        except Exception:
            log.warning("scorer %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
            continue
        finally:
            elapsed = time.perf_counter() - start
            trace.stages.append(("score", name, elapsed))
            trace.current = ""
        if scores.shape != cands.items.shape or not np.isfinite(scores).all():
            log.warning("scorer %s returned invalid scores (shape %s)", name, scores.shape)
            trace.fail(name, "invalid", "plugin_error")
            continue
        if elapsed > stage_budget:
            trace.fail(name, "timeout", "plugin_timeout")
        else:
            trace.ok(name)
        return np.ascontiguousarray(scores)
    trace.fallback = trace.fallback or "plugin_error"
    return comps.fallback_scores[cands.items]


def order(cands: Candidates, scores: np.ndarray, depth: int) -> Ranking:
    """The ``depth`` best candidates in descending score order (compiled top-k)."""
    pos, vals = _fast.topk(scores, depth)
    return Ranking(cands.items[pos], vals, cands.reasons[pos], cands.anchors[pos])


def rerank(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures, ranking: Ranking,
           n: int, trace: Trace) -> Ranking:
    current = ranking
    for name in plan.rerankers:
        rr = comps.rerankers.get(name)
        if rr is None or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            out = rr.rerank(user, current, max(n, 1))
            # NOTE: sets, not np.isin/np.unique: a slate is 10-100 ids, where NumPy's call
            # overhead is 6x the work (#8)
            got = out.items.tolist()
            distinct = set(got)
            if not (len(distinct) == len(got) and distinct.issubset(current.items.tolist())
                    and np.isfinite(out.scores).all()):
                raise ValueError("reranker returned items it was not given, duplicates or NaN")
            current = out
            trace.ok(name)
        except Exception:
            log.warning("reranker %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
        trace.stages.append(("rerank", name, time.perf_counter() - start))
    trace.current = ""
    return current.take(np.arange(min(n, len(current))))


def fallback_ranking(comps: Components, user: UserFeatures, req: RecommendationRequest,
                     n: int, exclude_more: np.ndarray | None = None) -> Ranking:
    """Best items by the fallback scorer, honouring seen, exclude and category filters."""
    scores = comps.fallback_scores
    if req.categories:
        scores = np.where(comps.category_mask(req.categories), scores, np.float32(np.nan))
    parts = [user.seen]
    if req.exclude:
        parts.append(comps.model.catalog.lookup(req.exclude))
    if exclude_more is not None:
        parts.append(exclude_more)
    idx, vals = _fast.topk(scores, n, exclude=np.concatenate(parts))
    if req.categories:
        reasons = np.full(idx.size, int(Reason.TRENDING_IN), dtype=np.int8)
        anchors = comps.model.catalog.categories[idx].astype(np.int64)
    else:
        reasons = np.full(idx.size, int(Reason.POPULAR), dtype=np.int8)
        anchors = np.full(idx.size, -1, dtype=np.int64)
    return Ranking(idx, vals, reasons, anchors)


def backfill(comps: Components, user: UserFeatures, req: RecommendationRequest,
             ranking: Ranking) -> Ranking:
    """Top up a short slate with fallback items ranked below it (scores kept monotone)."""
    more = fallback_ranking(comps, user, req, req.n - len(ranking), exclude_more=ranking.items)
    if len(more) == 0:
        return ranking
    floor = float(ranking.scores[-1]) if len(ranking) else 0.0
    shifted = (floor - 1.0 - np.arange(len(more), dtype=np.float32)).astype(np.float32)
    return Ranking(
        np.concatenate([ranking.items, more.items]),
        np.concatenate([ranking.scores, shifted]),
        np.concatenate([ranking.reasons, more.reasons]),
        np.concatenate([ranking.anchors, more.anchors]),
    )


def record_outcome(rt: Runtime, component: str, kind: str) -> None:
    breaker = rt.breakers[component]
    if kind == "ok":
        breaker.success()
        return
    metrics.PLUGIN_FAILURES.labels(component, kind).inc()
    breaker.failure()
    metrics.BREAKER_OPEN.labels(component).set(1 if breaker.state == "open" else 0)


def reason_text(model: Model, reason: int, anchor: int) -> str:
    catalog = model.catalog
    if reason == Reason.BECAUSE_YOU_LIKED and 0 <= anchor < len(catalog):
        return f"Because you liked {catalog.title(anchor)}"
    if reason == Reason.SIMILAR_TO and 0 <= anchor < len(catalog):
        return f"Similar to {catalog.title(anchor)}"
    if reason == Reason.TRENDING_IN and anchor >= 0:
        return f"Trending in {catalog.category_name(anchor)}"
    if reason == Reason.NEW:
        return "New"
    if reason == Reason.FOR_YOU:
        return "Matches your taste"
    if reason == Reason.BOOSTED:
        return "Featured"
    return "Popular"


def respond(comps: Components, req: RecommendationRequest, plan: Plan, user: UserFeatures,
            ranking: Ranking, trace: Trace) -> dict:
    model = comps.model
    return {
        "user_id": req.user_id,
        "items": slate_items(model, user, ranking),
        "variant": plan.variant,
        "experiment": plan.experiment,
        "model_version": model.version,
        "fallback": trace.fallback,
    }


#: (reason, anchor) texts kept per catalog at most; past it they are built per request
MAX_REASON_TEXTS = 1 << 18


def slate_items(model: Model, user: UserFeatures, ranking: Ranking) -> list[dict]:
    ids = model.catalog.id_list()
    texts = model.catalog.memo.setdefault("reasons", {})
    out = []
    for i, s, r, a in zip(ranking.items.tolist(), ranking.scores.tolist(),
                          ranking.reasons.tolist(), ranking.anchors.tolist(), strict=True):
        key = (_session_reason(r, user), a)
        text = texts.get(key)
        if text is None:
            text = reason_text(model, *key)
            if len(texts) < MAX_REASON_TEXTS:
                texts[key] = text
        out.append({"item_id": ids[i], "score": round(s, 6), "reasons": [text]})
    return out


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


def _session_reason(reason: int, user: UserFeatures) -> int:
    """For anonymous sessions and item pages, "liked" anchors read as "similar to"."""
    return Reason.SIMILAR_TO if user.session and reason == Reason.BECAUSE_YOU_LIKED else reason


def _unique_in_order(idx: np.ndarray) -> np.ndarray:
    idx = idx[idx >= 0]
    return idx[_first_occurrences(idx)]


def _first_occurrences(items: np.ndarray) -> np.ndarray:
    """Ascending positions of the first occurrence of each distinct value of ``items``.

    ``np.unique(items, return_index=True)`` then a sort, with less call overhead (a stable
    argsort and one comparison of neighbours): ~30% cheaper on a few hundred ids (#8).
    """
    order = np.argsort(items, kind="stable")
    ordered = items[order]
    keep = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    first = order[keep]
    first.sort()
    return first
