"""The event routes (``POST /events``, ``POST /track/click``), the ingest service behind them
and the background logging of served slates as impressions."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
import uuid
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import metrics
from ..experiments.tracking import OUTCOME_OF_EVENT
from ..http.validation import (
    RequestError,
    check_query_encoding,
    query_value,
    reject_unknown,
    require_json,
)
from ..pipeline.served import impression_fields
from ..runtime import Runtime
from ..storage.store import StoreUnavailable
from .admission import EventAdmission, IngestSlot, Refusal
from .log import AppendResult, EventLog, ImpressionSlate, open_event_log
from .projections import Projections, attach
from .values import Event, max_events_in, parse_batch, parse_event

log = logging.getLogger("rankly.events")

EXTRAS_KEY = "events"
DEFAULT_INVALIDATING = ("purchase", "rating", "add_to_cart")
RETRY_AFTER_S = 1
#: How often the user-state rows the store refused are retried without new events.
UNWRITTEN_RETRY_S = 1.0
OUTAGE_WARNING_S = 10.0  # at most one "cannot invalidate" warning per tier this often


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode("utf-8"), status_code=status, headers=headers,
                    media_type="application/json")


class ImpressionBuffer:
    """Served slates waiting to be logged as impression events.

    :meth:`offer` is called on the request path: it only appends a tuple to a bounded deque
    (O(1), no I/O); a background task turns slates into events and appends them in batches.
    When the buffer is full, or the log is down, impressions are dropped and counted in
    ``dropped``: only impressions, never client events, may be dropped.
    """

    def __init__(self, max_slates: int = 10_000, flush_s: float = 0.2,
                 batch_slates: int = 500) -> None:
        self.max_slates = max_slates
        self.flush_s = flush_s
        self.batch_slates = batch_slates
        self.dropped = 0
        self.logged = 0
        self._slates: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wakeup = asyncio.Event()

    def offer(self, request_id: str, user_id: str | None, payload: dict[str, Any],
              probability: float | None, positions: list[dict[str, Any]] | None = None,
              context: dict[str, Any] | None = None, features: Any = None) -> None:
        items = payload.get("items") or ()
        if not items:
            return
        if len(self._slates) >= self.max_slates:
            self.dropped += len(items)
            return
        self._slates.append((time.time(), request_id, user_id or "", payload, probability,
                             positions, context, features))
        if len(self._slates) >= self.batch_slates:
            self._wakeup.set()

    def take(self) -> list[Event]:
        """Up to ``batch_slates`` slates as impression events (one per position)."""
        return [e for slate in self.take_slates() for e in slate.events()]

    def take_slates(self) -> list[ImpressionSlate]:
        """Up to ``batch_slates`` slates, oldest first (what :meth:`take` turns into events)."""
        slates: list[ImpressionSlate] = []
        for _ in range(min(self.batch_slates, len(self._slates))):
            (ts, request_id, user_id, payload, probability, positions,
             context, features) = self._slates.popleft()
            common = {k: v for k, v in (("variant", payload.get("variant")),
                                        ("experiment", payload.get("experiment")),
                                        ("probability", probability),
                                        ("model_version", payload.get("model_version")),
                                        ("cached", payload.get("cached")),
                                        ("fallback", payload.get("fallback")))
                      if v is not None}
            if positions is None:  # a deterministic ranking: P(this slate) = 1 (#19)
                common["propensity"] = 1.0
            if context:  # the request's own context fields, for the learned ranker (#19)
                common["request_context"] = context
            items = tuple(item["item_id"] for item in payload["items"])
            item_fields: tuple[bytes, ...] = ()
            if features is not None:  # what the ranker had, as it computed the slate (#19)
                shared, item_fields = impression_fields(features, items)
                common.update(shared)
            slates.append(ImpressionSlate(ts, request_id, user_id, items, common,
                                          tuple(positions or ()), item_fields))
        return slates

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.flush_s):
                await self._wakeup.wait()
        self._wakeup.clear()

    def __len__(self) -> int:
        return len(self._slates)


class SlateOutcomes:
    """Counts served answers that got a click (or purchase) carrying their request_id, once
    per answer and type: ``rankly_recommendation_slates_with_outcome_total``, over
    ``rankly_recommendation_slates_total``, is the recommendations' CTR (or conversion rate)
    with or without an experiment. The (request_id, type) pairs already counted are kept for
    the last ``max_entries`` outcomes (per worker).

    Only items of answers this server served count (:meth:`note_served`: the worker's own
    answers, and on Redis every worker's, read from the impressions in the stream it
    follows): a client's made-up or stale request id, or an item its answer did not hold,
    must not raise the rate. The last ``max_served`` answers are known, which bounds how late
    an outcome may come; each keeps its items as 64-bit hashes (8 bytes an item)."""

    def __init__(self, max_entries: int = 100_000, max_served: int = 200_000) -> None:
        self.max_entries = max_entries
        self.max_served = max_served
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._served: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def note_served(self, request_id: str, item_ids: Iterable[str] = ()) -> None:
        """``request_id`` was served with ``item_ids`` (by this worker, or by another one of
        the stream: its impressions come one item at a time)."""
        known = self._served.get(request_id)
        held = array("q") if known is None else array("q", known)
        new = [h for h in {hash(i) for i in item_ids} if h not in held]
        if known is None:
            self._served[request_id] = array("q", new).tobytes()
            if len(self._served) > self.max_served:
                self._served.popitem(last=False)
        elif new:
            self._served[request_id] = known + array("q", new).tobytes()

    def served_item(self, request_id: str, item_id: str) -> bool:
        """Whether ``item_id`` was in the answer ``request_id`` (among those still known)."""
        known = self._served.get(request_id)
        return known is not None and hash(item_id) in array("q", known)

    def record(self, request_id: str, outcome: str, item_id: str) -> bool:
        """Count ``outcome`` on the answer ``request_id`` if it held ``item_id``."""
        return self.served_item(request_id, item_id) and self.count(request_id, outcome)

    def count(self, request_id: str, outcome: str) -> bool:
        """Count ``outcome`` on ``request_id``, whose item the caller found served
        (:meth:`served_item`), once per answer and type."""
        key = (request_id, outcome)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        metrics.child(metrics.SLATES_WITH_OUTCOME, outcome).inc()
        return True


class EventsService:
    """What the event routes use: the durable log, the projections and the impression buffer.

    :meth:`ingest` is the one write path: durable append, then projections, then cache
    invalidation for the users of invalidating events (``[plugins.events] invalidating_types``,
    default purchase, rating, add_to_cart). On a Redis store every worker's counters follow
    the stream (one tail task), so all workers count the same events in the same order.
    """

    def __init__(self, rt: Runtime, event_log: EventLog, projections: Projections) -> None:
        opts = rt.settings.plugin_options("events")
        self.rt = rt
        self.log = event_log
        self.projections = projections
        self.invalidating = frozenset(opts.get("invalidating_types", DEFAULT_INVALIDATING))
        self.impressions = ImpressionBuffer(
            max_slates=int(opts.get("impression_buffer_slates", 10_000)),
            flush_s=float(opts.get("impression_flush_seconds", 0.2)))
        self.log_impressions = bool(opts.get("log_impressions", True))
        self.rebuild_on_start = bool(opts.get("rebuild_on_start", True))
        self.follow_stream = hasattr(event_log, "tail")
        self.admission = EventAdmission.from_settings(rt.settings.rate_limits,
                                                      rt.settings.limits.max_events_batch)
        # NOTE: a request computed before an invalidation can store its (stale) answer after
        # it. Tiers that compare start times see that (``checks_start_times``: the L1, and the
        # L2 when it revalidates); for the others (the L2 with invalidation=drop, third-party
        # caches) a second invalidation one deadline later removes what it stored, since
        # every such request ends within the request deadline.
        self.reinvalidate_s = rt.settings.deadlines.request_ms / 1000.0 + 0.05
        #: (wall time, reason) of the last batch answered 503 (``GET /ready`` shows it for a
        #: while): Redis may refuse writes (out of memory, read-only) with its breaker closed
        self.last_unavailable: tuple[float, str] | None = None
        self.reinvalidated = [(tier, cache) for tier, cache in rt.caches
                              if not getattr(cache, "checks_start_times", False)]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.slate_outcomes = SlateOutcomes()

    async def start(self) -> None:
        await self.log.open()
        if self.follow_stream:
            self._spawn(self._follow(), "event-counters")
        elif self.rebuild_on_start:
            try:
                stats = await self.projections.rebuild(self.log)
                log.info("events: projections rebuilt from the log (%d events)", stats.events)
            except (StoreUnavailable, OSError) as exc:
                log.error("events: could not rebuild projections at start: %s", exc)
        if self.log_impressions:
            self._spawn(self._flush_impressions(), "impressions")

    async def stop(self) -> None:
        if self.log_impressions:
            await self._drain_impressions()
        await self.rt.tracker.flush_impressions()  # experiments' served impressions too
        # NOTE: a cancel landing inside redis-py's blocking XREAD can be swallowed, so the
        # stream follower also watches a flag (it checks it after each short block).
        self._stopping.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self.log.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ingest(self, events: Sequence[Event], *, idempotent: bool = True) -> AppendResult:
        """Append durably, then project and invalidate; raises ``StoreUnavailable``."""
        result = await self.log.append(events, idempotent=idempotent)
        if result.repeated:
            # NOTE: stored by an earlier call that may have answered 503 before projecting
            # them: user state again (idempotent in effect), no counts (they were counted
            # when stored, or the stream's followers count them)
            await self.projections.apply(result.repeated, counters=False)
            users = {e.user_id for e in result.repeated if e.type in self.invalidating}
            if users:
                await self.invalidate(users)
        if result.new:
            for kind, count in collections.Counter(e.type for e in result.new).items():
                metrics.child(metrics.EVENTS, kind).inc(count)
            for e in result.new:
                if e.type in OUTCOME_OF_EVENT:
                    await self.record_outcome(e)
            await self.projections.apply(result.new, counters=not self.follow_stream)
            users = {e.user_id for e in result.new if e.type in self.invalidating}
            if users:
                await self.invalidate(users)
                if self.reinvalidated:
                    self._spawn(self._invalidate_later(users), "reinvalidate")
        return result

    async def record_outcome(self, e: Event) -> None:
        """Credit a click or purchase to the variants the user was exposed to, and to the
        recommendations' CTR when it is on an item of a served answer."""
        outcome = OUTCOME_OF_EVENT.get(e.type)
        if outcome is None:
            return
        counter = metrics.CLICKS if outcome == "click" else metrics.CONVERSIONS
        # a request_id of an answer that held the item says the click (or purchase) is on a
        # served item: it counts per impression too, once per (request, item); a made-up
        # request id, or an item the answer did not hold, counts per user only
        served = ((e.request_id, e.item_id) if e.request_id
                  and self.slate_outcomes.served_item(e.request_id, e.item_id) else None)
        if served is not None:
            self.slate_outcomes.count(e.request_id, outcome)
        try:
            credited = await self.rt.tracker.outcome(e.user_id, outcome,
                                                     self.rt.experiments.experiments, served)
        except StoreUnavailable:
            log.warning("experiment outcome not counted: store unavailable")
            return
        for experiment, phase, variant in credited.per_user:
            counter.labels(experiment, variant, str(phase)).inc()
        for experiment, phase, variant in credited.per_impression:
            metrics.IMPRESSION_OUTCOMES.labels(experiment, variant, outcome, str(phase)).inc()

    async def invalidate(self, users: set[str], tiers: list | None = None) -> None:
        """Invalidate the cached recommendations of ``users`` in every tier (or ``tiers``);
        the L1 tier also broadcasts to the other workers through the store.

        Order: first each tier's own process copy (``drop_user``, no I/O: this worker never
        serves them again, even when a broadcast then fails); then the tiers from the last
        (shared, slowest) to the first, so an L2 entry is marked before the L1 broadcast
        reaches other workers, which could otherwise refill their L1 from it, clean."""
        chain = list(self.rt.caches if tiers is None else tiers)
        for _, cache in chain:
            local = getattr(cache, "drop_user", None)
            if local is not None:
                for user_id in users:
                    local(user_id)
        down: set[str] = set()
        for user_id in users:
            for tier, cache in reversed(chain):
                if tier in down:
                    continue
                try:
                    await cache.invalidate_user(user_id)
                except StoreUnavailable as exc:
                    # NOTE: Redis down or its breaker open: skip the tier for the other users
                    # and say so in one line, at most every 10 s. A traceback per user cost
                    # ~25% of the event loop under load, which kept the breaker open (#9).
                    down.add(tier)
                    _warn_unavailable(tier, exc)
                except Exception:
                    log.warning("cache tier %s failed to invalidate a user", tier,
                                exc_info=True)

    async def _invalidate_later(self, users: set[str]) -> None:
        await asyncio.sleep(self.reinvalidate_s)
        await self.invalidate(users, self.reinvalidated)

    async def _follow(self) -> None:
        tail = self.log.tail(stop=self._stopping)  # type: ignore[attr-defined]
        async for batch in tail:
            if batch:
                for e in batch:  # every worker's answers, for the recommendations' CTR
                    if e.type == "impression" and e.request_id:
                        self.slate_outcomes.note_served(e.request_id, (e.item_id,))
                await self.projections.apply(batch, users=False)

    async def _flush_impressions(self) -> None:
        next_retry = 0.0
        while True:
            await self.impressions.wait()
            while len(self.impressions):
                await self._write_impressions()
            # user-state rows the store refused, retried about once a second (and with the
            # next events) rather than only when a next event comes
            if self.projections.unwritten and time.monotonic() >= next_retry:
                next_retry = time.monotonic() + UNWRITTEN_RETRY_S
                await self.projections.retry_unwritten()

    async def _write_impressions(self) -> None:
        slates = self.impressions.take_slates()
        if not slates:
            return
        try:
            # NOTE: encoded straight from the slates (#8). This process counts them only on
            # the file log (a stream's follower counts its own), from light records.
            self.impressions.logged += await self.log.append_impressions(slates)
            if not self.follow_stream:
                self.projections.count_impressions(slates)
        except StoreUnavailable:
            self.impressions.dropped += sum(len(s.item_ids) for s in slates)
        except Exception:
            self.impressions.dropped += sum(len(s.item_ids) for s in slates)
            log.warning("impressions could not be logged", exc_info=True)

    async def _drain_impressions(self) -> None:
        while len(self.impressions):
            await self._write_impressions()

    def record_slate(self, request_id: str, user_id: str | None, payload: dict[str, Any],
                     probability: float | None,
                     positions: list[dict[str, Any]] | None = None,
                     context: dict[str, Any] | None = None, features: Any = None) -> None:
        self.slate_outcomes.note_served(request_id,
                                        (i["item_id"] for i in payload.get("items", ())))
        if self.log_impressions:
            self.impressions.offer(request_id, user_id, payload, probability, positions,
                                   context, features)


