"""Sustained load: 60 s of wrk on /recommendations while events are ingested, zero errors.

Run (about 75 s; needs wrk, and redis-server for ``--redis``):

    python benchmarks/sustained_load.py                 # embedded store, fsynced file log
    python benchmarks/sustained_load.py --redis         # Redis store (AOF always), l1+l2 caches
    python benchmarks/sustained_load.py --duration 20 --rate 500

Starts one ``rankly serve`` worker on a free 127.0.0.1 port over the synthetic model of
``events_load.py`` (2,000 users, 1,000 items; pipeline ``itemknn,trending,popular``), warms it
for 3 s, then for ``--duration`` seconds runs ``wrk -t1 -c8`` on ``GET /recommendations``
(random known users, n=10) while an asyncio client posts ``--rate`` events/s to
``POST /events`` (batches of ``--batch``; 60% views, 20% clicks, 20% purchases). Afterwards it
counts the client events in the log (file or stream) and samples the server's RSS. Every
process is stopped by the PID this script started. Exits 1 on any wrk error, any answer other
than 202 to an event post, or an acknowledged event missing from the log. Results go to stdout
and ``benchmarks/results/sustained.json`` (``--redis``: ``sustained-redis.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from events_load import (
    build_artifacts,
    free_port,
    load_arguments,
    load_while_flooding,
    start_server,
    stop,
)

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def start_redis(workdir: Path, appendfsync: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", appendfsync, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        out = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                             text=True).stdout
        if out.strip() == "PONG":
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def stored_client_events(tmp: Path, redis_port: int | None) -> int:
    """Client events (``load-*`` ids) in the log, each counted once per stored copy."""
    if redis_port is None:
        path = tmp / "data" / "events" / "events.jsonl"
        return sum(1 for line in path.open() if '"id":"load-' in line)
    import redis

    from rankly.engine.config import EventSettings
    from rankly.engine.events.log import stream_keys

    client = redis.Redis(port=redis_port, socket_timeout=30)
    count = 0
    for key in stream_keys("rankly:", EventSettings().partitions):
        start = "-"
        while rows := client.xrange(key, min=start, max="+", count=10000):
            count += sum(1 for _, f in rows if b'"id":"load-' in f[b"e"])
            start = "(" + rows[-1][0].decode()
    client.close()
    return count


def main() -> int:
    ap = load_arguments(__doc__.splitlines()[0], duration=60, rate=1000)
    ap.add_argument("--redis", action="store_true", help="Redis store (AOF) and l1,l2 caches")
    ap.add_argument("--appendfsync", default="always", choices=("always", "everysec", "no"),
                    help="Redis AOF fsync policy (with --redis)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("sustained_load: wrk is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rankly-sustained-"))
    artifacts = build_artifacts(tmp / "artifacts", args.users, args.items)
    redis_proc, redis_port, env = None, None, {}
    if args.redis:
        redis_proc, redis_port = start_redis(tmp, args.appendfsync)
        env = {"RANKLY_STORE_URL": f"redis://127.0.0.1:{redis_port}/0",
               "RANKLY_CACHE__TIERS": "l1,l2"}
    try:
        server, url, script = start_server(tmp, artifacts, args.users, **env)
        try:
            rss_start = rss_mb(server.pid)
            load, ingest = load_while_flooding(url, script, args)
            rss_end = rss_mb(server.pid)
            stored = stored_client_events(tmp, redis_port)
        finally:
            stop(server)
    finally:
        if redis_proc is not None:
            stop(redis_proc, signal.SIGKILL)
    errors = []
    if load["errors"]:
        errors.append(f"wrk: {load['errors']} errors")
    if set(ingest["status"]) != {202}:
        errors.append(f"events: statuses {ingest['status']}")
    if stored != ingest["accepted"]:
        errors.append(f"events: {ingest['accepted']} acknowledged, {stored} in the log")
    store = f"redis (appendfsync {args.appendfsync})" if args.redis else "embedded"
    result = {"store": store, "duration_s": args.duration,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "recommendations": load, "ingest": ingest, "client_events_in_log": stored,
              "rss_mb": {"start": rss_start, "end": rss_end}, "errors": errors}
    print(json.dumps(result, indent=2))
    name = "sustained-redis.json" if args.redis else "sustained.json"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
