"""Recommendation latency while ingesting events: P50/P95/P99 with and without an event flood.

Run (about 40 s; needs wrk):

    python benchmarks/events_load.py                   # 2,000 events/s, 15 s per phase
    python benchmarks/events_load.py --rate 4000 --duration 10 --batch 50

The partitioned Redis log alone, no HTTP (needs redis-server; results in
``benchmarks/results/events_log_<standalone|cluster>_b<batch>.json``):

    python benchmarks/events_load.py --log-only --partitions 1,16 --duration 10
    python benchmarks/events_load.py --log-only --cluster 3 --partitions 16 --duration 10
    python benchmarks/events_load.py --log-only --cluster 3 --partitions 16 --duration 10 \
        --batch 500 --clients 4
    python benchmarks/events_load.py --log-only --cluster 3 --replicas 1 --partitions 16 \
        --duration 10 --batch 50     # wait_replicas = 1: every ack waits for a replica

appends batches of ``--batch`` new events from ``--clients`` concurrent appenders through
``RedisStreamLog`` (AOF on, ``--appendfsync everysec``) and reports the acknowledged events/s
and the Redis CPU spent per event (``INFO cpu`` before and after, all nodes), whose inverse is
what one Redis core can ingest: the ceiling of one partition, which lives on one master.

Starts one ``rankly serve`` worker on a free 127.0.0.1 port over a small synthetic model (embedded
store, so every acknowledged event is fsynced to the JSON-lines log), then:

1. baseline: ``wrk -t1 -c8`` on ``GET /recommendations`` (random known users, n=10);
2. the same wrk run while an asyncio client posts ``--rate`` events/s to ``POST /events`` in
   batches of ``--batch`` (paced every 1/(rate/batch) s; 20% purchases, so caches get
   invalidated), and counts 202s, 503s and accepted events.

The server is stopped by the PID this script started; the results go to stdout and
``benchmarks/results/events_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "events_load.json"

WRK_SCRIPT = """
math.randomseed(7)
request = function()
  return wrk.format("GET", "/recommendations?n=10&user_id=" .. math.random(1, %(users)d))
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.1f %%.1f %%.1f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_artifacts(out: Path, users: int, items: int) -> Path:
    from rankly.engine.model import fingerprint, save_model
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.plugins import collect, make_plugin_manager

    interactions, meta = synthesize(n_users=users, n_items=items, seed=5)
    data = build_training_data(interactions, meta)
    trainers = collect(make_plugin_manager(), "trainers")
    parts = [trainers.get(n).fit(data, {}) for n in ("pop", "itemknn")]
    return save_model(out, data.catalog, data.users, parts,
                      data_fingerprint=fingerprint(data.user_idx, data.item_idx))


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def load_arguments(description: str, duration: int, rate: int) -> argparse.ArgumentParser:
    """The options both load scripts share (the synthetic model's size and the event mix)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--duration", type=int, default=duration, help="seconds of load")
    ap.add_argument("--rate", type=int, default=rate, help="events per second")
    ap.add_argument("--batch", type=int, default=20, help="events per POST /events")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    return ap


def start_server(tmp: Path, artifacts: Path, users: int,
                 **env: str) -> tuple[subprocess.Popen, str, Path]:
    """One ``rankly serve`` worker on a free 127.0.0.1 port (pipeline itemknn, trending,
    popular; ``RANKLY_*`` of the caller's environment left out, ``env`` added), its URL and a
    wrk script over ``users`` known users, warmed for 3 s. Stop it with :func:`stop`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("RANKLY_")},
            "RANKLY_ARTIFACTS": str(artifacts), "RANKLY_DATA_DIR": str(tmp / "data"),
            "RANKLY_PORT": str(port), "RANKLY_HOST": "127.0.0.1", "RANKLY_LOG_LEVEL": "warning",
            "RANKLY_PIPELINE__CANDIDATES": "itemknn,trending,popular",
            "RANKLY_PIPELINE__SCORERS": "itemknn,popular", **env}
    server = subprocess.Popen([sys.executable, "-m", "rankly.engine.cli", "serve"], env=full,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url)
        script = tmp / "recs.lua"
        script.write_text(WRK_SCRIPT % {"users": users})
        run_wrk(url, script, 3)  # warm-up
    except BaseException:
        stop(server)
        raise
    return server, url, script


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process this script started, by its PID: ``sig``, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(url: str, script: Path, duration: int) -> dict:
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{duration}s", "--timeout", "2s",
                          "-s", str(script), url], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    n, errors, micros, p50, p95, p99 = line.split()[1:]
    secs = int(micros) / 1e6
    return {"requests": int(n), "errors": int(errors), "rps": round(int(n) / secs, 1),
            "p50_ms": float(p50) / 1000, "p95_ms": float(p95) / 1000,
            "p99_ms": float(p99) / 1000}