_unavailable_warned_at: dict[str, float] = {}


def _warn_unavailable(tier: str, exc: Exception) -> None:
    now = time.monotonic()
    if now - _unavailable_warned_at.get(tier, -OUTAGE_WARNING_S) >= OUTAGE_WARNING_S:
        _unavailable_warned_at[tier] = now
        log.warning("cache tier %s cannot invalidate users while the store is unavailable "
                    "(%s); their cached answers expire with the TTL", tier, exc)


async def start_events(rt: Runtime) -> EventsService:
    """Open the event log that matches the store, build the projections, start the tasks."""
    event_log = open_event_log(rt.settings, rt.store)
    projections = Projections(rt.settings, rt.store, lambda: rt.components.model.catalog)
    service = EventsService(rt, event_log, projections)
    await service.start()
    attach(rt.store, projections)
    rt.extras[EXTRAS_KEY] = service
    return service


def record_impressions(rt: Runtime, request_id: str, user_id: str | None,
                       payload: dict[str, Any], probability: float | None = None,
                       positions: list[dict[str, Any]] | None = None,
                       context: dict[str, Any] | None = None, features: Any = None) -> None:
    """Queue a served slate for impression logging (no I/O; safe on the hot path).

    ``positions``: per-position fields of an explored slate (feedback/exploration.py); without
    them every impression logs ``propensity`` 1.0. ``context``: the request's context fields,
    logged as ``request_context``. ``features``: the computation's impression features
    (``pipeline.rank(..., features=True)``): a capture, encoded when the slate is logged, or
    a cache entry's record, encoded when it was stored."""
    service = rt.extras.get(EXTRAS_KEY)
    if service is not None:
        service.record_slate(request_id, user_id, payload, probability, positions, context,
                             features)


