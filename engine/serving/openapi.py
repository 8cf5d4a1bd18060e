"""The OpenAPI 3 description of every route, with the configured limits filled in.

It states every constraint the server enforces (lengths, patterns, types, enums, required
fields, ``additionalProperties: false`` wherever unknown fields are refused), so a request
the schema allows is accepted and one it forbids is refused (checked by schemathesis,
tests/engine/serving/test_fuzz_api.py and tests/engine/serving/test_schemathesis_cli.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..config import Settings
from ..experiments import Metric
from ..experiments.assignment import MAX_COUNTER, MAX_NAME_LENGTH
from ..http.validation import ID_PATTERN, ID_RULE

_KEY_CHAR = "[^/\\x00-\\x1f\\x7f-\\x9f]"
#: Experiment keys are one path segment (a %2F in one would reach another route), not only
#: spaces.
KEY_PATTERN = f"^{_KEY_CHAR}*[^/\\s\\x00-\\x1f\\x7f-\\x9f]{_KEY_CHAR}*$"
#: A new experiment's key also has no "%": HTTP clients that re-quote a path (requests,
#: schemathesis) leave a "%0A" in a key as it is, so the server would read a newline
#: and no client could address that experiment again.
NEW_KEY_PATTERN = KEY_PATTERN.replace("[^/", "[^/%")


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}}}


def _text(max_length: int, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_length,
                           "pattern": ID_PATTERN,
                           "description": description or ID_RULE.format(max_length)}
    return out


def _past_iso_pattern(now: datetime) -> str:
    """ISO 8601 UTC timestamps from 2000 up to the end of last year: always valid dates that
    the server accepts (it refuses times before 2000 or over an hour ahead)."""
    years = "|".join(str(y) for y in range(2000, now.year))
    return (f"^({years})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]"
            ":[0-5][0-9](\\.[0-9]{1,6})?Z$")


def timestamp_schema(now: float) -> dict[str, Any]:
    """An event's ``timestamp``, in a body or the query of ``/track/click`` (one parser,
    ``events.parse_timestamp``, for both)."""
    from ..events.values import MIN_TIMESTAMP, latest_timestamp

    return {"oneOf": [
        {"type": "number", "minimum": MIN_TIMESTAMP, "maximum": latest_timestamp(now)},
        {"type": "string", "pattern": _past_iso_pattern(datetime.fromtimestamp(now, UTC))},
    ], "description": "unix seconds or ISO 8601 (default now); refused before 2000-01-01 "
                      "and after the end of the next clock hour of the server. The bound "
                      "written here holds until the hour turns."}


def context_schema() -> dict[str, Any]:
    """An event's or a recommendation request's ``context`` (``check_context``)."""
    from ..http.validation import CONTEXT_MAX_KEYS, CONTEXT_MAX_TEXT, INT64_RANGE

    return {"type": "object", "maxProperties": CONTEXT_MAX_KEYS,
            "additionalProperties": {"oneOf": [
                {"type": "string", "maxLength": CONTEXT_MAX_TEXT},
                {"type": "number", "minimum": INT64_RANGE[0], "maximum": INT64_RANGE[1]},
                {"type": "boolean"}]},
            "description": f"flat: at most {CONTEXT_MAX_KEYS} keys of at most "
                           f"{CONTEXT_MAX_TEXT} characters, each value a string (at "
                           f"most {CONTEXT_MAX_TEXT} characters), a number or a boolean"}


def _event_schemas(settings: Settings, ident: dict[str, Any]) -> dict[str, Any]:
    from ..events.values import (
        BUILTIN_TYPES,
        MAX_EVENT_ID,
        MAX_VALUE,
        RATING_RANGE,
        event_types,
    )
    now = time.time()
    common = {
        "event_id": {**_text(MAX_EVENT_ID), "description": "idempotency key; "
                     + ID_RULE.format(MAX_EVENT_ID)},
        "user_id": ident, "item_id": ident,
        "timestamp": timestamp_schema(now),
        "request_id": {**ident, "description": "the request_id of the served slate this "
                                                "event answers (attributes it to it)"},
        "context": context_schema(),
    }
    others = sorted(event_types(settings) - {"rating"})
    rating = {"type": "object", "required": ["event_id", "user_id", "item_id", "type", "value"],
              "additionalProperties": False, "properties": {
                  **common, "type": {"type": "string", "enum": ["rating"]},
                  "value": {"type": "number", "minimum": RATING_RANGE[0],
                            "maximum": RATING_RANGE[1]}}}
    other = {"type": "object", "required": ["event_id", "user_id", "item_id", "type"],
             "additionalProperties": False, "properties": {
                 **common, "type": {"type": "string", "enum": others,
                                    "description": "built-in: " + ", ".join(
                                        t for t in BUILTIN_TYPES if t != "rating")
                                    + "; custom ones come from the event_types setting"},
                 "value": {"type": "number", "minimum": -MAX_VALUE, "maximum": MAX_VALUE}}}
    return {"RatingEvent": rating, "Event": other}


def _events_paths(settings: Settings, ident: dict[str, Any],
                  errors: dict[str, Any]) -> dict[str, Any]:
    """``POST /events`` and ``POST /track/click`` (engine/events/routes.py)."""
    from ..events.values import MAX_EVENT_ID

    one = {"oneOf": [{"$ref": "#/components/schemas/Event"},
                     {"$ref": "#/components/schemas/RatingEvent"}]}
    # NOTE: a batch's items are not checked as a whole: each event is validated alone and an
    # invalid one is listed in "rejected" while the others are stored (a 202), so a batch
    # takes any items.
    batch = {"type": "array", "maxItems": settings.limits.max_events_batch,
             "items": {"description": "an event (Event or RatingEvent); one that is not valid "
                                      "is listed in the answer's rejected, the others stored"}}
    counts = {"description": "Stored durably (duplicates by event_id counted, not stored)",
              "content": {"application/json": {"schema": {
                  "type": "object", "required": ["accepted", "duplicates", "rejected"],
                  "properties": {
                      "accepted": {"type": "integer"}, "duplicates": {"type": "integer"},
                      "rejected": {"type": "array", "items": {"type": "object", "properties": {
                          "index": {"type": "integer"},
                          "error": {"$ref": "#/components/schemas/ErrorDetail"}}}}}}}}}
    down = _error("Event storage unavailable: retry with the same event_id values",
                  _RETRY_AFTER)
    rl = settings.rate_limits
    budget = (f"{rl.events_global_per_second:g} events/s per worker"
              if rl.events_global_per_second > 0 else "no event budget")
    inflight = (f"{rl.events_max_inflight} ingest requests in flight per worker"
                if rl.events_max_inflight > 0 else "no in-flight cap")
    shed = _error(f"Over the server's event admission ({budget}, {inflight}) or the "
                  "client's rate_limits.events_per_second: nothing of the request was "
                  "stored; retry the same events after Retry-After seconds. A batch is "
                  "admitted or refused whole.", _RETRY_AFTER)
    return {
        "/events": {"post": {
            "operationId": "postEvents", "tags": ["events"],
            "summary": "Record one event or a batch (object, array or {events: [...]})",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [one, batch, {"type": "object", "required": ["events"],
                                       "additionalProperties": False,
                                       "properties": {"events": batch}}]}}}},
            "responses": {"202": counts, **errors, "429": shed, "503": down}}},
        "/track/click": {"post": {
            "operationId": "trackClick", "tags": ["events"],
            "summary": "Record one click (alias of /events)",
            "description": "Without event_id every call is a new click: send one to make "
                           "retries safe.",
            "parameters": [
                {"name": "user_id", "in": "query", "required": True, "schema": ident},
                {"name": "item_id", "in": "query", "required": True, "schema": ident},
                {"name": "event_id", "in": "query", "required": False,
                 "schema": _text(MAX_EVENT_ID)},
                {"name": "request_id", "in": "query", "required": False, "schema": ident},
                {"name": "timestamp", "in": "query", "required": False,
                 "schema": timestamp_schema(time.time())},
            ],
            "responses": {"202": counts,
                          **{k: v for k, v in errors.items() if k not in ("400", "415")},
                          "429": shed, "503": down}}},
    }


def _component_names(registries: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    """The component names of ``kind`` a variant may list (what PUT checks them against)."""
    items: dict[str, Any] = {"type": "string", "minLength": 1}
    if registries is not None:
        items = {"type": "string", "enum": sorted(registries[kind].entries)}
    return {"type": "array", "items": items,
            "description": "component names replacing the configured list of the stage"}


def _component_options(registries: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options``: per component name, the option keys it declared (any keys when it
    declared none); host sections (``redis``, ``events``) take any keys."""
    out: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "object"},
                           "description": "plugin options per component name"}
    if registries is None:
        return out
    from ..plugins import HOST_SECTIONS, declared_options

    sections: dict[str, Any] = {name: {"type": "object"} for name in sorted(HOST_SECTIONS)}
    for name in sorted({n for reg in registries.values() for n in reg.entries}):
        declared = declared_options(name, registries)
        sections[name] = ({"type": "object"} if declared is None else
                          {"type": "object", "additionalProperties": False,
                           "properties": {k: _option_schema(v)
                                          for k, v in sorted(declared.items())}})
    return {**out, "additionalProperties": False, "properties": sections}


