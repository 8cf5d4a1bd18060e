"""What a fresh process's first recommendation costs, with and without ``pipeline.warm_up``.

Run (about 10 s; trains ML-100K under .rankly/bench the first time, as test_pipeline does):

    python benchmarks/first_request.py            # 3 fresh processes per mode

Each round starts a new Python process (one-time costs are per process: anyio's backend
import and worker thread, first touches of the memory-mapped factors), builds the runtime
over the ML-100K artifacts with caches off, optionally runs ``pipeline.warm_up`` (the app
does, before it serves), then times ``pipeline.rank`` for three different known users.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ROUND = """
import asyncio, json, sys, time
sys.path.insert(0, {here!r})
import pipeline_fixtures as fx
from rankly.engine import pipeline
from rankly.engine.types import RecommendationRequest
path = fx.ml100k_artifacts()
rt = fx.runtime_for(fx.load(path), fx.settings_for(path, cache={{"tiers": []}}))
plan = pipeline.default_plan(rt)
async def main():
    warm = await pipeline.warm_up(rt) if {warm} else 0.0
    times = []
    for user in ("5", "6", "7"):
        start = time.perf_counter()
        await pipeline.rank(rt, RecommendationRequest(user_id=user, n=10, request_id="f"), plan)
        times.append((time.perf_counter() - start) * 1000)
    return warm * 1000, times
print(json.dumps(asyncio.run(main())))
"""


def one_round(warm: bool) -> tuple[float, list[float]]:
    code = ROUND.format(here=str(HERE), warm=warm)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))  # type: ignore[return-value]


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    result = {}
    for warm in (False, True):
        runs = [one_round(warm) for _ in range(rounds)]
        result["with warm-up" if warm else "without warm-up"] = {
            "warm_up_ms": round(statistics.median(r[0] for r in runs), 1),
            "first_request_ms": round(statistics.median(r[1][0] for r in runs), 2),
            "next_requests_ms": round(statistics.median(t for r in runs for t in r[1][1:]), 2),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