# --- routes ---------------------------------------------------------------------------------


def _service(request: Request) -> EventsService:
    service = request.state.runtime.extras.get(EXTRAS_KEY)
    if service is None:
        raise StoreUnavailable("events are not started")
    return service


def _unavailable() -> Response:
    return _json({"error": {"field": "store",
                            "message": "event storage is unavailable; retry with the same "
                                       "event_id values"}},
                 status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _refused(refusal: Refusal, events: int | None = None) -> Response:
    """429 from the server-wide admission control (``events``: the batch's count, if read)."""
    metrics.child(metrics.EVENT_REQUESTS_SHED, refusal.reason).inc()
    if events:
        metrics.child(metrics.EVENTS_REJECTED, "over_budget").inc(events)
    what = ("too many event requests in flight" if refusal.reason == "inflight"
            else "the server is over its event ingestion budget")
    return _json({"error": {"field": "rate", "message": f"{what}; nothing of this request was "
                                                       f"stored, retry after "
                                                       f"{refusal.retry_after} s"}},
                 status=429, headers={"Retry-After": str(refusal.retry_after)})


def _admit(request: Request, events_hint: int = 1) -> IngestSlot | Refusal | None:
    """Before the body is read: an in-flight slot, a refusal, or ``None`` when events are not
    started (the ingest then answers 503)."""
    service = request.state.runtime.extras.get(EXTRAS_KEY)
    return None if service is None else service.admission.enter(events_hint)


def _content_length(request: Request) -> int | None:
    """The body's declared length (the body limit middleware has checked it), if any."""
    value = request.headers.get("content-length")
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)


