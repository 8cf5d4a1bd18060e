"""Experiment counters in Redis expire: a retention after an experiment stops, refreshed on
writes while it runs (``experiment_retention_days``), on a real redis-server and cluster."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import ConfigError, load_settings
from rankly.engine.experiments.tracking import PHASE_PARTS, VARIANT_PARTS
from rankly.engine.serving.app import create_app
from rankly.engine.storage.opening import open_store

pytestmark = pytest.mark.redis

TOKEN = "retention-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAYS = 2.0
TTL = int(DAYS * 86400)
AB = {"status": "running", "primary_metric": "ctr",
      "variants": [{"name": "control", "weight": 1}, {"name": "b", "weight": 1}]}


def settings(artifacts, tmp_path, redis_url, namespace, **extra):
    return load_settings(environ={}, artifacts=artifacts, data_dir=tmp_path,
                         store_url=redis_url, namespace=namespace, admin_token=TOKEN,
                         deadlines={"store_ms": 1000.0, "request_ms": 5000.0}, **extra)


def ttls(s, key: str, phase: int, variants=("control", "b")) -> dict[str, int]:
    """TTL of every key of the experiment's phase that exists (-1: none)."""
    store = open_store(s)
    names = [store.keys.experiment(key, phase, part) for part in PHASE_PARTS]
    names += [store.keys.experiment(key, phase, part, v) for v in variants
              for part in VARIANT_PARTS]

    async def read() -> list[int]:
        try:
            return await store.guard.run(lambda r: _ttls(r, names))
        finally:
            await store.close()

    return {n: t for n, t in zip(names, asyncio.run(read()), strict=True) if t != -2}


async def _ttls(r, names):
    pipe = r.pipeline(transaction=False)
    for n in names:
        pipe.ttl(n)
    return await pipe.execute()


def expire(s, key: str, seconds: int) -> None:
    store = open_store(s)

    async def run() -> None:
        try:
            await store.guard.run(lambda r: r.expire(key, seconds))
        finally:
            await store.close()

    asyncio.run(run())


def serve(client, users: range) -> list[dict]:
    """Serve each user once (an exposure and its impressions)."""
    bodies = [client.get("/recommendations", params={"user_id": str(u), "n": 3}).json()
              for u in users]
    assert all(b["experiment"] == "ret" for b in bodies)
    return bodies


def outcomes(client, bodies: list[dict], kind: str = "click") -> None:
    """Each served user clicks (or buys) the first item of their slate, with its request id;
    then the results route (which writes the noted impressions first)."""
    events = [{"event_id": f"e-{b['user_id']}-{kind}", "user_id": b["user_id"],
               "item_id": b["items"][0]["item_id"], "type": kind,
               "request_id": b["request_id"]} for b in bodies]
    assert client.post("/events", json=events).status_code == 202
    assert client.get("/experiments/ret/results", headers=AUTH).status_code == 200


def traffic(client, users: range) -> list[dict]:
    bodies = serve(client, users)
    outcomes(client, bodies)
    return bodies


def test_a_running_experiments_keys_expire_after_the_retention_and_stop_restarts_it(
        redis_artifacts, tmp_path, redis_url, redis_namespace):
    s = settings(redis_artifacts, tmp_path, redis_url, redis_namespace,
                 experiment_retention_days=DAYS)
    with TestClient(create_app(s)) as client:
        assert client.put("/experiments/ret", json=AB, headers=AUTH).status_code == 201
        bodies = traffic(client, range(1, 21))
        running = ttls(s, "ret", 0)
        # the writes gave every key they made a TTL of the retention
        assert len(running) >= 9 and all(0 < t <= TTL for t in running.values()), running
        some = next(iter(running))
        expire(s, some, 100)  # as if its last refresh were long ago
        assert client.post("/experiments/ret/stop", headers=AUTH).status_code == 200
        stopped = ttls(s, "ret", 0)
        assert set(stopped) == set(running)
        assert all(TTL - 60 < t <= TTL for t in stopped.values()), stopped
        # late outcomes of a stopped experiment: keys they create get the retention, and
        # they do not restart the countdown of the others
        expire(s, some, 100)
        outcomes(client, bodies, "purchase")
        late = ttls(s, "ret", 0)
        assert 0 < late[some] <= 100
        assert set(late) > set(stopped) and all(t > 0 for t in late.values()), late