def _option_schema(default: Any) -> dict[str, Any]:
    from ..experiments.routes import option_schema

    schema = option_schema(default)
    return {**schema, "description": f"default {default!r}"} if schema else {}


def _experiment_schema(ident: dict[str, Any],
                       registries: Mapping[str, Any] | None) -> dict[str, Any]:
    name = _text(MAX_NAME_LENGTH)
    counter = {"type": "integer", "minimum": 0, "maximum": MAX_COUNTER}
    variant = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {
                   "name": {**name, "description": "unique within the experiment; "
                                                   + name["description"]},
                   "weight": {"type": "number", "minimum": 0, "maximum": 1e300,
                              "default": 1},
                   "scorers": _component_names(registries, "scorers"),
                   "candidates": _component_names(registries, "candidate_generators"),
                   "rerankers": _component_names(registries, "rerankers"),
                   "options": _component_options(registries)}}
    metric = {"type": "string", "enum": [m.value for m in Metric],
              "description": "per exposed user (ctr, conversion) or per impression "
                             "(impression_ctr, impression_conversion)"}
    return {
        "type": "object", "required": ["variants"], "additionalProperties": False,
        "description": "Cross-field rules answer 409: variant names must be distinct, the "
                       "weights must not all be 0, a layer range needs start < end and must "
                       "not overlap another experiment's in the same layer, a bandit's "
                       "primary metric is a per-user one, and a key in the body must be the "
                       "key of the path.",
        "properties": {
            "key": {**ident, "description": "the key of the path, if given"},
            "seed": {"type": "string", "minLength": 1},
            "status": {"type": "string", "enum": ["draft", "running", "stopped"],
                       "default": "draft"},
            "coverage": {"type": "number", "minimum": 0, "maximum": 1},
            "holdout": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
            "primary_metric": metric,
            "guardrails": {"type": "array", "items": metric},
            "mde": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                    "maximum": 1e300},
            "mde_relative": {"type": "boolean"},
            "phase": counter,
            "epoch": counter,
            "sticky": {"type": "boolean"},
            "bandit": {"type": "boolean"},
            "layer": {"type": "object", "required": ["name", "range"],
                      "additionalProperties": False, "properties": {
                          "name": name,
                          "range": {"type": "array", "minItems": 2, "maxItems": 2,
                                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                                    "description": "[start, end), start < end"}}},
            "variants": {"type": "array", "minItems": 2, "items": variant,
                         "description": "control first"},
        },
    }


