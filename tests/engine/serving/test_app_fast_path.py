"""GET /recommendations through the pure-ASGI fast path answers exactly as the Starlette route:
status, headers, body, metric increments and impressions, for hits, misses and errors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.datastructures import QueryParams
from starlette.testclient import TestClient

from rankly.engine.config import Deadlines, load_settings
from rankly.engine.http.validation import RequestError, parse_query
from rankly.engine.serving.app import RecommendationsFastPath, create_app, plain_query_request

#: The same requests in the same order, for both apps: misses, then hits, cold users and
#: fallbacks, filters, and every kind of 4xx the route answers.
REQUESTS = [
    "/recommendations?user_id=1&n=5",
    "/recommendations?user_id=1&n=5",
    "/recommendations?user_id=2",
    "/recommendations?user_id=2",
    "/recommendations?n=7&user_id=3&exclude=1&exclude=2",
    "/recommendations?n=7&user_id=3&exclude=1&exclude=2",
    "/recommendations?user_id=3&n=7&exclude=2&exclude=1",
    "/recommendations?user_id=4&category=c1&n=3",
    "/recommendations?user_id=never-seen&n=4",
    "/recommendations?user_id=never-seen&n=4",
    "/recommendations?user_id=5&request_id=mine-1",
    "/recommendations?user_id=5&request_id=mine-1",
    "/recommendations?user_id=6&&n=2&",
    "/recommendations?user_id=caf%C3%A9&n=2",
    "/recommendations?user_id=a+b&n=2",
    "/recommendations?n=5",
    "/recommendations?user_id=1&n=0",
    "/recommendations?user_id=1&n=x",
    "/recommendations?user_id=1&n=5&n=6",
    "/recommendations?user_id=1&colour=red",
    "/recommendations?user_id=",
    "/recommendations?user_id",
    "/recommendations?=x&user_id=1",
    "/recommendations?user_id=%FF%FE",
    "/recommendations?user_id=" + "x" * 300,
    "/recommendations?user_id=1&request_id=",
    "/recommendations/?user_id=1",
    "/recommendationsx?user_id=1",
    "/recommendations",
]
#: Fields that differ between any two answers (a new request id per request).
VOLATILE = ("request_id",)
#: Metrics whose increments are compared (histograms by their _count).
COUNTED = ("rankly_http_requests_total", "rankly_http_request_duration_seconds_count",
           "rankly_cache_lookups_total", "rankly_stage_duration_seconds_count",
           "rankly_fallbacks_total", "rankly_recommendation_slates_total")


def _settings(artifacts):
    settings = load_settings(environ={}, artifacts=artifacts,
                             data_dir=tempfile.mkdtemp(prefix="rankly-fast-path-"))
    return settings.replace(deadlines=Deadlines(request_ms=30_000, stage_ms=30_000))


def _general(app):
    """The same app without the fast path: every request goes through Starlette's router."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not RecommendationsFastPath]
    return app


def _counts() -> dict[tuple, float]:
    out = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name in COUNTED:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _replay(app) -> tuple[list[tuple], dict[tuple, float], list[dict]]:
    """Answers (status, headers, body), metric increments and logged impressions."""
    answers = []
    before = _counts()
    with TestClient(app) as client:
        for path in REQUESTS:
            r = client.get(path)
            body = r.json()
            for field in VOLATILE:
                if isinstance(body, dict) and field in body and "mine" not in str(body[field]):
                    body[field] = "<id>"
            headers = sorted((k, v) for k, v in r.headers.items() if k != "content-length")
            answers.append((path, r.status_code, headers, body))
        runtime = client.app_state["runtime"]
        log_path = Path(runtime.extras["events"].log.path)
    after = _counts()  # the lifespan's shutdown has flushed the impressions
    deltas = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    impressions = []
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        for field in ("id", "r", "ts", "at"):
            event.pop(field, None)
        impressions.append(event)
    return answers, deltas, impressions


def test_the_fast_path_answers_as_the_route(artifacts):
    fast = _replay(create_app(_settings(artifacts)))
    general = _replay(_general(create_app(_settings(artifacts))))
    for got, want in zip(fast[0], general[0], strict=True):
        assert got == want
    assert fast[1] == general[1]
    assert fast[2] == general[2] and fast[2]
    statuses = {status for _, status, _, _ in fast[0]}
    assert {200, 404, 422} <= statuses
    assert any(body.get("cached") for _, _, _, body in fast[0] if isinstance(body, dict))


def test_content_length_is_the_body_length(artifacts):
    with TestClient(create_app(_settings(artifacts))) as client:
        r = client.get("/recommendations?user_id=1&n=5")
        assert int(r.headers["content-length"]) == len(r.content)
        assert r.headers["content-type"] == "application/json"