async def _ingest(request: Request, events: list[Event],
                  slot: IngestSlot | None) -> AppendResult | Response | None:
    """Charge the events to the budget (429 when over it, nothing stored), then ingest;
    ``None`` when the store is unavailable."""
    try:
        service = _service(request)
    except StoreUnavailable:
        return None
    refusal = service.admission.charge(len(events))
    if refusal is not None:
        return _refused(refusal, len(events))
    # NOTE: shielded: once the append started, a client disconnect must not stop the
    # projection and invalidation of events that are (or are about to be) durable. The
    # in-flight slot is released when the append ends, not when the request is cancelled.
    task = asyncio.ensure_future(service.ingest(events))
    if slot is not None:
        slot.hand_over(task)
    try:
        return await asyncio.shield(task)
    except StoreUnavailable as exc:
        service.last_unavailable = (time.time(), str(exc))
        return None


def _answer(result: AppendResult | Response | None, rejected: list[Any]) -> Response:
    if result is None:
        return _unavailable()
    if isinstance(result, Response):
        return result
    return _json({"accepted": result.accepted, "duplicates": result.duplicates,
                  "rejected": rejected}, status=202)


async def post_events(request: Request) -> Response:
    settings = request.state.runtime.settings
    # NOTE: the bucket must hold as many tokens as the body can hold events before it is read:
    # a flood is then refused without parsing (a refused 50-event post: 93 us unread against
    # 278 us parsed first, `pytest benchmarks/test_events.py`) (#9)
    slot = _admit(request, max_events_in(_content_length(request),
                                         settings.limits.max_events_batch))
    if isinstance(slot, Refusal):
        return _refused(slot)
    try:
        require_json(request.headers)
        batch = parse_batch(await request.body(), settings)
        if batch.rejected:
            metrics.child(metrics.EVENTS_REJECTED, "invalid").inc(len(batch.rejected))
        if batch.single and batch.rejected:
            err = batch.rejected[0]["error"]
            raise RequestError(err["field"], err["message"])
        return _answer(await _ingest(request, batch.events, slot), batch.rejected)
    finally:
        if slot is not None:
            slot.close()


