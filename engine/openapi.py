"""The OpenAPI 3 description of every route, with the configured limits filled in."""

from __future__ import annotations

from typing import Any

from rankly.engine import __version__
from rankly.engine.config import Settings


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _events_paths(settings: Settings, ident: dict[str, Any],
                  errors: dict[str, Any]) -> dict[str, Any]:
    """``POST /events`` and ``POST /track/click`` (engine/events_api.py)."""
    from rankly.engine.events import MAX_CONTEXT_BYTES, MAX_EVENT_ID, event_types

    event = {"type": "object", "required": ["event_id", "user_id", "item_id", "type"],
             "additionalProperties": False, "properties": {
                 "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID},
                 "user_id": ident, "item_id": ident,
                 "type": {"type": "string", "enum": sorted(event_types(settings))},
                 "value": {"type": "number", "description": "required for rating (0..5)"},
                 "timestamp": {"oneOf": [{"type": "number"}, {"type": "string",
                                                              "format": "date-time"}],
                               "description": "unix seconds or ISO 8601; default now"},
                 "request_id": ident,
                 "context": {"type": "object",
                             "description": f"at most {MAX_CONTEXT_BYTES} bytes as JSON"}}}
    batch = {"type": "array", "items": event, "maxItems": settings.limits.max_events_batch}
    counts = {"description": "Stored durably (duplicates by event_id counted, not stored)",
              "content": {"application/json": {"schema": {
                  "type": "object", "required": ["accepted", "duplicates", "rejected"],
                  "properties": {
                      "accepted": {"type": "integer"}, "duplicates": {"type": "integer"},
                      "rejected": {"type": "array", "items": {"type": "object", "properties": {
                          "index": {"type": "integer"},
                          "error": {"$ref": "#/components/schemas/ErrorDetail"}}}}}}}}}
    down = {**_error("Event storage unavailable: retry with the same event_id values"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
    rl = settings.rate_limits
    budget = (f"{rl.events_global_per_second:g} events/s per worker"
              if rl.events_global_per_second > 0 else "no event budget")
    inflight = (f"{rl.events_max_inflight} ingest requests in flight per worker"
                if rl.events_max_inflight > 0 else "no in-flight cap")
    shed = {**_error(f"Over the server's event admission ({budget}, {inflight}) or the "
                     "client's rate_limits.events_per_second: nothing of the request was "
                     "stored; retry the same events after Retry-After seconds. A batch is "
                     "admitted or refused whole."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
    return {
        "/events": {"post": {
            "operationId": "postEvents",
            "summary": "Record one event or a batch (object, array or {events: [...]})",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [event, batch, {"type": "object", "required": ["events"],
                                         "additionalProperties": False,
                                         "properties": {"events": batch}}]}}}},
            "responses": {"202": counts, **errors, "429": shed, "503": down}}},
        "/track/click": {"post": {
            "operationId": "trackClick", "summary": "Record one click (alias of /events)",
            "parameters": [
                {"name": "user_id", "in": "query", "required": True, "schema": ident},
                {"name": "item_id", "in": "query", "required": True, "schema": ident},
                {"name": "event_id", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID}},
                {"name": "request_id", "in": "query", "required": False, "schema": ident},
            ],
            "responses": {"202": counts, **errors, "429": shed, "503": down}}},
    }