def test_plain_requests_do_not_reach_the_router(artifacts):
    """The fast path answers a valid plain GET itself; what it cannot answer goes on."""
    reached = []

    async def router(scope, receive, send):
        reached.append(scope["query_string"])
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with TestClient(create_app(_settings(artifacts))) as client:
        probe = TestClient(RecommendationsFastPath(router))
        probe.app_state.update(client.app_state)
        assert probe.get("/recommendations?user_id=1&n=5").status_code == 200
        assert probe.get("/recommendations?user_id=1&n=0").status_code == 599
        assert probe.get("/recommendations?user_id=caf%C3%A9").status_code == 599
        assert probe.post("/recommendations", json={"user_id": "1"}).status_code == 599
    assert reached == [b"user_id=1&n=0", b"user_id=caf%C3%A9", b""]


_QUERY_CHARS = st.sampled_from(["user_id", "n", "exclude", "category", "request_id", "x", "",
                                "=", "&", "1", "5", "a", "0", "21", "-", ".", "é", "+", "%41"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_QUERY_CHARS, max_size=12))
def test_plain_queries_parse_as_starlette_parses_them(parts):
    raw = "".join(parts).encode("utf-8")
    limits = load_settings(environ={}).limits
    got = plain_query_request(raw, limits)
    try:
        want = parse_query(QueryParams(raw), limits)
    except RequestError:
        assert got is None
        return
    if got is None:  # only queries that need decoding are left to Starlette
        assert not raw.isascii() or b"%" in raw or b"+" in raw
        return
    assert (got.user_id, got.n, got.exclude, got.categories) == \
        (want.user_id, want.n, want.exclude, want.categories)
    names = [part.partition("=")[0] for part in raw.decode("ascii").split("&")]
    if "request_id" in names:  # given (a value such as user_id=request_id=x is not one)
        assert got.request_id == want.request_id


@pytest.mark.parametrize("raw", [b"user_id=1&n=5", b"n=5&user_id=1", b"user_id=1&&n=5&"])
def test_plain_query_request_reads_the_route_fields(raw):
    req = plain_query_request(raw, load_settings(environ={}).limits)
    assert req is not None and (req.user_id, req.n) == ("1", 5)


def test_answer_json_writes_the_route_bytes():
    orjson = pytest.importorskip("orjson")
    from rankly.engine.serving.app import answer_json

    items = [{"item_id": str(i), "score": 1.5 - i / 10, "reasons": ["Because"]} for i in range(3)]
    body = {"user_id": "u", "items": items, "variant": None, "experiment": None,
            "model_version": "v", "fallback": None, "cached": True, "request_id": "r1"}
    for answer in (body, {**body, "request_id": "r2"}, {**body, "user_id": "w"},
                   {**body, "cached": False}, {**body, "items": items[:1]},
                   {"items": [], "request_id": "x"}, {"items": items}, {**body, "request_id": "é"}):
        assert answer_json(answer) == orjson.dumps(answer)
        assert answer_json(answer) == orjson.dumps(answer)  # from the memo


def test_only_cached_answers_are_memoized():
    """A computed answer's items list never comes back: memoizing it would only hold it alive
    for the garbage collector to walk (the tail latency of misses under load)."""
    pytest.importorskip("orjson")
    from rankly.engine.serving import app as app_module

    app_module._ANSWER_HEADS.clear()
    items = [{"item_id": "1", "score": 1.0, "reasons": []}]
    computed = {"user_id": "u", "items": items, "cached": False, "request_id": "r"}
    app_module.answer_json(computed)
    assert not app_module._ANSWER_HEADS
    app_module.answer_json({**computed, "cached": True})
    assert list(app_module._ANSWER_HEADS) == [id(items)]


def test_a_repeated_query_is_validated_once_with_a_new_request_id_each_time():
    limits = load_settings(environ={}).limits
    first = plain_query_request(b"user_id=9&n=4&exclude=b&exclude=a", limits)
    again = plain_query_request(b"user_id=9&n=4&exclude=b&exclude=a", limits)
    assert (again.user_id, again.n, again.exclude) == ("9", 4, ("b", "a"))
    assert first.request_id != again.request_id
    mine = [plain_query_request(b"user_id=9&request_id=r-7", limits) for _ in range(2)]
    assert [r.request_id for r in mine] == ["r-7", "r-7"]
    tighter = load_settings(environ={"RANKLY_LIMITS__N_MAX": "3",
                                     "RANKLY_LIMITS__N_DEFAULT": "3"}).limits
    assert plain_query_request(b"user_id=9&n=4&exclude=b&exclude=a", tighter) is None
