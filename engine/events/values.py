"""The event value, and parsing one event or a batch with per-event errors naming the field."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..http.validation import (
    RequestError,
    check_context,
    check_id,
    check_text,
    field_name,
    load_json,
    reject_unknown,
)

#: Built-in event types; ``settings.event_types`` adds custom ones (name -> weight).
BUILTIN_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "impression")
MAX_EVENT_ID = 256
MAX_VALUE = 1e300  # an event's value (every one converts to a finite float)
RATING_RANGE = (0.0, 5.0)
#: Clocks drift; a timestamp further ahead than this is a client bug, not a clock skew.
MAX_FUTURE_SKEW_S = 3600.0
MIN_TIMESTAMP = 946684800.0  # 2000-01-01: earlier is a unit mistake (ms vs s) or garbage
#: The shortest event a body can carry, with the comma that separates it from the next one:
#: a body of N bytes holds at most (N + 1) // this many events (see :func:`max_events_in`).
MIN_EVENT_BYTES = len('{"event_id":"a","user_id":1,"item_id":1,"type":""},')
_FIELDS = {"event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id",
           "context"}


@dataclass(frozen=True, slots=True)
class Event:
    """One user event as stored in the log. ``timestamp`` is unix seconds (float)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: float
    value: float | None = None
    request_id: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-ready dict (optional fields left out when empty)."""
        out: dict[str, Any] = {"id": self.event_id, "u": self.user_id, "i": self.item_id,
                               "t": self.type, "ts": self.timestamp}
        if self.value is not None:
            out["v"] = self.value
        if self.request_id:
            out["r"] = self.request_id
        if self.context:
            out["c"] = dict(self.context)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Event:
        """Inverse of :meth:`to_json` (trusted input: the log wrote it)."""
        return cls(str(doc["id"]), str(doc["u"]), str(doc["i"]), str(doc["t"]),
                   float(doc["ts"]), None if doc.get("v") is None else float(doc["v"]),
                   doc.get("r"), doc.get("c") or {})


def event_types(settings: Settings) -> frozenset[str]:
    """Every accepted type: the built-ins plus the custom ones declared in settings."""
    return frozenset(BUILTIN_TYPES) | frozenset(settings.event_types)


def latest_timestamp(now: float) -> float:
    """The latest timestamp accepted at ``now``: the end of the next clock hour, so an hour
    to two ahead. A step, not ``now + 1 h``, so the bound the OpenAPI document states holds
    until the hour turns (#18)."""
    return (now // MAX_FUTURE_SKEW_S + 2) * MAX_FUTURE_SKEW_S


def parse_timestamp(value: Any, now: float) -> float:
    """Unix seconds (int/float) or ISO 8601 text (``Z`` or an offset; naive means UTC)."""
    if value is None:
        return now
    if isinstance(value, bool):
        raise RequestError("timestamp", "must be unix seconds or an ISO 8601 string")
    if isinstance(value, int | float):
        if not MIN_TIMESTAMP <= value <= latest_timestamp(now):  # before float(): 10**400
            raise RequestError("timestamp", "must be unix seconds after 2000-01-01, at most "
                                            "an hour ahead")
        ts = float(value)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise RequestError("timestamp", "must be unix seconds or an ISO 8601 string") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    else:
        raise RequestError("timestamp", "must be unix seconds or an ISO 8601 string")
    if not math.isfinite(ts) or ts < MIN_TIMESTAMP:
        raise RequestError("timestamp", "must be unix seconds after 2000-01-01")
    if ts > latest_timestamp(now):
        raise RequestError("timestamp", "is more than an hour in the future")
    return ts


#: The key :func:`_once` adds to an object that gives a key twice; its value is
#: the first repeated key. Not a string, so no JSON text can collide with it.
REPEATED = ("repeated",)


def _once(pairs: list[tuple[str, Any]]) -> dict[Any, Any]:
    obj: dict[Any, Any] = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj[REPEATED] = key
                break
            seen.add(key)
    return obj


def parse_event(obj: Any, settings: Settings, now: float | None = None) -> Event:
    """Validate one event object; raises :class:`RequestError` naming the first bad field."""
    now = time.time() if now is None else now
    limits = settings.limits
    if not isinstance(obj, dict):
        raise RequestError("event", "must be a JSON object")
    if REPEATED in obj:
        raise RequestError(field_name(obj[REPEATED], "event"), "must be given once")
    if isinstance(obj.get("context"), dict) and REPEATED in obj["context"]:
        raise RequestError("context", f"{field_name(obj['context'][REPEATED], 'a key')} must be "
                                      f"given once")
    reject_unknown(obj, _FIELDS, where="event")
    for name in ("event_id", "user_id", "item_id", "type"):
        if obj.get(name) is None:
            raise RequestError(name, "is required")
    event_id = check_text(obj["event_id"], "event_id", MAX_EVENT_ID)
    for name in ("value", "timestamp", "request_id", "context"):
        if name in obj and obj[name] is None:  # the schema has no null (#18)
            raise RequestError(name, "must not be null (leave it out)")
    user_id = check_id(obj["user_id"], "user_id", limits)
    item_id = check_id(obj["item_id"], "item_id", limits)
    kind = obj["type"]
    if not isinstance(kind, str) or kind not in event_types(settings):
        allowed = ", ".join(sorted(event_types(settings)))
        raise RequestError("type", f"must be one of {allowed}")
    value = obj.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError("value", "must be a number")
        if not -MAX_VALUE <= value <= MAX_VALUE:  # also NaN, inf and 10**400 (float() raises)
            raise RequestError("value", f"must be a number in -{MAX_VALUE:g}..{MAX_VALUE:g}")
        value = float(value)
        if kind == "rating" and not RATING_RANGE[0] <= value <= RATING_RANGE[1]:
            raise RequestError("value", f"a rating must be in {RATING_RANGE[0]:g}.."
                                        f"{RATING_RANGE[1]:g}")
    elif kind == "rating":
        raise RequestError("value", "is required for a rating")
    ts = parse_timestamp(obj.get("timestamp"), now)
    request_id = obj.get("request_id")
    if request_id is not None:
        request_id = check_id(request_id, "request_id", limits)
    context = check_context(obj["context"]) if "context" in obj else {}
    return Event(event_id, user_id, item_id, kind, ts, value, request_id, context)


@dataclass(frozen=True)
class ParsedBatch:
    """The valid events of a request (with their positions) and the rejected ones."""

    events: list[Event]
    positions: list[int]
    rejected: list[dict[str, Any]]
    single: bool  # the body was one event object, not a list


def max_events_in(content_length: int | None, limit: int) -> int:
    """The most events a ``POST /events`` body of ``content_length`` bytes can hold (at least
    1, at most ``limit``; 1 when the length is unknown): what admission control asks the
    token bucket for before reading the body."""
    if content_length is None:
        return 1
    return max(1, min(limit, (content_length + 1) // MIN_EVENT_BYTES))


def parse_batch(raw: bytes, settings: Settings, now: float | None = None) -> ParsedBatch:
    """Parse a ``POST /events`` body: an event object, an array, or ``{"events": [...]}``.

    Raises :class:`RequestError` for a body that is not JSON (400) or a batch larger than
    ``limits.max_events_batch`` (422, before any event is validated). Bad events do not fail
    the batch: each is listed as ``{"index", "error": {"field", "message"}}``.
    """
    now = time.time() if now is None else now
    # strict as every other JSON body (UTF-8, a key given once), but event by event: an
    # object that repeats a key is marked, not refused, and NaN reaches the value's check
    body = load_json(raw, "a JSON object or array", pairs_hook=_once, constants=True)
    if isinstance(body, dict) and REPEATED in body:
        raise RequestError(field_name(body[REPEATED], "body"), "must be given once")
    single = False
    if isinstance(body, dict) and set(body) == {"events"}:
        body = body["events"]
        if not isinstance(body, list):
            raise RequestError("events", "must be an array of events")
    elif isinstance(body, dict):
        body, single = [body], True
    if not isinstance(body, list):
        raise RequestError("body", "must be a JSON object or array", status=400)
    limit = settings.limits.max_events_batch
    if len(body) > limit:
        raise RequestError("events", f"must have at most {limit} events per request")
    events: list[Event] = []
    positions: list[int] = []
    rejected: list[dict[str, Any]] = []
    for index, obj in enumerate(body):
        try:
            events.append(parse_event(obj, settings, now))
            positions.append(index)
        except RequestError as exc:
            rejected.append({"index": index, **exc.to_json()})
    return ParsedBatch(events, positions, rejected, single)
