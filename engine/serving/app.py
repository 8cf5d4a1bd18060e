"""Starlette app factory: routes, middleware and the lifespan that loads model and plugins."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
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

from .. import metrics, pipeline
from ..config import Settings
from ..events import routes as events_api
from ..experiments import routes as experiments_api
from ..feedback import exploration
from ..http.validation import (
    RequestError,
    check_id,
    check_n,
    check_path_encoding,
    check_query_encoding,
    new_request_id,
    parse_body,
    parse_query,
    query_value,
    reject_unknown,
    require_json,
)
from ..model import Model
from ..pipeline import quality
from ..runtime import Runtime, build_runtime
from ..storage.opening import open_store
from ..storage.publish import load_serving_model, start_model_watcher
from ..storage.store import StoreUnavailable
from ..types import RecommendationRequest
from . import api_docs, dashboard
from .middleware import BodyLimitMiddleware, MetricsMiddleware
from .openapi import openapi_schema
from .ratelimit import RateLimitMiddleware

log = logging.getLogger("rankly")
_background: set[asyncio.Task] = set()  # strong references to exposures still recording


def _compact_json(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def ranking_json(content: Any) -> bytes:
    """A recommendation answer's bytes. Its only floats are scores the pipeline checked
    finite, so orjson (which would write NaN as null instead of raising) is safe here when
    installed."""
    return _compact_json(content) if orjson is None else orjson.dumps(content)


class JSON(JSONResponse):
    """Compact JSON; NaN/inf are a bug, so they raise instead of producing invalid JSON."""

    def render(self, content: Any) -> bytes:
        return _compact_json(content)


class RankingJSON(JSON):
    """A recommendation answer (see :func:`ranking_json`)."""

    def render(self, content: Any) -> bytes:
        return ranking_json(content)


def _runtime(request: Request) -> Runtime:
    return request.state.runtime


async def recommendations(request: Request) -> Response:
    rt = _runtime(request)
    limits = rt.settings.limits
    if request.method in ("GET", "HEAD"):  # Starlette answers HEAD with the GET route
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
            metrics.EXPOSURES.labels(plan.experiment, plan.variant, str(assignment.phase)).inc()
    except StoreUnavailable:
        log.warning("experiment exposure not recorded: store unavailable")


async def answer(rt: Runtime, req: RecommendationRequest) -> dict:
    """Rank, and if anything unexpected escapes the pipeline, serve the safe fallback."""
    deadline = pipeline.request_deadline(rt)
    await refresh_bandits(rt)
    plan, assignment = pipeline.choose_plan(rt, req)
    try:
        body = await pipeline.rank(rt, req, plan, deadline, features=True)
        features = body.pop(pipeline.FEATURES_FIELD, None)
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
            metrics.EXPERIMENT_IMPRESSIONS.labels(plan.experiment, plan.variant,
                                                  str(assignment.phase)).inc(len(body["items"]))
        events_api.record_impressions(rt, req.request_id, req.user_id, body, plan.probability,
                                      positions, dict(req.context) or None, features)
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
    # optional components whose factory raised (pipeline.optional), and configured ones the
    # model has no part for
    if rt.components.missing:
        body["missing_components"] = rt.components.missing
    return JSON(body, status_code=200 if store_ok else 503)


def _store_breaker(rt: Runtime) -> dict[str, str]:
    """The state of the store's circuit breaker (closed/open/half_open), when it has one."""
    guard = getattr(rt.store, "guard", None)
    return {"breaker": guard.breaker.state} if guard is not None else {}


#: How long ``GET /ready`` shows the last batch of events answered 503.
UNAVAILABLE_SHOWN_S = 60.0


def _event_log_breaker(rt: Runtime) -> dict[str, dict[str, Any]]:
    """``{"event_log": {"breaker": state}}`` when the event log has its own breaker (Redis),
    with ``last_unavailable`` (seconds ago, why) when a batch of events was answered 503 in
    the last :data:`UNAVAILABLE_SHOWN_S`: a Redis that refuses writes (out of memory) keeps
    its breaker closed and serves recommendations, so the worker stays ready, but says so."""
    service = rt.extras.get(events_api.EXTRAS_KEY)
    guard = getattr(getattr(service, "log", None), "guard", None)
    out: dict[str, Any] = {"breaker": guard.breaker.state} if guard is not None else {}
    last = getattr(service, "last_unavailable", None)
    if last is not None and time.time() - last[0] <= UNAVAILABLE_SHOWN_S:
        out["last_unavailable"] = {"seconds_ago": round(time.time() - last[0], 1),
                                   "reason": last[1]}
    return {"event_log": out} if out else {}


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
        if settings.experiment_retention_days > 0:  # Redis: start stopped ones' countdown
            task = asyncio.create_task(experiments_api.retain_stopped(rt))
            _background.add(task)
            task.add_done_callback(_background.discard)
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
            quality.stop(rt)
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
    # do not arrive within deadlines.body_read_ms, or trickle in slower than
    # deadlines.body_min_rate (408), before any route reads them. Last,
    # GET /recommendations is answered without Starlette's router (RecommendationsFastPath).
    middleware = [
        Middleware(MetricsMiddleware),
        Middleware(RateLimitMiddleware, limits=settings.rate_limits),
        Middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes,
                   read_timeout_s=settings.deadlines.body_read_ms / 1000.0,
                   min_rate=settings.deadlines.body_min_rate,
                   rate_grace_s=settings.deadlines.body_rate_grace_ms / 1000.0),
        Middleware(RecommendationsFastPath),
    ]
    return Starlette(
        routes=ROUTES,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={RequestError: request_error, HTTPException: http_error,
                            Exception: server_error},
    )