async def flood(url: str, rate: int, batch: int, duration: float, users: int,
                items: int) -> dict:
    import httpx

    rng = random.Random(11)
    interval = batch / rate
    counts = {"requests": 0, "status": {}, "accepted": 0, "duplicates": 0}
    kinds = ["view"] * 6 + ["click"] * 2 + ["purchase"] * 2
    seq = 0
    pending: set[asyncio.Task] = set()
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:

        async def post(body: list[dict]) -> None:
            r = await client.post("/events", json=body)
            counts["requests"] += 1
            counts["status"][r.status_code] = counts["status"].get(r.status_code, 0) + 1
            if r.status_code == 202:
                counts["accepted"] += r.json()["accepted"]
                counts["duplicates"] += r.json()["duplicates"]

        start = time.perf_counter()
        tick = 0
        while time.perf_counter() - start < duration:
            body = []
            for _ in range(batch):
                seq += 1
                body.append({"event_id": f"load-{seq}", "type": rng.choice(kinds),
                             "user_id": str(rng.randint(1, users)),
                             "item_id": str(rng.randint(1, items))})
            task = asyncio.create_task(post(body))
            pending.add(task)
            task.add_done_callback(pending.discard)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * interval - time.perf_counter()))
        if pending:
            await asyncio.wait(pending, timeout=10)
        elapsed = time.perf_counter() - start
    counts["sent"] = seq
    counts["events_per_s"] = round(counts["accepted"] / elapsed, 1)
    return counts


