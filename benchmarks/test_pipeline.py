"""Benchmarks of the in-process request path (``pipeline.rank``), stage by stage.

Run (about 3 minutes the first time, which trains ML-100K and writes the 1M-item catalog
under .rankly/bench; about 1 minute after):

    pytest benchmarks/test_pipeline.py --benchmark-json benchmarks/results/pipeline.json

then print the table benchmarks/README.md quotes:

    python benchmarks/test_pipeline.py benchmarks/results/pipeline.json

Groups: ``ml100k-hit`` (an L1 cache hit), ``ml100k-miss`` (caches off; each built-in model as
the scorer), ``synth1m`` (1M items, d = 64: exact ALS candidates vs the ``als-ivf`` two-stage
path), ``itemknn-generate history=H`` (the item-kNN generator against plain scipy indexing).
Each miss benchmark records the median of every stage the pipeline timed itself
(``extra_info["stages_ms"]``); the IVF benchmark records recall@10 against exact scoring.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no rootdir
import pipeline_fixtures as fx  # noqa: E402

from rankly.engine import pipeline  # noqa: E402
from rankly.engine.types import RecommendationRequest  # noqa: E402

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # serve single-threaded, as workers do


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def ml100k():
    return fx.load(fx.ml100k_artifacts())


@pytest.fixture(scope="module")
def synth1m():
    return fx.load(fx.synth1m_artifacts())


def _requests(model, count: int = 512) -> itertools.cycle:
    users = fx.warm_users(model, count, seed=1)
    return itertools.cycle([RecommendationRequest(user_id=u, n=10, request_id="b")
                            for u in users])


def _stage_medians(rt, comps, plan, reqs, loop, rounds: int = 200) -> dict[str, float]:
    """Median ms per (stage, component) over ``rounds`` requests, as the pipeline timed them."""
    per: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        req = next(reqs)
        trace = pipeline.Trace()
        user = loop.run_until_complete(pipeline.fetch_features(rt, comps.model, req, trace))
        pipeline.select(rt, comps, req, plan, user, trace)
        for stage, comp, seconds in trace.stages:
            per[f"{stage}:{comp}"].append(seconds * 1000)
    return {k: round(statistics.median(v), 4) for k, v in per.items()}


@pytest.mark.benchmark(group="ml100k-hit")
def test_cache_hit(benchmark, ml100k, loop):
    rt = fx.runtime_for(ml100k, fx.settings_for(fx.ml100k_artifacts()))
    req = RecommendationRequest(user_id=str(ml100k.users.user_ids[0]), n=10, request_id="b")
    plan = pipeline.default_plan(rt)
    first = loop.run_until_complete(pipeline.rank(rt, req, plan))
    assert first["cached"] is False
    out = benchmark(lambda: loop.run_until_complete(pipeline.rank(rt, req, plan)))
    assert out["cached"] is True and out["items"] == first["items"]


@pytest.mark.benchmark(group="ml100k-miss")
@pytest.mark.parametrize("scorer", list(fx.SCORER_PLANS))
def test_cache_miss(benchmark, ml100k, loop, scorer):
    cands, scorers = fx.SCORER_PLANS[scorer]
    settings = fx.settings_for(fx.ml100k_artifacts(), cache={"tiers": []},
                               pipeline={"candidates": cands, "scorers": scorers})
    rt = fx.runtime_for(ml100k, settings)
    plan = pipeline.default_plan(rt)
    reqs = _requests(ml100k)
    benchmark.extra_info["stages_ms"] = _stage_medians(rt, rt.components, plan, reqs, loop)
    out = benchmark(lambda: loop.run_until_complete(pipeline.rank(rt, next(reqs), plan)))
    assert out["cached"] is False and len(out["items"]) == 10
    assert out["fallback"] is None, out["fallback"]


def _synth_runtime(model, candidates: tuple[str, ...]):
    settings = fx.settings_for(fx.synth1m_artifacts(), cache={"tiers": []},
                               blocked_plugins=("blend",),
                               pipeline={"candidates": candidates, "scorers": ("als",)})
    return fx.runtime_for(model, settings)


@pytest.fixture(scope="module")
def synth_runtimes(synth1m):
    return {"exact": _synth_runtime(synth1m, ("als",)),
            "ivf": _synth_runtime(synth1m, ("als-ivf",))}


def recall_at_10(runtimes, model, loop, users: int = 300) -> float:
    """Mean |IVF top-10 & exact top-10| / 10 over ``users`` known users, full pipeline."""
    hits = []
    for req in itertools.islice(_requests(model, users), users):
        got = []
        for name in ("exact", "ivf"):
            rt = runtimes[name]
            trace = pipeline.Trace()
            user = loop.run_until_complete(pipeline.fetch_features(rt, rt.components.model,
                                                                   req, trace))
            ranking = pipeline.select(rt, rt.components, req, pipeline.default_plan(rt), user,
                                      trace)
            got.append(set(ranking.items.tolist()))
        hits.append(len(got[0] & got[1]) / 10)
    return float(np.mean(hits))


@pytest.mark.benchmark(group="synth1m")
@pytest.mark.parametrize("path", ["exact", "ivf"])
def test_synth1m_miss(benchmark, synth1m, synth_runtimes, loop, path):
    rt = synth_runtimes[path]
    plan = pipeline.default_plan(rt)
    reqs = _requests(synth1m)
    benchmark.extra_info["stages_ms"] = _stage_medians(rt, rt.components, plan, reqs, loop,
                                                       rounds=100)
    if path == "ivf":
        recall = recall_at_10(synth_runtimes, synth1m, loop)
        benchmark.extra_info["recall_at_10"] = recall
        assert recall >= 0.95, recall
    out = benchmark(lambda: loop.run_until_complete(pipeline.rank(rt, next(reqs), plan)))
    assert out["fallback"] is None and len(out["items"]) == 10


def _scipy_knn_generate(sim, h: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
    """Item-kNN candidates the plain scipy way (row indexing, column sums, a dense column
    block for the anchors): the peer of ``ItemKNNScorer.generate``, which gathers from the
    CSR arrays itself. Returns the anchors, so both can be compared."""
    from rankly import _fast

    rows = sim[h]
    scores = np.asarray(rows.sum(axis=0), dtype=np.float32).ravel()
    scores[scores <= 0] = np.nan
    idx, _ = _fast.topk(scores, n, exclude=exclude)
    return h[np.argmax(rows[:, idx].toarray(), axis=0)]


@pytest.mark.benchmark(group="itemknn-generate")
@pytest.mark.parametrize("history", [3, 30, 100])
@pytest.mark.parametrize("who", ["ours", "scipy"])
def test_itemknn_generate(benchmark, ml100k, who, history):
    """The item-kNN candidate generator against scipy indexing, 300 candidates, over 64
    random histories of ``history`` items (cycled, so no input is timed twice in a row)."""
    from rankly.engine.types import UserFeatures
    from rankly.plugins.models import itemknn

    knn = itemknn.scorer(ml100k)
    rng = np.random.default_rng(3)
    users = []
    for _ in range(64):
        h = rng.choice(knn.n_items, size=history, replace=False).astype(np.int64)
        users.append(UserFeatures("b", -1, h, np.sort(h)))
    benchmark.group = f"itemknn-generate history={history}"
    benchmark.name = who
    cycle = itertools.cycle(users)
    if who == "ours":
        benchmark(lambda: knn.generate(next(cycle), 300))
    else:
        benchmark(lambda: (u := next(cycle), _scipy_knn_generate(knn.sim, u.history, 300,
                                                                  u.seen)))
    agree = [np.array_equal(knn.generate(u, 300).anchors,
                            _scipy_knn_generate(knn.sim, u.history, 300, u.seen))
             for u in users]
    benchmark.extra_info["same_anchors"] = f"{sum(agree)}/{len(agree)}"


def summarize(path: str) -> str:
    """The README table: median and P95-ish (max of rounds is noise; we print median/mean)."""
    data = json.loads(Path(path).read_text())
    rows = ["| group | benchmark | median ms | mean ms | extra |", "|---|---|---:|---:|---|"]
    for b in data["benchmarks"]:
        s = b["stats"]
        extra = {k: v for k, v in b.get("extra_info", {}).items()}
        rows.append(f"| {b['group']} | {b['name']} | {s['median'] * 1e3:.3f} | "
                    f"{s['mean'] * 1e3:.3f} | {json.dumps(extra)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/pipeline.json"))