def openapi_schema(settings: Settings) -> dict[str, Any]:
    lim = settings.limits
    ident = {"type": "string", "minLength": 1, "maxLength": lim.max_id_length,
             "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
    n = {"type": "integer", "minimum": 1, "maximum": lim.n_max, "default": lim.n_default}
    errors = {"400": _error("Malformed body"), "413": _error("Body too large"),
              "422": _error("Invalid field (named in error.field)")}
    limited = {"429": {**_error("Rate limited (only when rate_limits are configured)"),
                       "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}
    admin = [{"bearer": []}, {"apiKey": []}]
    auth_errors = {"401": _error("No admin credentials"), "403": _error("Wrong credentials")}
    # NOTE: an experiment key is one path segment: a %2F in it would reach another route.
    key_param = {"name": "key", "in": "path", "required": True,
                 "schema": {**ident, "pattern": "^[^/\\x00-\\x1f\\x7f]+$"}}
    bad_key = {"422": _error("Invalid key")}

    def obj(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": {"type": "object"}}}}

    recs_ok = {"description": "A ranked slate",
               "content": {"application/json": {
                   "schema": {"$ref": "#/components/schemas/Recommendations"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "rankly", "version": __version__,
                 "description": "Plugin-based recommendation ranking engine."},
        "paths": {
            "/recommendations": {
                "get": {
                    "operationId": "getRecommendations",
                    "summary": "Recommendations for a user",
                    "parameters": [
                        {"name": "user_id", "in": "query", "required": True, "schema": ident},
                        {"name": "n", "in": "query", "required": False, "schema": n},
                        {"name": "category", "in": "query", "required": False,
                         "schema": {"type": "array", "items": ident,
                                    "maxItems": lim.max_categories},
                         "style": "form", "explode": True},
                        {"name": "exclude", "in": "query", "required": False,
                         "schema": {"type": "array", "items": ident,
                                    "maxItems": lim.max_exclude},
                         "style": "form", "explode": True},
                    ],
                    "responses": {"200": recs_ok, **errors, **limited},
                },
                "post": {
                    "operationId": "postRecommendations",
                    "summary": "Recommendations for a user or an anonymous session",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/RecommendationRequest"}}}},
                    "responses": {"200": recs_ok, **errors, **limited},
                },
            },
            "/items/{item_id}/similar": {
                "get": {
                    "operationId": "getSimilarItems",
                    "summary": "Items similar to one item",
                    "parameters": [
                        {"name": "item_id", "in": "path", "required": True, "schema": ident},
                        {"name": "n", "in": "query", "required": False, "schema": n},
                    ],
                    "responses": {
                        "200": {"description": "Similar items", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/SimilarItems"}}}},
                        "404": _error("Unknown item"), **errors, **limited,
                    },
                }
            },
            "/experiments/{key}": {
                "get": {"operationId": "getExperiment", "summary": "An experiment (admin)",
                        "security": admin, "parameters": [key_param],
                        "responses": {"200": obj("The experiment"), **auth_errors,
                                      "404": _error("Unknown experiment"), **bad_key}},
                "put": {"operationId": "putExperiment",
                        "summary": "Create or replace an experiment (admin)",
                        "security": admin, "parameters": [key_param],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"type": "object"}}}},
                        "responses": {"200": obj("Replaced"), "201": obj("Created"),
                                      **auth_errors, **errors}},
            },
            "/experiments/{key}/stop": {
                "post": {"operationId": "stopExperiment", "summary": "Stop an experiment (admin)",
                         "security": admin, "parameters": [key_param],
                         "responses": {"200": obj("Stopped"), **auth_errors,
                                       "404": _error("Unknown experiment"), **bad_key}},
            },
            "/experiments/{key}/results": {
                "get": {"operationId": "experimentResults",
                        "summary": "Statistics per variant against control (admin)",
                        "security": admin, "parameters": [key_param],
                        "responses": {"200": obj("Results"), **auth_errors,
                                      "404": _error("Unknown experiment"),
                                      "422": _error("Invalid key or impossible counts"),
                                      "503": _error("Counts unavailable (store down)")}},
            },
            "/dashboard": {"get": {
                "operationId": "dashboard", "summary": "Live monitoring page (HTML)",
                "responses": {"200": {"description": "HTML page",
                                      "content": {"text/html": {}}}}}},
            "/dashboard/data": {"get": {
                "operationId": "dashboardData", "summary": "Series the dashboard polls",
                "responses": {"200": {"description": "Chart series",
                                      "content": {"application/json": {}}}}}},
            "/dashboard/static/{name}": {"get": {
                "operationId": "dashboardAsset", "summary": "Vendored dashboard asset",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Asset"},
                              "404": _error("Unknown asset")}}},
            **_events_paths(settings, ident, {**errors, **limited}),
            "/health": {"get": {"operationId": "health", "summary": "Liveness",
                                "responses": {"200": {"description": "Alive"}}}},
            "/ready": {"get": {"operationId": "ready", "summary": "Model loaded, store reachable",
                               "responses": {"200": {"description": "Ready"},
                                             "503": {"description": "Degraded"}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Metrics",
                                                       "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3"}}}},
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
                "properties": {
                    "user_id": ident, "n": n,
                    "exclude": {"type": "array", "items": ident, "maxItems": lim.max_exclude},
                    "categories": {"type": "array", "items": ident,
                                   "maxItems": lim.max_categories},
                    "session_items": {"type": "array", "items": ident,
                                      "maxItems": lim.max_session_items},
                    "context": {"type": "object"},
                    "request_id": ident,
                },
            },
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