_CLICK_PARAMS = {"user_id", "item_id", "event_id", "request_id", "timestamp"}
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


async def track_click(request: Request) -> Response:
    """``POST /track/click?user_id=&item_id=[&event_id=&request_id=&timestamp=]``: one click.

    Without ``event_id`` every call is a new click (no idempotency): send one to make retries
    safe.
    """
    settings = request.state.runtime.settings
    check_query_encoding(request.scope["query_string"])
    params = request.query_params
    reject_unknown(params, _CLICK_PARAMS)
    given = {name: query_value(params, name) for name in _CLICK_PARAMS}
    obj: dict[str, Any] = {"type": "click", "user_id": given["user_id"],
                           "item_id": given["item_id"],
                           "event_id": (f"click:{uuid.uuid4().hex}" if given["event_id"] is None
                                        else given["event_id"])}
    if given["request_id"] is not None:
        obj["request_id"] = given["request_id"]
    if given["timestamp"] is not None:
        # a number as OpenAPI's "number" (JSON's grammar; float() also takes "1_0", " 5",
        # "nan"), else text for the ISO 8601 parser: the two branches of the schema
        text = given["timestamp"]
        obj["timestamp"] = float(text) if _JSON_NUMBER.fullmatch(text) else text
    event = parse_event(obj, settings)
    slot = _admit(request)
    if isinstance(slot, Refusal):
        return _refused(slot)
    try:
        return _answer(await _ingest(request, [event], slot), [])
    finally:
        if slot is not None:
            slot.close()


ROUTES = [
    Route("/events", post_events, methods=["POST"]),
    Route("/track/click", track_click, methods=["POST"]),
]