def test_a_new_phase_starts_the_retention_of_the_old_one(redis_artifacts, tmp_path, redis_url,
                                                         redis_namespace):
    s = settings(redis_artifacts, tmp_path, redis_url, redis_namespace,
                 experiment_retention_days=DAYS)
    with TestClient(create_app(s)) as client:
        assert client.put("/experiments/ret", json=AB, headers=AUTH).status_code == 201
        traffic(client, range(1, 11))
        old = ttls(s, "ret", 0)
        for name in old:
            expire(s, name, 100)
        other = {**AB, "variants": [{"name": "control", "weight": 1},
                                    {"name": "c", "weight": 1}]}
        r = client.put("/experiments/ret", json=other, headers=AUTH)
        assert r.status_code == 200 and r.json()["phase"] == 1
    assert all(TTL - 60 < t <= TTL for t in ttls(s, "ret", 0).values())


def test_a_running_experiment_refreshes_each_key_once_per_interval(
        redis_artifacts, tmp_path, redis_deployment, redis_namespace):
    s = settings(redis_artifacts, tmp_path, redis_deployment.url, redis_namespace,
                 experiment_retention_days=DAYS)
    everyone_in_control = {**AB, "variants": [{"name": "control", "weight": 1},
                                              {"name": "b", "weight": 0}]}
    with TestClient(create_app(s)) as client:
        assert client.put("/experiments/ret", json=everyone_in_control,
                          headers=AUTH).status_code == 201
        client.get("/recommendations", params={"user_id": "1", "n": 3})
        redis_deployment.reset_stats()
        for u in range(2, 12):
            client.get("/recommendations", params={"user_id": str(u), "n": 3})
        client.get("/experiments/ret/results", headers=AUTH)
    # ten exposures and their impressions: the assign, exposed and impression keys were
    # refreshed by the first user's writes already; the per-impression ones at most once
    assert redis_deployment.command_calls("expire") <= 3
    assert all(0 < t <= TTL for t in ttls(s, "ret", 0).values())


def test_without_retention_keys_are_kept_forever(redis_artifacts, tmp_path, redis_server,
                                                 redis_namespace):
    s = settings(redis_artifacts, tmp_path, redis_server.url, redis_namespace,
                 experiment_retention_days=0)
    with TestClient(create_app(s)) as client:
        assert client.put("/experiments/ret", json=AB, headers=AUTH).status_code == 201
        traffic(client, range(1, 6))
        assert client.post("/experiments/ret/stop", headers=AUTH).status_code == 200
    kept = ttls(s, "ret", 0)
    assert kept and set(kept.values()) == {-1}


def test_an_experiment_configured_as_stopped_gets_the_retention_at_start(
        redis_artifacts, tmp_path, redis_server, redis_namespace):
    running = settings(redis_artifacts, tmp_path / "a", redis_server.url, redis_namespace,
                       experiment_retention_days=0,
                       experiments=({**AB, "key": "ret"},))
    with TestClient(create_app(running)) as client:
        traffic(client, range(1, 6))
    assert set(ttls(running, "ret", 0).values()) == {-1}
    stopped = settings(redis_artifacts, tmp_path / "b", redis_server.url, redis_namespace,
                       experiment_retention_days=DAYS,
                       experiments=({**AB, "key": "ret", "status": "stopped"},))
    with TestClient(create_app(stopped)):
        pass
    assert all(TTL - 60 < t <= TTL for t in ttls(stopped, "ret", 0).values())


def test_retention_must_not_be_negative():
    with pytest.raises(ConfigError, match="experiment_retention_days"):
        load_settings(environ={"RANKLY_EXPERIMENT_RETENTION_DAYS": "-1"})
