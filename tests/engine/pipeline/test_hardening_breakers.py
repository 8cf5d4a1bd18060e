"""Every circuit breaker closes again once its component works: plugin components, the
``pipeline`` breaker, the store's Redis breaker and the event log's, seen through /ready and
``rankly_breaker_open``."""

from __future__ import annotations

import time

import numpy as np
from starlette.testclient import TestClient

from rankly.engine import hookimpl
from rankly.engine.plugins import make_plugin_manager
from rankly.engine.serving.app import create_app

from ..conftest import make_settings
from ..serving.test_multiworker_metrics import sample

COOLDOWN_S = 0.2


class FlakyScorer:
    """A scorer that raises while ``broken`` is set, and scores by popularity otherwise."""

    broken = True

    @hookimpl
    def register_scorers(self, register):
        plugin = self

        class Scorer:
            def score(self, user, items):
                if plugin.broken:
                    raise RuntimeError("flaky scorer is down")
                return -items.astype(np.float32)

        register("flaky", lambda ctx: Scorer())


def gauge(client: TestClient, component: str) -> float | None:
    found = sample(client.get("/metrics").text, "rankly_breaker_open", component=component)
    return found[0][1] if found else None


def test_a_plugin_breaker_opens_then_closes_after_a_successful_probe(artifacts):
    plugin = FlakyScorer()
    settings = make_settings(artifacts, pipeline={"scorers": ["flaky", "popular"]})
    app = create_app(settings, pm=make_plugin_manager(extra=[plugin]))
    with TestClient(app) as client:
        rt = client.app_state["runtime"]
        rt.breakers["flaky"].cooldown = COOLDOWN_S  # the warm-up made it already
        for user in range(1, 7):  # distinct users: no cached answers
            assert client.get("/recommendations", params={"user_id": str(user)}).is_success
        assert client.get("/ready").json()["breakers"]["flaky"] == "open"
        assert gauge(client, "flaky") == 1.0
        plugin.broken = False
        time.sleep(COOLDOWN_S * 1.5)
        assert client.get("/recommendations", params={"user_id": "20"}).is_success  # probe
        assert client.get("/ready").json()["breakers"]["flaky"] == "closed"
        assert gauge(client, "flaky") == 0.0


def test_the_pipeline_breaker_closes_after_a_computed_answer(client):
    rt = client.app_state["runtime"]
    # what pipeline.compute records when a computation times out before any component ran
    for _ in range(5):
        rt.breakers["pipeline"].failure()
    assert client.get("/ready").json()["breakers"]["pipeline"] == "open"
    assert gauge(client, "pipeline") == 1.0
    r = client.get("/recommendations", params={"user_id": "5", "n": 4})
    assert r.json()["cached"] is False and r.json()["fallback"] is None
    assert client.get("/ready").json()["breakers"]["pipeline"] == "closed"
    assert gauge(client, "pipeline") == 0.0


def test_a_cached_answer_does_not_close_the_pipeline_breaker(client):
    rt = client.app_state["runtime"]
    assert client.get("/recommendations", params={"user_id": "6"}).json()["cached"] is False
    for _ in range(5):
        rt.breakers["pipeline"].failure()
    assert client.get("/recommendations", params={"user_id": "6"}).json()["cached"] is True
    assert client.get("/ready").json()["breakers"]["pipeline"] == "open"


def test_the_similar_items_route_closes_the_pipeline_breaker_too(client):
    rt = client.app_state["runtime"]
    for _ in range(5):
        rt.breakers["pipeline"].failure()
    assert client.get("/items/3/similar", params={"n": 3}).status_code == 200
    assert client.get("/ready").json()["breakers"]["pipeline"] == "closed"


def test_store_and_event_log_breakers_close_when_redis_is_back(artifacts, spare_redis,
                                                               redis_namespace):
    spare_redis.start()
    settings = make_settings(artifacts, store_url=spare_redis.url, namespace=redis_namespace)
    with TestClient(create_app(settings)) as client:
        rt = client.app_state["runtime"]
        guards = [rt.store.guard, rt.extras["events"].log.guard]
        for guard in guards:
            guard.breaker.cooldown = COOLDOWN_S
        ready = client.get("/ready").json()
        assert ready["store"]["breaker"] == ready["event_log"]["breaker"] == "closed"
        spare_redis.stop()
        statuses = set()
        for i in range(8):
            client.get("/recommendations", params={"user_id": f"down-{i}"})
            statuses.add(client.post("/events", json={
                "event_id": f"down-{i}", "user_id": "1", "item_id": "2",
                "type": "click"}).status_code)
        assert statuses == {503}
        r = client.get("/ready")
        assert r.status_code == 503
        assert r.json()["store"]["breaker"] != "closed"
        assert r.json()["event_log"]["breaker"] != "closed"
        spare_redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(COOLDOWN_S * 1.5)
            client.get("/recommendations", params={"user_id": "1"})
            client.post("/events", json={"event_id": "back", "user_id": "1", "item_id": "2",
                                         "type": "click"})
            ready = client.get("/ready")
            body = ready.json()
            if (ready.status_code == 200 and body["store"]["breaker"] == "closed"
                    and body["event_log"]["breaker"] == "closed"):
                break
        assert ready.status_code == 200, body
        assert body["store"]["breaker"] == body["event_log"]["breaker"] == "closed", body


class DownCache:
    """A cache tier whose every read raises (a tier whose backend went away)."""

    @hookimpl
    def register_caches(self, register):
        class Cache:
            async def get(self, key, user_id=None):
                raise ConnectionError("cache backend is down")

            async def set(self, key, user_id, value):
                return None

            async def invalidate_user(self, user_id):
                return None

        register("down-cache", lambda ctx: Cache())


def test_a_first_tier_that_fails_every_read_leaves_the_answer_computed(artifacts):
    # the lookup counts the failed read; the request is computed by the pipeline as on a
    # miss, not answered from the internal_error fallback
    settings = make_settings(artifacts, cache={"tiers": ["down-cache", "l1"]})
    app = create_app(settings, pm=make_plugin_manager(extra=[DownCache()]))
    with TestClient(app) as client:
        for user in ("1", "2", "1"):
            r = client.get("/recommendations", params={"user_id": user, "n": 4})
            assert r.status_code == 200 and r.json()["fallback"] is None, r.json()
            assert len(r.json()["items"]) == 4
        errors = sample(client.get("/metrics").text, "rankly_cache_lookups_total",
                        tier="down-cache", result="error")
        assert errors and errors[0][1] >= 3
