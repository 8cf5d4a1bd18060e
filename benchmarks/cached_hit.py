"""In-process CPU of an answer through the whole app, impression logging included.

    python benchmarks/cached_hit.py [--requests 20000] [--rounds 5] [--uncached] \
        [--out benchmarks/results/cached_hit.json]

The HTTP load test (benchmarks/load.py) shows what a cached answer costs a worker, but with
the server, the kernel and wrk sharing two cores. This drives the app's ASGI callable
directly on one event loop, as a uvicorn worker would (lifespan, middleware, the
``GET /recommendations`` fast path), with the load test's request mix replayed once to
fill the L1, then timed: CPU microseconds per answer, the impression logger's flushes and
the event log's writes included (they are drained inside the timed window). Two apps run
in interleaved rounds: ``features`` (the default, point-in-time features logged with every
impression) and ``unlogged`` (``impressions.features`` and ``impressions.sources`` off).
With ``--uncached`` two more apps without cache tiers (every answer computed, as the load
test's ``uncached`` rows) run in the same rounds, on a tenth of the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # serve single-threaded, as workers do

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pipeline_fixtures as fx  # noqa: E402
from load import request_mix  # noqa: E402

from rankly.engine.config import load_settings  # noqa: E402
from rankly.engine.model import load_model  # noqa: E402
from rankly.engine.serving.app import create_app  # noqa: E402

VARIANTS = {"features": {}, "unlogged": {"impressions": {"features": False, "sources": False}}}


class Served:
    """An app with its lifespan run, answering requests given as paths."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        queue = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict:
            msg = next(queue, None)
            if msg is not None:
                return msg
            await self._stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(msg: dict) -> None:
            if msg["type"].startswith("lifespan.startup"):
                self._started.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, receive, send))
        await self._started.wait()

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def get(self, path: str) -> bytes:
        raw_path, _, query = path.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": raw_path,
                 "raw_path": raw_path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(b"host", b"bench")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                 "state": self.state.copy()}
        out: list[bytes] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict) -> None:
            if msg["type"] == "http.response.body":
                out.append(msg.get("body", b""))

        await self.app(scope, receive, send)
        return b"".join(out)

    def events(self) -> Any:
        return self.state["runtime"].extras["events"]

    async def drain(self) -> None:
        """Log every impression still buffered (the background flush's work, done now)."""
        await self.events()._drain_impressions()


async def run_round(served: Served, paths: list[str]) -> float:
    """CPU seconds per answer over ``paths`` (hits, in an app with a cache), logging drained."""
    events = served.events()
    start = time.process_time()
    for k, path in enumerate(paths):
        await served.get(path)
        if k % events.impressions.batch_slates == 0:
            await served.drain()
    await served.drain()
    return (time.process_time() - start) / len(paths)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rankly-cached-hit-") as tmp:
        return await timed_apps(args, Path(tmp))


async def timed_apps(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Each app's CPU per answer (median of the rounds), their event logs under ``tmp``."""
    artifacts = fx.ml100k_artifacts()
    users = np.asarray(load_model(artifacts).users.user_ids).astype(str)
    paths = request_mix(users, args.paths, seed=5)
    apps = {}
    variants = {name: dict(o, cache={}) for name, o in VARIANTS.items()}
    if args.uncached:
        variants.update({f"{name} uncached": dict(o, cache={"tiers": []})
                         for name, o in VARIANTS.items()})
    for name, overrides in variants.items():
        settings = load_settings(environ={}, artifacts=artifacts,
                                 data_dir=tmp / name.replace(" ", "-"),
                                 log_level="warning", **overrides)
        apps[name] = Served(create_app(settings))
        await apps[name].start()
        for path in paths:  # fill the L1: every timed request is a hit
            await apps[name].get(path)
        await apps[name].drain()
    timed = [paths[k % len(paths)] for k in range(args.requests)]
    rounds: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, served in apps.items():
            some = timed[:len(timed) // 10] if name.endswith("uncached") else timed
            rounds[name].append(await run_round(served, some) * 1e6)
    for served in apps.values():
        await served.stop()
    out = {name: {"us_per_answer": round(float(np.median(v)), 2),
                  "rounds": [round(x, 2) for x in v]} for name, v in rounds.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000, help="timed answers per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per app")
    ap.add_argument("--uncached", action="store_true",
                    help="also time apps without cache tiers")
    ap.add_argument("--paths", type=int, default=4000, help="requests in the drawn mix")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cached_hit.json")
    args = ap.parse_args(argv)
    results = asyncio.run(main_async(args))
    for name, r in results.items():
        print(f"{name:18s} {r['us_per_answer']:8.2f} us per answer  rounds {r['rounds']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"python": platform.python_version(),
                                                "load_avg": os.getloadavg()},
                                    "command": sys.argv, "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
