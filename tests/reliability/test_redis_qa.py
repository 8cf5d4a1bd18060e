"""Redis misbehaving under the in-process app, against a real redis-server: refusing calls
(out of memory, no permission), killed and restarted. Recommendations degrade to a fallback,
events get 503 + Retry-After, never a 500; /ready and /metrics say what the breakers do."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import load_settings
from rankly.engine.serving.app import create_app

pytestmark = [pytest.mark.redis]


def app_on(redis, artifacts: Path, **overrides):
    settings = load_settings(environ={}, artifacts=artifacts, store_url=redis.url,
                             data_dir=tempfile.mkdtemp(prefix="rankly-qa-"),
                             cache={"tiers": ["l1", "l2"]}, **overrides)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def purchase(client: TestClient, event_id: str, user: str = "3"):
    return client.post("/events", json={"event_id": event_id, "user_id": user,
                                        "item_id": "4", "type": "purchase"})


def used_memory(redis) -> int:
    for line in redis.cli("INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise AssertionError("no used_memory in INFO")


def test_an_out_of_memory_redis_answers_events_503_and_recommendations_200(
        redis_factory, artifacts):
    redis = redis_factory()
    with app_on(redis, artifacts) as client:
        assert purchase(client, "before").status_code == 202
        assert "last_unavailable" not in client.get("/ready").json()["event_log"]
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        # a limit far below what Redis uses already: every write is refused with OOM
        redis.cli("CONFIG", "SET", "maxmemory", str(used_memory(redis) // 2))
        for i in range(3):
            r = purchase(client, f"oom-{i}")
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
        # still ready (recommendations work), and it says why events are refused
        ready = client.get("/ready")
        assert ready.status_code == 200
        last = ready.json()["event_log"]["last_unavailable"]
        assert "OutOfMemory" in last["reason"] and 0 <= last["seconds_ago"] <= 60, last
        for user in range(1, 8):  # distinct users: each misses and writes to the L2
            r = client.get("/recommendations", params={"user_id": str(user)})
            assert r.status_code == 200
            assert r.json()["fallback"] in (None, "store_down"), r.json()
        redis.cli("CONFIG", "SET", "maxmemory", "0")
        r = purchase(client, "oom-0")
        assert r.status_code == 202 and r.json()["accepted"] == 1


def test_a_redis_user_without_key_permissions_degrades_to_store_down(redis_factory,
                                                                      artifacts):
    redis = redis_factory()
    with app_on(redis, artifacts) as client:
        assert purchase(client, "before").status_code == 202  # user 3 has online state
        redis.cli("ACL", "SETUSER", "default", "resetkeys")  # NOPERM on every key
        try:
            r = client.get("/recommendations", params={"user_id": "3", "n": 7})
            assert r.status_code == 200
            assert r.json()["fallback"] == "store_down", r.json()
            r = purchase(client, "noperm")
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        finally:
            redis.cli("ACL", "SETUSER", "default", "~*")
        assert purchase(client, "noperm").status_code == 202


def breaker_gauge(client: TestClient, component: str) -> float | None:
    text = client.get("/metrics").text
    m = re.search(rf'^rankly_breaker_open{{component="{component}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_the_store_breaker_shows_in_metrics_while_open_and_closes(redis_factory, artifacts):
    redis = redis_factory()
    with app_on(redis, artifacts) as client:
        guard = client.app_state["runtime"].store.guard
        guard.breaker.cooldown = 0.2
        assert client.get("/ready").json()["store"]["breaker"] == "closed"
        redis.stop()
        for i in range(8):  # unknown users: every request reads the store
            r = client.get("/recommendations", params={"user_id": f"gone-{i}"})
            assert r.status_code == 200
        assert client.get("/ready").json()["store"]["breaker"] != "closed"
        assert breaker_gauge(client, "store") == 1.0
        redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and guard.breaker.state != "closed":
            time.sleep(0.3)
            client.get("/ready")
        assert client.get("/ready").json()["store"]["breaker"] == "closed"
        assert breaker_gauge(client, "store") == 0.0


def test_a_redis_refusing_writes_costs_one_warning_not_a_traceback_per_miss(
        redis_factory, artifacts, caplog):
    redis = redis_factory()
    with app_on(redis, artifacts) as client:
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", str(used_memory(redis) // 2))
        caplog.clear()
        with caplog.at_level("WARNING"):
            for user in range(1, 11):  # distinct users: each misses and writes to the L2
                r = client.get("/recommendations", params={"user_id": str(user)})
                assert r.status_code == 200 and r.json()["fallback"] is None
        redis.cli("CONFIG", "SET", "maxmemory", "0")
    about_l2 = [rec for rec in caplog.records if "l2" in rec.getMessage().lower()]
    assert len(about_l2) <= 1, [rec.getMessage() for rec in about_l2]
    assert all(rec.exc_info is None for rec in about_l2)


def test_the_event_log_breaker_shows_in_metrics_while_open(redis_factory, artifacts):
    redis = redis_factory()
    with app_on(redis, artifacts) as client:
        assert purchase(client, "first").status_code == 202
        redis.stop()
        try:
            for i in range(8):
                assert purchase(client, f"down-{i}").status_code == 503
            assert breaker_gauge(client, "event_log") == 1.0
        finally:
            redis.start()
        # the same series closes with this breaker (the registry is the process's: another
        # test's app may have left its own value there before)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and purchase(client, "back").status_code != 202:
            time.sleep(0.3)
        assert purchase(client, "back").status_code == 202
        assert breaker_gauge(client, "event_log") == 0.0
