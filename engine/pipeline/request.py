"""The request path on one screen: deadline -> cache -> features -> select -> respond.

``rank()`` answers one request by the deadline; :func:`_rank` takes the answer from the cache
tiers or computes it (:func:`rankly.engine.pipeline.cache.cached_answer`); :func:`compute` gets
the user's features, runs the stages (:func:`rankly.engine.pipeline.stages.select`) and builds
the response. CPU stages run in one worker thread under the request deadline; anything that
raises, hangs or returns garbage is skipped and the answer degrades to the fallback scorer,
never to an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics
from ..types import (
    Ranking,
    RecommendationRequest,
    UserFeatures,
)
from .cache import FEATURES_FIELD, Computed, cache_key, cached_answer
from .plan import Plan, default_plan
from .quality import observe as observe_quality
from .respond import respond, slate_items
from .served import ServedFeatures, capture
from .stages import Trace, fallback_ranking, fetch_features, select

if TYPE_CHECKING:
    from ..runtime import Components, Runtime

log = logging.getLogger("rankly.pipeline")
#: Worker threads of the selection stage, shared by the process's event loops. Enough of them
#: that plugins hanging past their deadline (abandoned, still running) do not starve it.
SELECT_THREADS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="rankly-select")

#: Share of the request deadline the pipeline may use; the rest is left for serializing.
DEADLINE_SHARE = 0.95


def request_deadline(rt: Runtime) -> float:
    """Event-loop time by which a request started now must have its answer."""
    budget = rt.settings.deadlines.request_ms / 1000.0 * DEADLINE_SHARE
    return asyncio.get_running_loop().time() + budget


async def rank(rt: Runtime, req: RecommendationRequest, plan: Plan,
               deadline: float | None = None, *, features: bool = False) -> dict:
    """Answer one recommendation request (JSON-ready); never raises for plugin/store failures.

    Whatever is slow (a frozen store, a loaded machine), the answer is ready by ``deadline``
    (event-loop time, default :func:`request_deadline`): past it the caller gets the fallback
    (``"fallback": "deadline"``) while the computation carries on and fills the cache.
    With ``features``, the answer also carries its computation's impression features under
    :data:`FEATURES_FIELD` when it has them (the caller takes them out before serving).
    """
    try:
        async with asyncio.timeout_at(request_deadline(rt) if deadline is None else deadline):
            out = await _rank(rt, req, plan)
    except TimeoutError:
        metrics.child(metrics.FALLBACKS, "deadline").inc()
        return safe_answer(rt, req, plan, "deadline")
    if not features:
        out.pop(FEATURES_FIELD, None)
    return out


async def _rank(rt: Runtime, req: RecommendationRequest, plan: Plan) -> dict:
    comps = rt.components_for(plan.options)  # one snapshot: a hot swap does not mix models
    key = cache_key(req, plan, comps.model.version)
    payload, cached = await cached_answer(rt, key, req.user_id,
                                          lambda: compute(rt, comps, req, plan))
    return {**payload, "cached": cached, "request_id": req.request_id}


async def compute(rt: Runtime, comps: Components, req: RecommendationRequest,
                  plan: Plan) -> Computed:
    """Compute a fresh answer: the user's features, the selection under the deadline, the
    response; record stage timings, component outcomes and the served slate's quality."""
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
        # NOTE: a new trace: the abandoned selection may still write into the old one
        trace = Trace(fallback="plugin_timeout", stages=trace.stages,
                      outcomes=trace.outcomes)
        ranking = fallback_ranking(comps, user, req, req.n)
    for stage, component, seconds in trace.stages:
        metrics.child(metrics.STAGE_LATENCY, stage, component).observe(seconds)
    for component, kind in trace.outcomes:
        record_outcome(rt, component, kind)
    if trace.fallback:
        metrics.child(metrics.FALLBACKS, trace.fallback).inc()
    payload = respond(comps, req, plan, user, ranking, trace)
    observe_quality(rt, comps.model, ranking.items, user.is_cold)
    spares = None
    if trace.spares is not None and len(trace.spares):
        spares = slate_items(comps.model, user, trace.spares)
    if rt.settings.impressions.features and req.request_id:  # impressions need an id
        payload[FEATURES_FIELD] = served_features(rt, comps, user, ranking, trace)
    return Computed(payload, cacheable=trace.fallback in (None, "cold_start"), spares=spares)


def served_features(rt: Runtime, comps: Components, user: UserFeatures, ranking: Ranking,
                    trace: Trace) -> ServedFeatures:
    """What the slate's (and its spares') impressions will log, captured by reference."""
    # NOTE: imported here: the events package imports the offline one, which imports this
    from ..events.projections import projections_of

    items = ranking.items
    if trace.spares is not None and len(trace.spares):
        items = np.concatenate([items, trace.spares.items])
    return capture(comps.model, user.history, items, trace.pool, trace.scorer, trace.sources,
                   projections_of(rt.store), rt.settings.impressions.sources)


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


def inline(rt: Runtime, comps: Components, plan: Plan) -> bool:
    """Whether to select on the event loop (``pipeline.inline_selection``): by default when
    every component of the plan is one of rankly's own, whose cost is bounded. A thread hop
    and the caches of another core cost a miss of the default about as much as the selection
    itself; a third-party plugin keeps the worker thread, whose deadline can abandon it."""
    mode = rt.settings.pipeline.inline_selection
    if mode != "auto":
        return mode == "always"
    return comps.builtin_only(plan.candidates, plan.scorers, plan.rerankers)


def record_outcome(rt: Runtime, component: str, kind: str) -> None:
    breaker = rt.breakers[component]
    if kind == "ok":
        breaker.success()
        return
    metrics.PLUGIN_FAILURES.labels(component, kind).inc()
    breaker.failure()
    metrics.BREAKER_OPEN.labels(component).set(1 if breaker.state == "open" else 0)


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
