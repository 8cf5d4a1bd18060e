"""With ``REDIS_URL`` set, separate server processes share cached recommendations (L2) and
invalidations (issue 4): a slate computed by one server is served cached by the other, and a
purchase posted to one server removes the item from both servers' answers within a second. The
same holds for the workers of one ``rankly serve --workers 2`` behind one port."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from procs import Redis, Server

pytestmark = [pytest.mark.redis, pytest.mark.slow]

USER = "7"  # known to the model: a personalized slate
INVALIDATION_S = 1.0


def shared_env(redis: Redis, **extra: str) -> dict[str, str]:
    """Two tiers on one Redis given as ``REDIS_URL``; store deadline generous for a loaded box."""
    return {"REDIS_URL": redis.url, "RANKLY_CACHE__TIERS": "l1,l2",
            "RANKLY_DEADLINES__STORE_MS": "1000", "RANKLY_DEADLINES__REQUEST_MS": "5000",
            **extra}


def recommend(client: httpx.Client, url: str, user: str = USER) -> dict:
    r = client.get(url + "/recommendations", params={"user_id": user, "n": 5})
    assert r.status_code == 200, r.text
    return r.json()


def item_ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def purchase(client: httpx.Client, url: str, user: str, item: str) -> None:
    r = client.post(url + "/events", json={"event_id": f"two-{uuid.uuid4().hex}",
                                           "user_id": user, "item_id": item, "type": "purchase"})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1


def seconds_until_excluded(client: httpx.Client, url: str, item: str, since: float) -> float:
    """Poll ``url`` until ``item`` leaves the user's slate; seconds since ``since`` (or inf)."""
    while True:
        body = recommend(client, url)
        now = time.monotonic()
        if item not in item_ids(body):
            return now - since
        if now - since > INVALIDATION_S:
            return float("inf")
        time.sleep(0.02)


def check_shared_cache_and_invalidation(client: httpx.Client, url_a: str, url_b: str) -> None:
    first = recommend(client, url_a)
    assert first["cached"] is False
    assert first["fallback"] is None
    second = recommend(client, url_b)
    assert second["cached"] is True  # computed by A, served from the shared L2
    assert item_ids(second) == item_ids(first)
    bought = item_ids(second)[0]
    start = time.monotonic()
    purchase(client, url_a, USER, bought)
    on_b = seconds_until_excluded(client, url_b, bought, start)
    on_a = seconds_until_excluded(client, url_a, bought, start)
    assert on_b <= INVALIDATION_S, f"{bought} still recommended on B after {INVALIDATION_S}s"
    assert on_a <= INVALIDATION_S, f"{bought} still recommended on A after {INVALIDATION_S}s"


def test_two_server_processes_share_cache_and_invalidations(redis_factory, server_factory):
    redis = redis_factory()
    a: Server = server_factory(shared_env(redis), start=False)
    b: Server = server_factory(shared_env(redis), start=False)
    try:
        a.wait_health()
        b.wait_health()
        assert a.pid != b.pid
        with httpx.Client(timeout=10.0) as client:
            check_shared_cache_and_invalidation(client, a.url, b.url)
    finally:
        b.stop()
        a.stop()


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" once it has exited)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def worker_pids(supervisor: int) -> list[int]:
    """The PIDs of uvicorn's worker processes under ``supervisor`` (spawned by multiprocessing;
    its resource tracker, also a child, is left out)."""
    pids = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in pids if "spawn_main" in cmdline(p)]


def l2_hits(client: httpx.Client, url: str) -> float:
    """``rankly_cache_lookups_total{tier="l2",result="hit"}`` summed over the workers."""
    text = client.get(url + "/metrics").text
    total = 0.0
    for labels, value in re.findall(r"^rankly_cache_lookups_total\{(.*?)\} (\S+)$", text, re.M):
        if 'tier="l2"' in labels and 'result="hit"' in labels:
            total += float(value)
    return total


def test_workers_of_one_server_share_cache_and_invalidations(redis_factory, server_factory,
                                                            tmp_path):
    redis = redis_factory()
    server: Server = server_factory(shared_env(redis, RANKLY_WORKERS="2",
                                               TMPDIR=str(tmp_path)), start=False)
    workers: list[int] = []
    try:
        server.wait_health()
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = worker_pids(server.pid)
            time.sleep(0.1)
        assert len(workers) == 2, f"expected 2 workers under PID {server.pid}: {workers}"
        # a new connection per request (connection: close), so the kernel hands requests to
        # either worker; an L2 hit means a worker found a slate the other one computed (a
        # worker that computed a slate answers it again from its own L1)
        fresh = httpx.Client(timeout=10.0, headers={"connection": "close"})
        with fresh, httpx.Client(timeout=10.0) as client:
            for user in range(20, 200):
                first = recommend(fresh, server.url, str(user))
                assert first["cached"] is False
                again = recommend(fresh, server.url, str(user))
                assert again["cached"] is True and item_ids(again) == item_ids(first)
                if user % 10 == 9 and l2_hits(client, server.url) > 0:
                    break
            assert l2_hits(client, server.url) > 0, "no slate was served by the other worker"
            slates = [item_ids(recommend(fresh, server.url)) for _ in range(6)]
            assert all(s == slates[0] for s in slates)  # most likely in both workers' L1 now
            bought = slates[0][0]
            start = time.monotonic()
            purchase(fresh, server.url, USER, bought)
            assert seconds_until_excluded(fresh, server.url, bought, start) <= INVALIDATION_S
            for _ in range(8):  # and stays excluded whichever worker answers
                assert bought not in item_ids(recommend(fresh, server.url))
    finally:
        server.stop(signal.SIGINT)  # uvicorn's supervisor stops its workers
        for pid in workers:  # only a worker that outlived its supervisor (checked by cmdline,
            # so a reused PID is left alone)
            if "spawn_main" in cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