def load_while_flooding(url: str, script: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Run wrk on /recommendations and the event flood at the same time; both results."""

    async def both() -> tuple[dict, dict]:
        loop = asyncio.get_running_loop()
        wrk = loop.run_in_executor(None, run_wrk, url, script, args.duration)
        ingest = await flood(url, args.rate, args.batch, args.duration, args.users, args.items)
        return await wrk, ingest

    return asyncio.run(both())


# --- the partitioned Redis log alone (no HTTP): events/s and Redis CPU per event ---------------


def start_redis(root: Path, cluster: int, appendfsync: str, replicas: int = 0
                ) -> tuple[list[subprocess.Popen], str, list[int]]:
    """A standalone redis-server (``cluster`` 0) or a ``cluster``-master Redis Cluster with
    ``replicas`` replicas per master on free loopback ports, AOF on with ``appendfsync``; the
    processes, the URL and the ports."""
    procs, ports = [], []
    for n in range(max(cluster, 1) * (1 + replicas if cluster else 1)):
        while (port := free_port()) > 55535:  # a cluster bus port is port + 10000
            pass
        workdir = root / f"redis-{n}"
        workdir.mkdir(parents=True)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--repl-diskless-sync-delay", "0"] if cluster else []
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", appendfsync, "--dir", str(workdir),
             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        deadline = time.monotonic() + 10
        while _cli(port, "PING") != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.05)
    if not cluster:
        return procs, f"redis://127.0.0.1:{ports[0]}/0", ports
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", str(replicas), "--cluster-yes"], check=True,
                   capture_output=True, timeout=30)
    while not all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in ports) or (
            replicas and sum("master_link_status:up" in _cli(p, "INFO", "replication")
                             for p in ports) < cluster * replicas):
        time.sleep(0.1)
    return procs, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), ports


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=10).stdout.strip()


def redis_cpu_s(ports: list[int]) -> list[float]:
    """Each server's CPU seconds so far (user + sys, main thread and children)."""
    out = []
    for port in ports:
        info = dict(line.split(":", 1) for line in _cli(port, "INFO", "cpu").splitlines()
                    if ":" in line)
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


async def append_load(url: str, partitions: int, seconds: float, clients: int, batch: int,
                      users: int, wait_replicas: int = 0) -> dict:
    """``clients`` coroutines appending batches of ``batch`` new click events from random
    users through :class:`RedisStreamLog` for ``seconds``; what was acknowledged."""
    from rankly.engine.config import load_settings
    from rankly.engine.events.log import RedisStreamLog
    from rankly.engine.events.values import Event
    from rankly.engine.storage.redis_store import RedisStore

    settings = load_settings(environ={}, store_url=url, namespace=f"bench{partitions}",
                             events={"partitions": partitions},
                             plugins={"events": {"wait_replicas": wait_replicas}})
    store = RedisStore(url, settings)
    log = RedisStreamLog(store, settings)
    await log.open()
    acked = 0
    errors = 0
    rng = random.Random(partitions)

    async def client(c: int) -> None:
        nonlocal acked, errors
        seq = 0
        while time.perf_counter() < stop_at:
            events = [Event(f"b{c}-{seq + i}", str(rng.randrange(users)), str(rng.randrange(5000)),
                            "click", time.time()) for i in range(batch)]
            seq += batch
            try:
                result = await log.append(events)  # NOTE: not `acked += await ...` (the
                acked += result.accepted           # load of acked would precede the await)
            except Exception:  # noqa: BLE001 - counted: the benchmark reports errors
                errors += 1

    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    lengths = [await log.guard.run(lambda r, k=k: r.xlen(k)) for k in log.stream_keys]
    await log.close()
    await store.close()
    return {"acked": acked, "errors": errors, "seconds": round(elapsed, 2),
            "events_per_s": round(acked / elapsed), "stream_lengths": lengths}


def log_only(args: argparse.Namespace) -> int:
    """Ingest straight into the partitioned Redis log for each ``--partitions`` value."""
    root = Path(tempfile.mkdtemp(prefix="rankly-log-load-"))
    procs, url, ports = start_redis(root, args.cluster, args.appendfsync, args.replicas)
    runs = []
    try:
        for partitions in (int(p) for p in args.partitions.split(",")):
            before = redis_cpu_s(ports)
            load = asyncio.run(append_load(url, partitions, args.duration, args.clients,
                                           args.batch, args.users, args.replicas))
            cpu = [b - a for a, b in zip(before, redis_cpu_s(ports), strict=True)]
            us_per_event = sum(cpu) / max(load["acked"], 1) * 1e6
            runs.append({"partitions": partitions, **load,
                         "redis_cpu_s_per_node": [round(c, 2) for c in cpu],
                         "redis_cpu_us_per_event": round(us_per_event, 2),
                         "events_per_s_per_redis_core": round(1e6 / us_per_event)})
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
    result = {"mode": "log-only", "redis": "cluster" if args.cluster else "standalone",
              "masters": max(args.cluster, 1), "replicas_per_master": args.replicas,
              "wait_replicas": args.replicas, "appendfsync": args.appendfsync,
              "clients": args.clients, "batch": args.batch, "users": args.users,
              "cpu_count": os.cpu_count(), "runs": runs}
    print(json.dumps(result, indent=2))
    name = (f"events_log_{'cluster' if args.cluster else 'standalone'}_b{args.batch}"
            f"{f'_r{args.replicas}' if args.replicas else ''}.json")
    (RESULTS.parent / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main() -> int:
    ap = load_arguments(__doc__.splitlines()[0], duration=15, rate=2000)
    ap.add_argument("--log-only", action="store_true",
                    help="no server: append straight into the partitioned Redis log")
    ap.add_argument("--partitions", default="1,16", help="--log-only: partition counts to run")
    ap.add_argument("--cluster", type=int, default=0,
                    help="--log-only: masters of a Redis Cluster (0: a standalone Redis)")
    ap.add_argument("--clients", type=int, default=8, help="--log-only: concurrent appenders")
    ap.add_argument("--replicas", type=int, default=0,
                    help="--log-only with --cluster: replicas per master, and "
                         "[plugins.events] wait_replicas set to it (each ack waits for them)")
    ap.add_argument("--appendfsync", default="everysec", choices=("always", "everysec", "no"),
                    help="--log-only: Redis AOF fsync policy")
    args = ap.parse_args()
    if args.log_only:
        return log_only(args)
    tmp = Path(tempfile.mkdtemp(prefix="rankly-events-load-"))
    artifacts = build_artifacts(tmp / "artifacts", args.users, args.items)
    server, url, script = start_server(tmp, artifacts, args.users)
    try:
        baseline = run_wrk(url, script, args.duration)
        loaded, ingest = load_while_flooding(url, script, args)
        log_path = tmp / "data" / "events" / "events.jsonl"
        stored = sum(1 for line in log_path.open() if '"t":"impression"' not in line)
    finally:
        stop(server)
    result = {"rate": args.rate, "batch": args.batch, "duration_s": args.duration,
              "cpu_count": os.cpu_count(), "baseline": baseline, "under_ingest": loaded,
              "ingest": ingest, "client_events_in_log": stored}
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
