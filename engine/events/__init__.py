"""Events: their values, the event log, projections, ingest admission, routes and CLI.

``values`` (what an event is, parsing), ``log`` (the durable event log), ``projections``
(live counters built from it), ``admission`` (server-wide ingest limits), ``routes``
(``POST /events``, ``/track/click``) and ``cli`` (``rankly events ...``). The names of
``values`` stay importable from here, where the former ``events`` module had them.
"""

from .values import (
    BUILTIN_TYPES,
    MAX_EVENT_ID,
    MAX_FUTURE_SKEW_S,
    MAX_VALUE,
    MIN_EVENT_BYTES,
    MIN_TIMESTAMP,
    RATING_RANGE,
    Event,
    ParsedBatch,
    event_types,
    latest_timestamp,
    max_events_in,
    parse_batch,
    parse_event,
    parse_timestamp,
)

__all__ = [
    "BUILTIN_TYPES", "MAX_EVENT_ID", "MAX_FUTURE_SKEW_S", "MAX_VALUE", "MIN_EVENT_BYTES",
    "MIN_TIMESTAMP", "RATING_RANGE", "Event", "ParsedBatch", "event_types", "latest_timestamp",
    "max_events_in", "parse_batch", "parse_event", "parse_timestamp",
]
