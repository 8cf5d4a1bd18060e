"""The partitioned Redis event log: users spread over partition streams, one user's order
kept, exactly-once storage through a master failover, the pre-partition stream read alongside."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rankly.engine.config import ConfigError, load_settings
from rankly.engine.events.log import (
    RedisStreamLog,
    legacy_stream_key,
    partition_of,
    partition_tags,
    stream_keys,
)
from rankly.engine.events.values import Event
from rankly.engine.storage.store import StoreUnavailable

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def run(coro):
    return asyncio.run(coro)


def make_log(url: str, namespace: str, **events_options) -> tuple[object, RedisStreamLog]:
    from rankly.engine.storage.redis_store import RedisStore

    partitions = events_options.pop("partitions", 16)
    settings = load_settings(environ={}, store_url=url, namespace=namespace,
                             events={"partitions": partitions},
                             plugins={"events": events_options})
    store = RedisStore(url, settings)
    return store, RedisStreamLog(store, settings)


def ev(user: str, seq: int, kind: str = "view") -> Event:
    return Event(f"{user}-{seq}", user, f"i{seq % 11}", kind, 1_700_000_000.0 + seq)


async def collect(log) -> list[Event]:
    return [e async for e in log.replay()]


# --- partitioning ------------------------------------------------------------------------------


def test_a_users_partition_is_a_stable_hash_of_its_id():
    assert partition_of("42", 16) == zlib.crc32(b"42") % 16 == 8
    assert partition_of("user-\u00e9", 7) == zlib.crc32("user-\u00e9".encode()) % 7
    assert {partition_of(f"u{i}", 16) for i in range(1000)} == set(range(16))


def test_partition_tags_spread_over_every_even_slot_split():
    from redis.crc import key_slot

    for partitions in (1, 3, 16, 64):
        slots = [key_slot(k.encode()) for k in stream_keys("ns:", partitions)]
        for p, slot in enumerate(slots):
            assert p * 16384 // partitions <= slot < (p + 1) * 16384 // partitions
    thirds = Counter(key_slot(k.encode()) * 3 // 16384 for k in stream_keys("ns:", 16))
    assert sorted(thirds.values()) == [5, 5, 6]
    assert partition_tags(1) == ("ev:0",)  # a tag already in its range is kept plain
    assert all(tag.startswith(f"ev:{p}") for p, tag in enumerate(partition_tags(16)))


def test_partitions_is_a_validated_setting():
    assert load_settings(environ={}).events.partitions == 16
    assert load_settings(environ={"RANKLY_EVENTS__PARTITIONS": "4"}).events.partitions == 4
    with pytest.raises(ConfigError, match="events.partitions"):
        load_settings(environ={"RANKLY_EVENTS__PARTITIONS": "0"})


def test_events_go_to_their_users_partition_and_replay_in_user_order(redis_url,
                                                                   redis_namespace):
    users = [f"u{i}" for i in range(40)]

    async def go():
        store, log = make_log(redis_url, redis_namespace)
        try:
            await log.open()
            first = await log.append([ev(u, s) for s in range(3) for u in users])
            again = await log.append([ev(u, s) for s in range(2, 5) for u in users])
            imps = await log.append([ev(u, 99, "impression") for u in users[:5]],
                                    idempotent=False)
            lengths = [await log.guard.run(lambda r, k=k: r.xlen(k)) for k in log.stream_keys]
            return first, again, imps, lengths, await collect(log)
        finally:
            await store.close()

    first, again, imps, lengths, events = run(go())
    assert (first.accepted, first.duplicates) == (120, 0)
    assert (again.accepted, again.duplicates) == (80, 40)
    assert [e.event_id for e in again.new] == [f"{u}-{s}" for s in (3, 4) for u in users]
    assert imps.accepted == 5
    assert sum(lengths) == 205 and sum(1 for n in lengths if n) > 8
    expected = Counter(partition_of(u, 16) for u in users)
    assert all(lengths[p] == 5 * n + sum(partition_of(u, 16) == p for u in users[:5])
               for p, n in expected.items())
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e.event_id)
    assert all(by_user[u][:5] == [f"{u}-{s}" for s in range(5)] for u in users)
    assert Counter(e.event_id for e in events).most_common(1)[0][1] == 1


def test_followers_see_every_partition(redis_url, redis_namespace):
    users = [f"f{i}" for i in range(30)]

    async def go():
        store, log = make_log(redis_url, redis_namespace)
        stop = asyncio.Event()
        seen: list[Event] = []

        async def follow():
            async for batch in log.tail(stop=stop, block_ms=100):
                seen.extend(batch)

        try:
            task = asyncio.create_task(follow())
            await asyncio.sleep(0.2)
            await log.append([ev(u, s) for s in range(2) for u in users])
            for _ in range(100):
                if len(seen) >= 60:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 5)
            return seen
        finally:
            await store.close()

    seen = run(go())
    assert sorted(e.event_id for e in seen) == sorted(f"{u}-{s}" for s in range(2) for u in users)
    for u in users:
        assert [e.event_id for e in seen if e.user_id == u] == [f"{u}-0", f"{u}-1"]


def test_the_unpartitioned_stream_is_read_alongside(redis_url, redis_namespace):
    """A log written before partitions: its events replay first (older), its idempotency keys
    still make a retried event a duplicate, and new events go to the partitions."""
    from rankly.engine.events.log import _encode

    async def go():
        store, log = make_log(redis_url, redis_namespace)
        try:
            legacy = legacy_stream_key(f"{redis_namespace}:")
            old = [ev("a", 0), ev("b", 0), ev("a", 1)]
            for e in old:  # what the single-stream log stored: entry + idempotency key
                await log.guard.run(lambda r, e=e: r.xadd(legacy, {"e": _encode(e, 1.0, True)}))
                await log.guard.run(lambda r, e=e: r.set(
                    f"{redis_namespace}:{{ev}}:evt:{e.event_id}", "t", px=60_000))
            await log.open()
            retried = await log.append([ev("a", 1), ev("a", 2), ev("c", 0)])
            return retried, await collect(log)
        finally:
            await store.close()

    retried, events = run(go())
    assert (retried.accepted, retried.duplicates) == (2, 1)
    assert [e.event_id for e in events][:3] == ["a-0", "b-0", "a-1"]
    assert sorted(e.event_id for e in events) == ["a-0", "a-1", "a-2", "b-0", "c-0"]


def test_appends_stop_reading_the_unpartitioned_stream_once_it_is_deleted(
        redis_url, redis_namespace, monkeypatch):
    """The upgrade's last step deletes the old stream: within a recheck, appends no longer
    read the old idempotency keys (one slot every append of every worker would hit)."""
    from rankly.engine.events import log as log_module

    clock = [1000.0]
    monkeypatch.setattr(log_module.time, "monotonic", lambda: clock[0])

    async def go():
        store, log = make_log(redis_url, redis_namespace)
        reads = []
        real = log._in_legacy

        async def in_legacy(events):
            reads.append(len(events))
            return await real(events)

        log._in_legacy = in_legacy
        try:
            legacy = legacy_stream_key(f"{redis_namespace}:")
            await log.guard.run(lambda r: r.xadd(legacy, {"e": b"{}"}))
            await log.append([ev("a", 0)])
            await log.guard.run(lambda r: r.unlink(legacy))
            clock[0] += log_module.LEGACY_RECHECK_S + 1
            await log.append([ev("a", 1)])
            return reads, await collect(log)
        finally:
            await store.close()

    reads, events = run(go())
    assert reads == [1]
    assert [e.event_id for e in events] == ["a-0", "a-1"]


def test_an_append_no_replica_confirms_is_not_acknowledged(redis_server, redis_namespace):
    """``wait_replicas = 1`` on a master without replicas: the event is written but never
    acknowledged (503 for the client); the retry finds it stored and still waits."""

    async def go():
        store, log = make_log(redis_server.url, redis_namespace, wait_replicas=1,
                              wait_timeout_ms=50)
        try:
            outcomes = []
            for _ in range(2):
                try:
                    outcomes.append(await log.append([ev("w", 0)]))
                except StoreUnavailable as exc:
                    outcomes.append(exc)
                await asyncio.sleep(1.1)  # past the breaker's cooldown
            return outcomes, await collect(log)
        finally:
            await log.close()
            await store.close()

    outcomes, events = run(go())
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert "replicas acknowledged" in str(outcomes[0])
    assert [e.event_id for e in events] == ["w-0"]


def test_event_keys_spread_over_every_master(redis_cluster, redis_namespace):
    users = [f"spread-{i}" for i in range(300)]

    async def go():
        store, log = make_log(redis_cluster.url, redis_namespace)
        try:
            await log.append([ev(u, s) for s in range(3) for u in users])
        finally:
            await store.close()

    run(go())
    keys_per_master, entries_per_master = [], []
    for server in redis_cluster.servers:
        client = redis.Redis(port=server.port, socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=f"{redis_namespace}:*", count=1000))
            keys_per_master.append(len(keys))
            entries_per_master.append(sum(client.xlen(k) for k in keys
                                          if k.endswith(b":stream")))
        finally:
            client.close()
    total = sum(keys_per_master)
    assert total == 900 + 16 and sum(entries_per_master) == 900
    assert all(0 < n <= total / 2 for n in keys_per_master), keys_per_master
    assert all(0 < n <= 450 for n in entries_per_master), entries_per_master


# --- a master failover under load -------------------------------------------------------------


def _free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    while True:
        with socket.socket() as s, socket.socket() as bus:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port > 55535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


def _cli(port: int, *args: str) -> str:
    return subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True,
                          timeout=10).stdout


class Node:
    """One cluster-mode redis-server; restartable with its identity (nodes.conf)."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1500",
             "--repl-diskless-sync-delay", "0", "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while _cli(self.port, "PING").strip() != "PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def role(self) -> str:
        for line in _cli(self.port, "INFO", "replication").splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return "down"


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory) -> Iterator[list[Node]]:
    """3 masters with one replica each on loopback (``--cluster-replicas 1``)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (Debian: apt-get install redis-server)")
    root = tmp_path_factory.mktemp("replicated-cluster")
    nodes = [Node(root / str(n)) for n in range(6)]
    try:
        for node in nodes:
            node.start()
        subprocess.run([REDIS_CLI, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        _wait(lambda: all("cluster_state:ok" in _cli(n.port, "CLUSTER", "INFO")
                          for n in nodes)
              and sum(n.role() == "master" for n in nodes) == 3
              and all("master_link_status:up" in _cli(n.port, "INFO", "replication")
                      for n in nodes if n.role() == "slave"), 30, "a synced cluster")
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.mark.slow
def test_no_acknowledged_event_is_lost_or_stored_twice_through_a_failover(
        replicated_cluster, redis_namespace):
    """Writers retry every batch until it is acknowledged (as a client honouring 503 does);
    a master is SIGKILLed mid-load, its replica promoted, the old master restarted as a
    replica. Every event ends up stored exactly once, each user's in order."""
    nodes = replicated_cluster
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    users = [f"fo-{i}" for i in range(48)]
    rng = random.Random(5)
    stats = Counter()
    phase = {"killed": None}

    async def writer(store_log, mine: list[str]) -> None:
        _, log = store_log
        seq = dict.fromkeys(mine, 0)
        deadline = time.monotonic() + 60
        while (phase["killed"] is None or phase.get("recovered_at") is None
               or time.monotonic() < phase["recovered_at"] + 1.5):
            assert time.monotonic() < deadline, "the load did not finish"
            batch = [ev(u, seq[u]) for u in rng.sample(mine, 4)]
            while True:  # the client retries the same batch until it is acknowledged
                try:
                    result = await log.append(batch)
                    break
                except StoreUnavailable:
                    stats["unavailable"] += 1
                    await asyncio.sleep(0.05)
            stats["acked"] += len(batch)
            stats["duplicates"] += result.duplicates
            for e in batch:
                seq[e.user_id] += 1
            await asyncio.sleep(0.01)  # a bounded load: ~4 batches/s... per writer x 4

    async def chaos() -> None:
        await asyncio.sleep(1.0)
        master = max((n for n in nodes if n.role() == "master"),
                     key=lambda n: n.port)  # any master
        phase["killed"] = master
        master.kill()
        await asyncio.to_thread(_wait, lambda: sum(n.role() == "master" for n in nodes
                                                   if n.proc is not None) == 3
                                and all("cluster_state:ok" in _cli(n.port, "CLUSTER", "INFO")
                                        for n in nodes if n.proc is not None),
                                30, "the replica's promotion")
        await asyncio.to_thread(master.start)  # rejoins as the new master's replica
        await asyncio.to_thread(_wait, lambda: master.role() == "slave"
                                and "master_link_status:up" in _cli(master.port, "INFO",
                                                                    "replication"),
                                30, "the old master back as a replica")
        phase["recovered_at"] = time.monotonic()

    async def go():
        store_log = make_log(url, redis_namespace, wait_replicas=1, wait_timeout_ms=500)
        stop = asyncio.Event()
        followed: set[str] = set()

        async def follow() -> None:  # what every serving worker's counters do
            async for batch in store_log[1].tail(stop=stop, block_ms=200):
                followed.update(e.event_id for e in batch)

        try:
            await store_log[1].open()
            follower = asyncio.create_task(follow())
            groups = [users[w::4] for w in range(4)]
            await asyncio.gather(chaos(), *(writer(store_log, g) for g in groups))
            stored = await collect(store_log[1])
            for _ in range(100):
                if followed >= {e.event_id for e in stored}:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(follower, 10)
            return stored, followed
        finally:
            await store_log[1].close()
            await store_log[0].close()

    events, followed = run(go())
    # the follower read through the failover (at least once: it may also have read an
    # unacknowledged write of the old master that its retry stored again)
    assert followed >= {e.event_id for e in events}
    counts = Counter(e.event_id for e in events)
    assert stats["unavailable"] > 0, "the failover was not under load"
    assert sum(counts.values()) == stats["acked"]  # 0 lost, 0 stored twice
    assert counts.most_common(1)[0][1] == 1
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(int(e.event_id.rsplit("-", 1)[1]))
    assert all(seqs == list(range(len(seqs))) for seqs in by_user.values())
    print(f"failover: {json.dumps(dict(stats))}, {len(events)} events stored", flush=True)


def test_entries_of_one_millisecond_replay_the_old_stream_first(redis_url, redis_namespace):
    """Sequence numbers count within one stream: an old-stream entry ``T-2`` is older than a
    partition entry ``T-0`` of the same user (written after the upgrade), and replays first."""
    from rankly.engine.events.log import _encode

    async def go():
        store, log = make_log(redis_url, redis_namespace)
        try:
            legacy = legacy_stream_key(f"{redis_namespace}:")
            for seq, e in enumerate([ev("a", 0), ev("b", 0), ev("a", 1)]):
                await log.guard.run(lambda r, e=e, seq=seq: r.xadd(
                    legacy, {"e": _encode(e, 1.0, True)}, id=f"5000-{seq}"))
            new = ev("a", 2)
            key = log.stream_keys[partition_of("a", log.partitions)]
            await log.guard.run(lambda r: r.xadd(key, {"e": _encode(new, 1.0, True)},
                                                 id="5000-0"))
            await log.open()
            return await collect(log)
        finally:
            await store.close()

    assert [e.event_id for e in run(go())] == ["a-0", "b-0", "a-1", "a-2"]
