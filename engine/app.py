"""Starlette app factory: routes, middleware and the lifespan that loads model and plugins."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

try:  # optional: ~7x faster than json.dumps on a slate, and the same bytes (#8)
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

from rankly import _fast
from rankly.engine import (
    api_docs,
    dashboard,
    events_api,
    experiments_api,
    exploration,
    metrics,
    pipeline,
    quality,
)
from rankly.engine.config import Settings
from rankly.engine.middleware import BodyLimitMiddleware, MetricsMiddleware
from rankly.engine.model import Model
from rankly.engine.openapi import openapi_schema
from rankly.engine.publish import load_serving_model, start_model_watcher
from rankly.engine.ratelimit import RateLimitMiddleware
from rankly.engine.runtime import Runtime, build_runtime
from rankly.engine.store import StoreUnavailable, open_store
from rankly.engine.types import RecommendationRequest
from rankly.engine.validation import (
    RequestError,
    check_id,
    check_n,
    check_path_encoding,
    check_query_encoding,
    parse_body,
    parse_query,
    query_value,
    reject_unknown,
    require_json,
)

log = logging.getLogger("rankly")
_background: set[asyncio.Task] = set()  # strong references to exposures still recording


class JSON(JSONResponse):
    """Compact JSON; NaN/inf are a bug, so they raise instead of producing invalid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


class RankingJSON(JSON):
    """A recommendation answer. Its only floats are scores the pipeline checked finite, so
    orjson (which would write NaN as null instead of raising) is safe here when installed."""

    def render(self, content: Any) -> bytes:
        return super().render(content) if orjson is None else orjson.dumps(content)


def _runtime(request: Request) -> Runtime:
    return request.state.runtime


async def recommendations(request: Request) -> Response:
    rt = _runtime(request)
    limits = rt.settings.limits
    if request.method == "GET":
        check_query_encoding(request.scope["query_string"])
        req = parse_query(request.query_params, limits)
    else:
        require_json(request.headers)
        req = parse_body(await request.body(), limits)
    return RankingJSON(await answer(rt, req))


async def refresh_bandits(rt: Runtime) -> None:
    """Move running bandits to the current decision epoch (I/O only once per epoch)."""
    epoch_s = rt.settings.bandit_epoch_seconds
    if rt.experiments.running and rt.tracker.bandits_due(rt.experiments, epoch_s):
        try:
            rt.experiments = await rt.tracker.reweight_bandits(rt.experiments, epoch_s)
        except StoreUnavailable:
            log.warning("bandit counts unavailable; keeping the previous epoch's weights")


async def record_exposure(rt: Runtime, assignment: Any, user_id: str,
                          plan: pipeline.Plan) -> None:
    """Count the exposure once per (user, experiment, phase); a store outage loses it, only."""
    try:
        if await rt.tracker.expose(assignment, user_id):
            metrics.EXPOSURES.labels(plan.experiment, plan.variant).inc()
    except StoreUnavailable:
        log.warning("experiment exposure not recorded: store unavailable")


async def answer(rt: Runtime, req: RecommendationRequest) -> dict:
    """Rank, and if anything unexpected escapes the pipeline, serve the safe fallback."""
    deadline = pipeline.request_deadline(rt)
    await refresh_bandits(rt)
    plan, assignment = pipeline.choose_plan(rt, req)
    try:
        body = await pipeline.rank(rt, req, plan, deadline)
        if assignment is not None and req.user_id is not None:
            # a slow store must not hold the answer: past the deadline the exposure is
            # recorded in the background (it is idempotent per user, experiment and phase)
            task = asyncio.create_task(record_exposure(rt, assignment, req.user_id, plan))
            _background.add(task)
            task.add_done_callback(_background.discard)
            left = deadline - asyncio.get_running_loop().time()
            await asyncio.wait({task}, timeout=max(0.0, left))
        if body["items"]:
            metrics.SLATES_SERVED.inc()
        body, positions = exploration.explore_answer(rt.settings.exploration, body)
        if (assignment is not None and assignment.variant is not None
                and req.user_id is not None and body["items"]):
            rt.tracker.note_impressions(assignment, req.user_id, len(body["items"]))
            metrics.EXPERIMENT_IMPRESSIONS.labels(plan.experiment, plan.variant).inc(
                len(body["items"]))
        events_api.record_impressions(rt, req.request_id, req.user_id, body, plan.probability,
                                      positions, dict(req.context) or None)
        return body
    except Exception:
        log.exception("pipeline failed; serving fallback (request %s)", req.request_id)
        metrics.FALLBACKS.labels("internal_error").inc()
        return pipeline.safe_answer(rt, req, plan, "internal_error")


async def similar_items(request: Request) -> Response:
    rt = _runtime(request)
    limits = rt.settings.limits
    item_id = check_id(check_path_encoding(request.scope, "item_id",
                                           request.path_params["item_id"]), "item_id", limits)
    check_query_encoding(request.scope["query_string"])
    reject_unknown(request.query_params, {"n"})
    n = check_n(query_value(request.query_params, "n"), limits, text=True)
    comps = rt.components
    idx = comps.model.catalog.index.get(item_id)
    if idx is None:
        return JSON({"error": {"field": "item_id", "message": "unknown item"}}, status_code=404)
    req = RecommendationRequest(user_id=None, n=n, session_items=(item_id,),
                                request_id="")
    plan = pipeline.Plan(rt.settings.pipeline.similar, rt.settings.pipeline.similar, ())
    payload = await pipeline.rank(rt, req, plan, pipeline.request_deadline(rt))
    return JSON({"item_id": item_id, "items": payload["items"],
                 "model_version": payload["model_version"], "fallback": payload["fallback"]})