class RecommendationsFastPath:
    """``GET /recommendations`` as pure ASGI: the route's own validation and :func:`answer`,
    without Starlette's router, request and response objects (#16).

    It sits innermost in the middleware list, so metrics, rate limits and the body limit see
    these requests as they see every other. Anything else goes to ``app``, and so does a
    request this path would answer differently from the route: one whose query needs
    percent-decoding (Starlette's parser decides those), and any request that fails
    validation (the route raises the same error, and its handler writes the 4xx).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] != "/recommendations"
                or scope["method"] != "GET" or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        rt = state.get("runtime") if state else None
        req = None if rt is None else plain_query_request(scope["query_string"],
                                                          rt.settings.limits)
        if req is None:
            await self.app(scope, receive, send)
            return
        body = answer_json(await answer(rt, req))
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(body)).encode("latin-1")), _JSON_CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def answer_json(body: dict) -> bytes:
    """:func:`ranking_json` of an answer, byte for byte; the fields before ``request_id``
    (last) are encoded once per cached slate.

    A cache hit is the cached entry's fields around the same ``items`` list, so the memo is
    keyed by that list and used only when every other field is equal as well. A computed
    answer is encoded whole: its list is new and never comes back, and memo entries held
    for them only fed the garbage collector (longer pauses: the tail latency of misses).
    """
    if (orjson is None or not body.get("cached")
            or next(reversed(body), None) != "request_id"):
        return ranking_json(body)
    items = body.get("items")
    fields = tuple(body.values())[:-1]
    known = _ANSWER_HEADS.get(id(items))
    if known is None or known[0] is not items or known[1] != fields:
        head = orjson.dumps({k: v for k, v in body.items() if k != "request_id"})
        known = (items, fields, head[:-1] + b',"request_id":')
        if len(_ANSWER_HEADS) >= _ANSWER_HEADS_MAX:
            del _ANSWER_HEADS[next(iter(_ANSWER_HEADS))]
        _ANSWER_HEADS[id(items)] = known
    return known[2] + orjson.dumps(body["request_id"]) + b"}"


#: id(items) -> (items, the other fields before request_id, their JSON up to request_id's
#: value); the items list is held, so its id is not reused while it is here. Oldest first out.
_ANSWER_HEADS: dict[int, tuple[Any, tuple, bytes]] = {}
_ANSWER_HEADS_MAX = 1 << 12


class _PlainQuery:
    """A query string's ``(name, value)`` pairs, read as :func:`parse_query` reads Starlette's
    ``QueryParams``: iteration gives the distinct names, ``getlist`` the values in order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def __iter__(self) -> Any:
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


def plain_query_request(raw: bytes, limits: Any) -> RecommendationRequest | None:
    """:func:`parse_query` of a query string that needs no decoding (ASCII, no ``%`` or
    ``+``: then ``parse_qsl`` would return its parts as they are), else ``None``; also
    ``None`` when it is invalid, for the route to answer with the error."""
    known = _PLAIN_QUERIES.get(raw)
    if known is not None and known[0] is limits:
        _, user_id, n, exclude, categories, request_id = known
        return RecommendationRequest(user_id=user_id, n=n, exclude=exclude,
                                     categories=categories,
                                     request_id=request_id or new_request_id())
    if not raw.isascii() or b"%" in raw or b"+" in raw:
        return None
    pairs = [(name, value) for name, _, value in
             (part.partition("=") for part in raw.decode("ascii").split("&") if part)]
    try:
        req = parse_query(_PlainQuery(pairs), limits)
    except RequestError:
        return None
    if len(_PLAIN_QUERIES) >= _PLAIN_QUERIES_MAX:
        _PLAIN_QUERIES.clear()
    given = any(name == "request_id" for name, _ in pairs)
    _PLAIN_QUERIES[raw] = (limits, req.user_id, req.n, req.exclude, req.categories,
                           req.request_id if given else None)
    return req


# NOTE: a query string seen before is not validated again: clients repeat the same few
# queries, and validating them again showed in a cached answer's profile (#16). Keyed by the raw
# bytes and checked against the limits they were validated with; emptied when full.
_PLAIN_QUERIES: dict[bytes, tuple[Any, ...]] = {}
_PLAIN_QUERIES_MAX = 1 << 14
