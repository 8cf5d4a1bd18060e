"""The HTTP API through Starlette's TestClient (lifespan included)."""

from __future__ import annotations

import json

import pytest


def test_get_recommendations_returns_the_documented_shape(client):
    r = client.get("/recommendations", params={"user_id": "1", "n": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"user_id", "items", "variant", "model_version", "cached", "fallback",
                         "request_id"}
    assert body["user_id"] == "1" and len(body["items"]) == 5
    assert all(set(it) == {"item_id", "score", "reasons"} and it["reasons"]
               for it in body["items"])


def test_post_recommendations_with_filters(client):
    first = client.post("/recommendations", json={"user_id": "2", "n": 5}).json()
    excl = [it["item_id"] for it in first["items"][:2]]
    r = client.post("/recommendations", json={"user_id": "2", "n": 5, "exclude": excl,
                                               "context": {"page": "home"}})
    assert r.status_code == 200
    assert not set(excl) & {it["item_id"] for it in r.json()["items"]}


def test_post_session_items_without_user(client):
    r = client.post("/recommendations", json={"session_items": ["3", "4"], "n": 4})
    assert r.status_code == 200
    assert len(r.json()["items"]) == 4


def test_unknown_user_gets_popular_not_an_error(client):
    r = client.get("/recommendations", params={"user_id": "ghost-user", "n": 3})
    assert r.status_code == 200
    assert r.json()["fallback"] == "cold_start"
    assert all(it["reasons"] == ["Popular"] for it in r.json()["items"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": "5"}, "user_id"),
        ({"user_id": "1", "n": "0"}, "n"),
        ({"user_id": "1", "n": "101"}, "n"),
        ({"user_id": "1", "n": "-3"}, "n"),
        ({"user_id": "1", "n": "ten"}, "n"),
        ({"user_id": "1", "n": "1e3"}, "n"),
        ({"user_id": "x" * 257}, "user_id"),
        ({"user_id": "a\x00b"}, "user_id"),
        ({"user_id": "1", "colour": "red"}, "colour"),
    ],
)
def test_bad_query_gets_422_naming_the_field(client, params, field):
    r = client.get("/recommendations", params=params)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (json.dumps({"n": 3}).encode(), 422, "user_id"),
        (json.dumps({"user_id": 5.5}).encode(), 422, "user_id"),
        (json.dumps({"user_id": "1", "n": True}).encode(), 422, "n"),
        (json.dumps({"user_id": "1", "n": 2.5}).encode(), 422, "n"),
        (json.dumps({"user_id": "1", "exclude": "abc"}).encode(), 422, "exclude"),
        (json.dumps({"user_id": "1", "exclude": ["a", 3.2]}).encode(), 422, "exclude[1]"),
        (json.dumps({"user_id": "1", "exclude": ["x"] * 1001}).encode(), 422, "exclude"),
        (json.dumps({"user_id": "1", "context": []}).encode(), 422, "context"),
        (json.dumps({"user_id": "1", "surprise": 1}).encode(), 422, "surprise"),
    ],
)
def test_bad_body_gets_4xx_naming_the_field(client, body, status, field):
    r = client.post("/recommendations", content=body,
                    headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["field"] == field


def test_oversized_body_gets_413_without_being_read(client):
    r = client.post("/recommendations", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["field"] == "body"


def test_head_recommendations_answers_as_get_without_a_body(client):
    # Starlette routes HEAD to the GET route; it was read as a POST, and refused with 415
    r = client.head("/recommendations?user_id=1&n=3")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == b""
    assert client.head("/recommendations?user_id=1&n=0").status_code == 422


def test_similar_items(client):
    r = client.get("/items/1/similar", params={"n": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["item_id"] == "1" and len(body["items"]) == 5
    assert "1" not in {it["item_id"] for it in body["items"]}
    assert all(it["reasons"][0].startswith(("Similar to", "Popular")) for it in body["items"])


def test_similar_items_of_unknown_item_is_404(client):
    r = client.get("/items/does-not-exist/similar")
    assert r.status_code == 404
    assert r.json()["error"]["field"] == "item_id"


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["kernels"] in {"compiled", "reference"}
    assert ready["model_version"]


def test_unknown_route_and_method_are_json_errors(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["field"] == "path"
    r = client.delete("/recommendations")
    assert r.status_code == 405 and r.json()["error"]["field"] == "method"


def test_openapi_describes_every_route(client):
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    routes = {r.path.replace(":path", "") for r in client.app.routes}
    assert routes <= set(spec["paths"])


def test_metrics_use_route_templates_not_ids(client):
    for i in range(5):
        client.get(f"/items/{i + 1}/similar")
    text = client.get("/metrics").text
    assert 'route="/items/{item_id:path}/similar"' in text
    assert 'route="/items/1/similar"' not in text
    assert "rankly_stage_duration_seconds_bucket" in text


def test_a_pipeline_bug_is_answered_with_the_safe_fallback_not_a_500(client, monkeypatch):
    from rankly.engine.pipeline import request

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug in the pipeline")

    seen = client.get("/recommendations", params={"user_id": "1", "n": 50}).json()
    monkeypatch.setattr(request, "_rank", broken)
    r = client.get("/recommendations", params={"user_id": "1", "n": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] == "internal_error" and len(body["items"]) == 5
    assert all(it["reasons"] == ["Popular"] for it in body["items"])
    assert seen["fallback"] is None


def test_past_the_request_deadline_http_answers_the_safe_fallback(artifacts, settings_for):
    from starlette.testclient import TestClient

    from rankly.engine.serving.app import create_app

    # a deadline no computation can meet: every answer is the I/O-free fallback, on time
    settings = settings_for(artifacts, deadlines={"request_ms": 0.01})
    with TestClient(create_app(settings)) as c:
        for user in ("1", "2"):
            r = c.get("/recommendations", params={"user_id": user, "n": 4})
            assert r.status_code == 200
            body = r.json()
            assert body["fallback"] == "deadline" and body["cached"] is False
            assert len(body["items"]) == 4
            assert all(it["reasons"] == ["Popular"] for it in body["items"])
        similar = c.get("/items/3/similar", params={"n": 3}).json()
        assert similar["fallback"] == "deadline" and len(similar["items"]) == 3
        metrics = c.get("/metrics").text
        assert 'rankly_fallbacks_total{reason="deadline"}' in metrics