async def health(request: Request) -> Response:
    return JSON({"status": "ok"})


async def ready(request: Request) -> Response:
    rt = _runtime(request)
    try:
        store_ok = await rt.store.ping()
    except Exception:
        store_ok = False
    body = {
        "status": "ready" if store_ok else "degraded",
        "model_version": rt.model.version,
        "store": {"kind": rt.store.kind, "reachable": store_ok, **_store_breaker(rt)},
        "kernels": _fast.IMPLEMENTATION,
        "breakers": rt.breakers.states(),
        **_event_log_breaker(rt),
    }
    if rt.components.missing:  # optional components whose factory raised (pipeline.optional)
        body["missing_components"] = rt.components.missing
    return JSON(body, status_code=200 if store_ok else 503)


def _store_breaker(rt: Runtime) -> dict[str, str]:
    """The state of the store's circuit breaker (closed/open/half_open), when it has one."""
    guard = getattr(rt.store, "guard", None)
    return {"breaker": guard.breaker.state} if guard is not None else {}


def _event_log_breaker(rt: Runtime) -> dict[str, dict[str, str]]:
    """``{"event_log": {"breaker": state}}`` when the event log has its own breaker (Redis)."""
    service = rt.extras.get(events_api.EXTRAS_KEY)
    guard = getattr(getattr(service, "log", None), "guard", None)
    return {"event_log": {"breaker": guard.breaker.state}} if guard is not None else {}


async def openapi(request: Request) -> Response:
    rt = _runtime(request)
    return JSON(openapi_schema(rt.settings, rt.registries))


async def prometheus(request: Request) -> Response:
    quality.refresh(_runtime(request))  # old buckets expire even when traffic stops
    await experiments_api.refresh_srm(_runtime(request))
    return Response(generate_latest(metrics.registry()), media_type=CONTENT_TYPE_LATEST)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSON(exc.to_json(), status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    field = "path" if exc.status_code == 404 else "method"
    return JSON({"error": {"field": field, "message": str(exc.detail)}},
                status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSON({"error": {"field": "server", "message": "internal error"}}, status_code=500)


ROUTES = [
    Route("/recommendations", recommendations, methods=["GET", "POST"]),
    Route("/items/{item_id:path}/similar", similar_items, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", prometheus, methods=["GET"]),
    *experiments_api.ROUTES,
    *dashboard.ROUTES,
    *api_docs.ROUTES,
    *events_api.ROUTES,
]


def _preload_statistics() -> None:
    import scipy.stats  # noqa: F401


def create_app(settings: Settings, model: Model | None = None, **runtime_args: Any) -> Starlette:
    """Return the rankly ASGI app; the model is loaded from ``settings.artifacts`` at startup
    unless given. ``runtime_args`` go to :func:`build_runtime` (tests pass a plugin manager)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # NOTE: a Redis that is down at start does not stop the server: the model comes from
        # the artifacts (or the last downloaded version), /ready says degraded, and the
        # store, the caches and the model watcher reconnect by themselves.
        args = dict(runtime_args)
        store = args.pop("store", None) or open_store(settings)
        loaded = model if model is not None else await load_serving_model(settings, store)
        rt = build_runtime(settings, loaded, store=store, **args)
        await store.ping()  # connect (and load a cluster's slot map) before the first request
        warmed = await pipeline.warm_up(rt)  # the first computation's one-time costs
        watcher = start_model_watcher(rt)
        events = await events_api.start_events(rt)
        metrics.MODEL_INFO.labels(loaded.version).set(1)
        log.info("serving model %s with %s kernels (warm-up %.0f ms)", loaded.version,
                 _fast.IMPLEMENTATION, warmed * 1000)
        # NOTE: what startup built (modules, model, plugins) lives as long as the server:
        # freezing it keeps the collector from traversing it again on every full collection
        # the request path's allocations trigger (#8: ~2x the cost of each allocation-heavy
        # batch, e.g. impression logging). Garbage made before the freeze is collected first.
        gc.collect()
        gc.freeze()
        # scipy.stats is imported lazily (a fast start matters when Redis is down); load it
        # now, off the event loop, before an experiment result or a bandit epoch needs it
        threading.Thread(target=_preload_statistics, name="rankly-preload", daemon=True).start()
        try:
            async with dashboard.sampling(rt):
                yield {"runtime": rt}
        finally:
            gc.unfreeze()  # collectable again once this app is gone (tests start many)
            await events.stop()
            if watcher is not None:
                await watcher.stop()
            for _, cache in rt.caches:
                if hasattr(cache, "close"):
                    await cache.close()
            await rt.store.close()

    # NOTE: middleware runs top to bottom on the way in: metrics sees every request (even the
    # 413s and 429s, and counts a client gone mid-body as 499), the rate limit refuses a flood
    # before its body is read, then the body limit stops oversized uploads and bodies that
    # do not arrive within deadlines.body_read_ms (408) before any route reads them.
    middleware = [
        Middleware(MetricsMiddleware),
        Middleware(RateLimitMiddleware, limits=settings.rate_limits),
        Middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes,
                   read_timeout_s=settings.deadlines.body_read_ms / 1000.0),
    ]
    return Starlette(
        routes=ROUTES,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={RequestError: request_error, HTTPException: http_error,
                            Exception: server_error},
    )
