"""Acknowledged events survive restarts: ``rankly serve`` SIGTERM and SIGKILL while a client
streams events (embedded file log, and Redis with ``appendonly yes --appendfsync always``), and
Redis ``kill -9`` with AOF; 3 runs each. After every run the client retries what was not
acknowledged, and every event must be stored exactly once (duplicates removed by event_id)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from procs import Redis, Server, redis_env

pytestmark = [pytest.mark.slow]

RUNS = 3
STREAM_S = 0.8  # the client streams this long before the kill, and keeps posting after it
POSTERS = 4  # concurrent posting loops: several batches are in flight at the kill


class Streamer:
    """Posts batches of 5 uniquely numbered events from ``POSTERS`` loops.

    ``acked``: ids in a batch answered 202 (stored or duplicate: durable either way);
    ``unknown``: batches without an answer (connection cut) or answered 503/429: retried later.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.next = 0
        self.acked: set[str] = set()
        self.unknown: list[list[dict]] = []
        self.statuses: Counter = Counter()
        self.duplicates = 0  # stored before the fault without an answer; dropped on retry

    def batch(self) -> list[dict]:
        out = []
        for _ in range(5):
            self.next += 1
            out.append({"event_id": f"{self.prefix}{self.next}", "type": "purchase",
                        "user_id": str(self.next % 200 + 1), "item_id": str(self.next % 300 + 1)})
        return out

    async def post(self, client: httpx.AsyncClient, body: list[dict]) -> bool:
        try:
            r = await client.post("/events", json=body)
        except httpx.HTTPError:
            self.statuses["cut"] += 1
            self.unknown.append(body)
            return False
        self.statuses[r.status_code] += 1
        if r.status_code == 202:
            self.acked.update(e["event_id"] for e in body)
            self.duplicates += r.json()["duplicates"]
            return True
        # 503: storage down; 429: over the server's event admission. Nothing stored: retry
        assert r.status_code in (429, 503), r.text
        self.unknown.append(body)
        return False

    async def stream(self, url: str, seconds: float, fault: Callable[[], None]) -> None:
        """Post for ``seconds``, call ``fault`` (in a thread) and keep posting ~0.5 s more."""
        stop_at = time.monotonic() + seconds + 0.5

        async def loop() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=3.0) as client:
                while time.monotonic() < stop_at:
                    if not await self.post(client, self.batch()):
                        await asyncio.sleep(0.05)

        posters = [asyncio.create_task(loop()) for _ in range(POSTERS)]
        await asyncio.sleep(seconds)
        await asyncio.to_thread(fault)
        await asyncio.gather(*posters)

    async def retry(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=url, timeout=3.0) as client:
            while self.unknown and time.monotonic() < deadline:
                body = self.unknown.pop(0)
                if not await self.post(client, body):
                    await asyncio.sleep(0.5)
        assert not self.unknown, "events still refused after recovery"

    async def retry_batch(self, url: str) -> None:
        """Post one batch until it is acknowledged (the log accepts events)."""
        self.unknown.append(self.batch())
        await self.retry(url)

    @property
    def sent(self) -> set[str]:
        return {f"{self.prefix}{i}" for i in range(1, self.next + 1)}


def file_log_ids(data_dir: Path) -> Counter:
    counts: Counter = Counter()
    path = data_dir / "events" / "events.jsonl"
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            doc = json.loads(line)
            if not doc.get("nd"):
                counts[doc["id"]] += 1
    return counts


def stream_ids(redis: Redis) -> Counter:
    import redis as redis_py

    from rankly.engine.config import EventSettings
    from rankly.engine.events.log import stream_keys

    client = redis_py.Redis(port=redis.port, socket_timeout=10)
    counts: Counter = Counter()
    try:
        for key in stream_keys("rankly:", EventSettings().partitions):
            start = "-"
            while rows := client.xrange(key, min=start, max="+", count=5000):
                for _, fields in rows:
                    doc = json.loads(fields[b"e"])
                    if not doc.get("nd"):
                        counts[doc["id"]] += 1
                start = "(" + rows[-1][0].decode()
    finally:
        client.close()
    return counts


def check_acked(streamer: Streamer, stored: Counter, label: str) -> int:
    """After the restart, before any retry: every acknowledged event is there."""
    lost = streamer.acked - set(stored)
    assert not lost, f"{label}: {len(lost)} acknowledged events lost"
    return len(streamer.acked)


def check(streamer: Streamer, stored: Counter, label: str, acked: int) -> dict:
    """After the retries: every event sent is stored exactly once."""
    stored = Counter({k: v for k, v in stored.items() if k.startswith(streamer.prefix)})
    doubled = {eid for eid, n in stored.items() if n > 1}
    assert not doubled, f"{label}: {len(doubled)} events stored twice"
    assert set(stored) == streamer.sent, f"{label}: retried events missing"
    return {"sent": len(streamer.sent), "acked_before_fault_recovery": acked,
            "retried_batches": len(streamer.sent) // 5 - acked // 5, "lost": 0, "doubled": 0,
            "deduplicated_on_retry": streamer.duplicates, "statuses": dict(streamer.statuses)}


def restart_chain(server: Server, read: Callable[[], Counter], label: str) -> list[dict]:
    """SIGTERM, SIGKILL, SIGTERM, ... of the server while streaming; restart; check."""
    results = []
    for run in range(2 * RUNS):
        sig = signal.SIGTERM if run % 2 == 0 else signal.SIGKILL
        streamer = Streamer(f"{label}-{run}-")
        asyncio.run(streamer.stream(server.url, STREAM_S,
                                    lambda s=sig: os.kill(server.pid, s)))
        server.stop(sig)  # waits for the exit (SIGKILL after 20 s)
        server.start()  # same data directory and port
        acked = check_acked(streamer, read(), f"{label} run {run}")
        asyncio.run(streamer.retry(server.url))
        results.append({"signal": sig.name, **check(streamer, read(), f"{label} run {run}",
                                                    acked)})
    return results


def report(name: str, results: list[dict]) -> None:
    print(f"\nRELIABILITY {name} {json.dumps(results)}")


def test_file_log_keeps_acknowledged_events_across_server_restarts(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    report("restart_file_log", restart_chain(server, lambda: file_log_ids(data_dir), "file"))


@pytest.mark.redis
def test_redis_log_keeps_acknowledged_events_across_server_restarts(redis_factory,
                                                                     server_factory):
    redis = redis_factory(aof=True)
    server = server_factory(redis_env(redis))
    report("restart_redis_log", restart_chain(server, lambda: stream_ids(redis), "redis"))


@pytest.mark.redis
def test_redis_kill9_with_aof_keeps_acknowledged_events(redis_factory, server_factory):
    redis = redis_factory(aof=True)
    server = server_factory(redis_env(redis))
    results = []
    for run in range(RUNS):
        # the previous run's outage may still hold the event log's breaker open (1 s
        # cooldown): start streaming once events are accepted again
        asyncio.run(Streamer(f"aof-probe-{run}-").retry_batch(server.url))
        streamer = Streamer(f"aof-{run}-")

        def crash() -> None:
            redis.kill9()
            time.sleep(0.3)
            redis.start()  # same port and directory: the AOF is replayed

        asyncio.run(streamer.stream(server.url, STREAM_S, crash))
        acked = check_acked(streamer, stream_ids(redis), f"redis kill -9 run {run}")
        asyncio.run(streamer.retry(server.url))
        results.append(check(streamer, stream_ids(redis), f"redis kill -9 run {run}", acked))
    report("redis_kill9_aof", results)
