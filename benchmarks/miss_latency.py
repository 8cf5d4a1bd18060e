"""In-process latency of an uncached request (``pipeline.rank``, caches off): P50/P95/P99.

    python benchmarks/miss_latency.py [--requests 4000] [--synth1m] \
        [--out benchmarks/results/miss_latency.json]

Plans, all on the ML-100K artifacts of benchmarks/pipeline_fixtures.py (trained once):
``default`` (the served default: the blend's fused path), ``default-chain`` (the same
components through the general chain: generate, merge, filter, score), ``ease`` and ``pop``
(single-model plans), and ``hit`` (an L1 cache hit of the default plan, the floor of the
request path). With ``--synth1m``: exact ALS over the 1M-item, d=64 catalog. With
``--impression-features``: ``unlogged`` (the default without ``impressions.features``, what
every miss paid before point-in-time logging), every runtime reads live counters as a served
app does, and the cost of encoding one slate's features (the impression logger's, off the
request path; a cache tier's on a miss) is timed too. Every plan runs
the same warm users, in rounds that interleave the plans, so machine noise hits them alike;
each timing is one ``await pipeline.rank`` on one event loop, as a worker serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # serve single-threaded, as workers do

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_fixtures as fx  # noqa: E402

from rankly.engine import pipeline  # noqa: E402
from rankly.engine.types import RecommendationRequest  # noqa: E402

PLANS = ("default", "default-chain", "ease", "pop")


def runtimes(model, artifacts: Path, unlogged: bool = False) -> dict[str, tuple]:
    out = {}
    for name in PLANS:
        cands, scorers = fx.SCORER_PLANS[name]
        rt = fx.runtime_for(model, fx.settings_for(
            artifacts, cache={"tiers": []}, pipeline={"candidates": cands, "scorers": scorers}))
        out[name] = (rt, pipeline.default_plan(rt))
    if unlogged:
        rt = fx.runtime_for(model, fx.settings_for(artifacts, cache={"tiers": []},
                                                   impressions={"features": False}))
        out["unlogged"] = (rt, pipeline.default_plan(rt))
    rt = fx.runtime_for(model, fx.settings_for(artifacts, cache={"tiers": ["l1"]}))
    out["hit"] = (rt, pipeline.default_plan(rt))
    return out


def measure(loop, rt, plan, reqs, fallbacks: list[str]) -> list[float]:
    times = []
    for req in reqs:
        t = time.perf_counter()
        out = loop.run_until_complete(pipeline.rank(rt, req, plan))
        times.append(time.perf_counter() - t)
        if out["fallback"]:
            fallbacks.append(out["fallback"])
    return times


def attach_live_counters(loop, rt, model) -> None:
    """Live counters on ``rt``'s store, as a served app has, with one event per item of the
    first few hundred (so their reads are not of an empty counter)."""
    from rankly.engine.events.projections import Projections, attach
    from rankly.engine.events.values import Event

    proj = Projections(rt.settings, rt.store, lambda: model.catalog)
    ids = model.catalog.id_list()[:300]
    loop.run_until_complete(proj.apply(
        [Event(f"e{k}", f"u{k}", item, "view", 1.7e9 + k) for k, item in enumerate(ids)],
        users=False))
    attach(rt.store, proj)


def l1_entry_bytes(loop, model, artifacts: Path, reqs, features: bool) -> float:
    """Mean size of an L1 entry (what counts against ``cache.l1_max_bytes``) after ``reqs``."""
    rt = fx.runtime_for(model, fx.settings_for(artifacts, cache={"tiers": ["l1"]},
                                               impressions={"features": features}))
    plan = pipeline.default_plan(rt)
    for req in reqs:
        loop.run_until_complete(pipeline.rank(rt, req, plan))
    cache = rt.caches[0][1]
    return cache.bytes / max(len(cache), 1)


def encode_times(loop, rt, plan, reqs) -> list[float]:
    """Seconds to encode each computed slate's impression features (``record()``)."""
    times = []
    for req in reqs:
        out = loop.run_until_complete(pipeline.rank(rt, req, plan, features=True))
        captured = out[pipeline.FEATURES_FIELD]
        t = time.perf_counter()
        captured.record()
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {"requests": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="timed requests per plan")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--synth1m", action="store_true", help="also time exact ALS at 1M items")
    ap.add_argument("--impression-features", action="store_true",
                    help="compare with impressions.features off; live counters attached")
    ap.add_argument("--out", default="benchmarks/results/miss_latency.json")
    args = ap.parse_args(argv)
    loop = asyncio.new_event_loop()
    artifacts = fx.ml100k_artifacts()
    model = fx.load(artifacts)
    rts = runtimes(model, artifacts, args.impression_features)
    if args.impression_features:
        for rt, _ in rts.values():
            attach_live_counters(loop, rt, model)
    users = fx.warm_users(model, args.requests, seed=1)
    reqs = [RecommendationRequest(user_id=u, n=10, request_id="b") for u in users]
    hit_req = [RecommendationRequest(user_id=users[0], n=10, request_id="b")]
    times: dict[str, list[float]] = {name: [] for name in rts}
    fallbacks: dict[str, list[str]] = {name: [] for name in rts}
    for name, (rt, plan) in rts.items():  # warm-up: first touches, worker thread
        measure(loop, rt, plan, (hit_req if name == "hit" else reqs)[:200], [])
    # as the app does after startup (engine/serving/app.py): the model and plugin heap leave the
    # collector's generations, so a full collection does not traverse them mid-request
    gc.collect()
    gc.freeze()
    per = max(1, args.requests // args.rounds)
    for r in range(args.rounds):
        chunk = reqs[r * per:(r + 1) * per]
        for name, (rt, plan) in rts.items():
            batch = hit_req * len(chunk) if name == "hit" else chunk
            times[name] += measure(loop, rt, plan, batch, fallbacks[name])
    results = {name: {**summary(t), "fallbacks": len(fallbacks[name])}
               for name, t in times.items()}
    sizes: dict[bool, float] = {}
    if args.impression_features:
        results["encode-features"] = {**summary(encode_times(loop, *rts["default"], reqs)),
                                      "fallbacks": 0}
        sizes = {on: l1_entry_bytes(loop, model, artifacts, reqs[:500], on)
                 for on in (True, False)}
        print(f"L1 entry bytes, mean: {sizes[True]:.0f} with features, {sizes[False]:.0f} "
              "without", file=sys.stderr)
    if args.synth1m:
        big = fx.load(fx.synth1m_artifacts())
        rt = fx.runtime_for(big, fx.settings_for(
            fx.synth1m_artifacts(), cache={"tiers": []}, blocked_plugins=("blend",),
            pipeline={"candidates": ("als",), "scorers": ("als",)}))
        big_reqs = [RecommendationRequest(user_id=u, n=10, request_id="b")
                    for u in fx.warm_users(big, 400, seed=2)]
        fb: list[str] = []
        measure(loop, rt, pipeline.default_plan(rt), big_reqs[:20], fb)
        results["synth1m-exact-als"] = {**summary(measure(loop, rt, pipeline.default_plan(rt),
                                                          big_reqs, fb)), "fallbacks": len(fb)}
    base = results["default"]["p50_ms"]
    for row in results.values():
        row["p50_vs_default"] = round(row["p50_ms"] / base, 2)
    meta = {"command": "python benchmarks/miss_latency.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load_average_end": round(os.getloadavg()[0], 2),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "artifacts": str(artifacts)}
    if sizes:
        meta["l1_entry_bytes"] = {"features": round(sizes[True]), "unlogged": round(sizes[False])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print("| plan | P50 ms | P95 ms | P99 ms | mean ms | P50 / default | fallbacks |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
              f"{r['mean_ms']:.3f} | {r['p50_vs_default']:.2f}x | {r['fallbacks']} |")
    if "unlogged" in results:
        d, u = results["default"], results["unlogged"]
        print("default (features logged) / unlogged: " + ", ".join(
            f"{q} {d[q + '_ms'] / u[q + '_ms']:.3f}x" for q in ("p50", "p95", "p99", "mean")))
    print(f"load average at the end: {meta['load_average_end']}", file=sys.stderr)
    for task in asyncio.all_tasks(loop):  # the L1 tier's invalidation follower
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