#: What the HTTP server (uvicorn + httptools) answers before any route sees the request.
UNPARSEABLE = ("The HTTP server could not parse the request (e.g. a request line or headers "
               "over the parser's limit, about 80 KiB with httptools, or bytes HTTP does not "
               "allow) and closed the connection")


def openapi_schema(settings: Settings,
                   registries: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The document for ``settings``; with the runtime's plugin ``registries`` it also lists
    the component names and option keys an experiment variant may use."""
    doc = _document(settings, registries)
    for item in doc["paths"].values():
        for operation in item.values():
            operation["responses"].setdefault("400", _error(UNPARSEABLE))
    return doc


def _document(settings: Settings, registries: Mapping[str, Any] | None) -> dict[str, Any]:
    lim = settings.limits
    ident = _text(lim.max_id_length)
    n = {"type": "integer", "minimum": 1, "maximum": lim.n_max, "default": lim.n_default}
    body_errors = {
        "400": _error("Malformed JSON, or a request the HTTP server could not parse"),
        "408": _error("The body did not arrive within deadlines.body_read_ms, or arrived "
                      "slower than deadlines.body_min_rate; the connection is closed"),
        "413": _error("Body too large"),
        "415": _error("The body is not Content-Type: application/json, or names a "
                      "charset other than utf-8"),
        "422": _error("Invalid field (named in error.field)"),
    }
    query_errors = {"422": _error("Invalid, repeated or unknown parameter (named in "
                                  "error.field), or an id that is not UTF-8 text")}
    limited = {"429": _error("Rate limited (only when rate_limits are configured)",
                             _RETRY_AFTER)}
    admin = [{"bearer": []}, {"apiKey": []}]
    auth_errors = {"401": _error("No admin credentials"),
                   "403": _error("Wrong credentials, or admin routes disabled (no admin "
                                 "token configured)")}
    key_param = {"name": "key", "in": "path", "required": True,
                 "schema": {**ident, "pattern": KEY_PATTERN,
                            "description": "one path segment, not only spaces; "
                                           + ID_RULE.format(lim.max_id_length)}}
    new_key_param = {**key_param, "schema": {
        **key_param["schema"], "pattern": NEW_KEY_PATTERN,
        "description": "one path segment without '%', not only spaces; "
                       + ID_RULE.format(lim.max_id_length)}}
    bad_key = {"422": _error("Invalid key")}
    unknown = {"404": _error("Unknown experiment")}
    experiment = {"description": "The experiment", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Experiment"}}}}

    def obj(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": {"type": "object"}}}}

    recs_ok = {"description": "A ranked slate",
               "content": {"application/json": {
                   "schema": {"$ref": "#/components/schemas/Recommendations"}}}}
    list_param = {"style": "form", "explode": True}
    return {
        "openapi": "3.0.3",
        "info": {"title": "rankly", "version": __version__,
                 "description": "Plugin-based recommendation ranking engine. Every error is "
                                "JSON {\"error\": {\"field\", \"message\"}}, except a request "
                                "the HTTP server cannot parse (see /docs)."},
        "tags": [{"name": "recommendations"}, {"name": "events"},
                 {"name": "experiments", "description": "admin"},
                 {"name": "operations"}],
        "paths": {
            "/recommendations": {
                "get": {
                    "operationId": "getRecommendations", "tags": ["recommendations"],
                    "summary": "Recommendations for a user",
                    "parameters": [
                        {"name": "user_id", "in": "query", "required": True, "schema": ident},
                        {"name": "n", "in": "query", "required": False, "schema": n},
                        {"name": "category", "in": "query", "required": False,
                         "schema": {"type": "array", "items": ident,
                                    "maxItems": lim.max_categories}, **list_param},
                        {"name": "exclude", "in": "query", "required": False,
                         "schema": {"type": "array", "items": ident,
                                    "maxItems": lim.max_exclude}, **list_param},
                        {"name": "request_id", "in": "query", "required": False,
                         "schema": ident},
                    ],
                    "responses": {"200": recs_ok, **query_errors, **limited},
                },
                "post": {
                    "operationId": "postRecommendations", "tags": ["recommendations"],
                    "summary": "Recommendations for a user or an anonymous session",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/RecommendationRequest"}}}},
                    "responses": {"200": recs_ok, **body_errors, **limited},
                },
            },
            "/items/{item_id}/similar": {
                "get": {
                    "operationId": "getSimilarItems", "tags": ["recommendations"],
                    "summary": "Items similar to one item",
                    "parameters": [
                        {"name": "item_id", "in": "path", "required": True, "schema": ident},
                        {"name": "n", "in": "query", "required": False, "schema": n},
                    ],
                    "responses": {
                        "200": {"description": "Similar items", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/SimilarItems"}}}},
                        "404": _error("Unknown item"), **query_errors, **limited,
                    },
                }
            },
            "/experiments": {
                "get": {"operationId": "listExperiments", "tags": ["experiments"],
                        "summary": "Every experiment, in configuration order (admin)",
                        "security": admin,
                        "responses": {"200": {"description": "The experiments", "content": {
                            "application/json": {"schema": {
                                "type": "object", "required": ["experiments"],
                                "properties": {"experiments": {"type": "array", "items": {
                                    "$ref": "#/components/schemas/Experiment"}}}}}}},
                            **auth_errors}},
            },
            "/experiments/{key}": {
                "get": {"operationId": "getExperiment", "tags": ["experiments"],
                        "summary": "An experiment (admin)",
                        "security": admin, "parameters": [key_param],
                        "responses": {"200": experiment, **auth_errors, **unknown,
                                      **bad_key}},
                "put": {"operationId": "putExperiment", "tags": ["experiments"],
                        "summary": "Create or replace an experiment (admin)",
                        "security": admin, "parameters": [new_key_param],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ExperimentDefinition"}}}},
                        "responses": {"200": {**experiment, "description": "Replaced"},
                                      "201": {**experiment, "description": "Created"},
                                      **auth_errors, **body_errors,
                                      "409": _error("The definition contradicts itself or "
                                                    "another experiment (field named)")}},
            },
            "/experiments/{key}/stop": {
                "post": {"operationId": "stopExperiment", "tags": ["experiments"],
                         "summary": "Stop an experiment (admin)",
                         "security": admin, "parameters": [key_param],
                         "responses": {"200": {**experiment, "description": "Stopped"},
                                       **auth_errors, **unknown, **bad_key}},
            },
            "/experiments/{key}/results": {
                "get": {"operationId": "experimentResults", "tags": ["experiments"],
                        "summary": "Statistics per variant against control (admin)",
                        "security": admin, "parameters": [key_param],
                        "responses": {"200": obj("Results"), **auth_errors, **unknown,
                                      "422": _error("Invalid key or impossible counts"),
                                      "503": _error("Counts unavailable (store down)",
                                                    _RETRY_AFTER)}},
            },
            "/dashboard": {"get": {
                "operationId": "dashboard", "tags": ["operations"],
                "summary": "Live monitoring page (HTML)",
                "responses": {"200": {"description": "HTML page",
                                      "content": {"text/html": {}}}}}},
            "/dashboard/data": {"get": {
                "operationId": "dashboardData", "tags": ["operations"],
                "summary": "Series the dashboard draws (sampled by the server)",
                "responses": {"200": {"description": "Chart series",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
            "/dashboard/static/{name}": {"get": {
                "operationId": "dashboardAsset", "tags": ["operations"],
                "summary": "A dashboard or /docs asset, served by rankly (no CDN)",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": _asset_names()}}],
                "responses": {"200": {"description": "Asset", "content": {
                    "text/javascript": {}, "text/css": {}, "text/plain": {}}},
                    "404": _error("Unknown asset")}}},
            "/docs": {"get": {
                "operationId": "docs", "tags": ["operations"],
                "summary": "This API as a readable page (drawn from /openapi.json)",
                "responses": {"200": {"description": "HTML page",
                                      "content": {"text/html": {}}}}}},
            **_events_paths(settings, ident, {**body_errors, **query_errors, **limited}),
            "/health": {"get": {"operationId": "health", "tags": ["operations"],
                                "summary": "Liveness",
                                "responses": {"200": obj("Alive")}}},
            "/ready": {"get": {"operationId": "ready", "tags": ["operations"],
                               "summary": "Model loaded, store reachable; breaker states",
                               "responses": {"200": obj("Ready"), "503": obj("Degraded")}}},
            "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"],
                                 "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Metrics",
                                                       "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"],
                                      "summary": "This document",
                                      "responses": {"200": obj("OpenAPI 3")}}},
        },
        "components": {
          "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
          },
          "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
            },
            "ErrorDetail": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string", "minLength": 1},
                               "message": {"type": "string", "minLength": 1}},
            },
            "RecommendationRequest": {
                "type": "object", "additionalProperties": False,
                "description": "user_id, or a non-empty session_items, or both",
                "anyOf": [{"required": ["user_id"]},
                          {"required": ["session_items"],
                           "properties": {"session_items": {"minItems": 1}}}],
                "properties": {
                    "user_id": ident, "n": n,
                    "exclude": {"type": "array", "items": ident, "maxItems": lim.max_exclude},
                    "categories": {"type": "array", "items": ident,
                                   "maxItems": lim.max_categories},
                    "session_items": {"type": "array", "items": ident,
                                      "maxItems": lim.max_session_items},
                    "context": context_schema(),
                    "request_id": ident,
                },
            },
            **_event_schemas(settings, ident),
            "ExperimentDefinition": _experiment_schema(ident, registries),
            "Experiment": {"type": "object", "required": ["key", "status", "variants"],
                           "properties": {"key": {"type": "string"},
                                          "status": {"type": "string",
                                                     "enum": ["draft", "running", "stopped"]},
                                          "variants": {"type": "array",
                                                       "items": {"type": "object"}}}},
            "Item": {
                "type": "object", "required": ["item_id", "score", "reasons"],
                "properties": {"item_id": {"type": "string"}, "score": {"type": "number"},
                               "reasons": {"type": "array", "items": {"type": "string"},
                                           "minItems": 1}},
            },
            "Recommendations": {
                "type": "object",
                "required": ["user_id", "items", "variant", "model_version", "cached",
                             "fallback", "request_id"],
                "properties": {
                    "user_id": {"type": "string", "nullable": True},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                    "variant": {"type": "string", "nullable": True},
                    "experiment": {"type": "string", "nullable": True},
                    "model_version": {"type": "string"},
                    "cached": {"type": "boolean"},
                    "fallback": {"type": "string", "nullable": True},
                    "request_id": {"type": "string"},
                },
            },
            "SimilarItems": {
                "type": "object", "required": ["item_id", "items", "model_version"],
                "properties": {
                    "item_id": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                    "model_version": {"type": "string"},
                    "fallback": {"type": "string", "nullable": True},
                },
            },
        }},
    }


def _asset_names() -> list[str]:
    from .dashboard import ASSETS

    return sorted(ASSETS)
