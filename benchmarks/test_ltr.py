"""Benchmarks of the learned ranker (issue 19): reranking 300 candidates in process.

    OPENBLAS_NUM_THREADS=1 pytest benchmarks/test_ltr.py \
        --benchmark-json benchmarks/results/ltr.json

``rerank-300`` is the ``ltr`` reranker's whole call (the 12 features of
engine/feedback/ltr_features.py for 300 candidates, one LightGBM prediction on one thread, the
reordering) with a model of the size ``rankly train-ranker`` fits (100 rounds, 15 leaves).
``predict-300x30`` is the prediction alone on 30 features, the issue's shape. The target is
a P95 of at most 1 ms for both; each test records its P95 in ``extra_info``.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

lightgbm = pytest.importorskip("lightgbm")

from rankly.engine.api import Ranking, UserFeatures  # noqa: E402
from rankly.engine.feedback.ltr_features import FEATURES  # noqa: E402
from rankly.engine.feedback.ltr_training import DEFAULT_PARAMS  # noqa: E402

N_CANDIDATES = 300
N_ITEMS = 20_000


def booster(n_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30_000, n_features)).astype(np.float32)
    y = (rng.random(30_000) < 0.1 + 0.05 * (x[:, 0] > 0)).astype(int)
    return lightgbm.train(DEFAULT_PARAMS, lightgbm.Dataset(x, y, group=[10] * 3000),
                          num_boost_round=100)


def p95_ms(fn, rounds: int = 2000) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 95) * 1e3)


@pytest.fixture(scope="module")
def reranker():
    from types import SimpleNamespace

    from rankly.plugins.rerankers.ltr import LtrReranker

    rng = np.random.default_rng(1)
    catalog = SimpleNamespace(categories=rng.integers(0, 20, N_ITEMS).astype(np.int32))
    parts = {"ltr": {"item_ctr": rng.random(N_ITEMS).astype(np.float32),
                     "item_impressions": rng.integers(0, 500, N_ITEMS).astype(np.float32)},
             "pop": {"scores": rng.random(N_ITEMS).astype(np.float32)}}
    model = SimpleNamespace(catalog=catalog, part=parts.get)
    return LtrReranker(model, booster(len(FEATURES)), top=N_CANDIDATES)


def test_rerank_300(benchmark, reranker):
    rng = np.random.default_rng(2)
    items = rng.choice(N_ITEMS, N_CANDIDATES, replace=False).astype(np.int64)
    ranking = Ranking(items, np.sort(rng.random(N_CANDIDATES).astype(np.float32))[::-1].copy(),
                      np.zeros(N_CANDIDATES, np.int8), np.full(N_CANDIDATES, -1, np.int64))
    history = rng.choice(N_ITEMS, 60, replace=False).astype(np.int64)
    user = UserFeatures("u", 0, history, np.sort(history))
    out = benchmark(reranker.rerank, user, ranking, 10)
    assert len(out) == 10
    benchmark.extra_info["p95_ms"] = p95_ms(lambda: reranker.rerank(user, ranking, 10))


def test_predict_300x30(benchmark):
    b = booster(30)
    x = np.random.default_rng(3).normal(size=(N_CANDIDATES, 30)).astype(np.float32)
    benchmark(b.predict, x, num_threads=1)
    benchmark.extra_info["p95_ms"] = p95_ms(lambda: b.predict(x, num_threads=1))


@pytest.fixture(scope="module")
def ranked_shop(tmp_path_factory):
    """The demo shop's default model with an `ltr` part trained on 1,000 simulated requests."""
    from starlette.testclient import TestClient

    from rankly.engine.config import load_settings
    from rankly.engine.feedback import ltr_training
    from rankly.engine.model import fingerprint, load_model, save_model
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.offline.simulator import Simulator, drive
    from rankly.engine.offline.training import DEFAULT_TRAINERS, train
    from rankly.engine.serving.app import create_app

    root = tmp_path_factory.mktemp("ltr-shop")
    interactions, items = synthesize(n_users=1000, n_items=1200, seed=7)
    data = build_training_data(interactions, items)
    parts = train(data, DEFAULT_TRAINERS, load_settings(environ={}))
    art = save_model(root / "model", data.catalog, data.users, parts,
                     data_fingerprint=fingerprint(data.user_idx, data.item_idx))
    settings = load_settings(environ={}, artifacts=art, data_dir=root / "log",
                             exploration={"rate": 0.5}, cache={"tiers": []})
    with TestClient(create_app(settings)) as client:
        drive(client, Simulator.for_model(load_model(art), seed=11), 1000, n=10, seed=1)
    ltr_training.train_ranker(root / "log" / "events" / "events.jsonl", art,
                              load_settings(environ={}))
    return load_model(art)


def test_uncached_selection_with_and_without_ltr(benchmark, ranked_shop):
    """The miss path's CPU stage (`pipeline.select`, n = 10) for every user, default
    pipeline vs `rerankers = ["ltr", "diversity"]`; extra_info has both P50/P99 and the
    P99 difference (issue 19: at most 1 ms)."""
    from rankly.engine import pipeline
    from rankly.engine.config import load_settings
    from rankly.engine.offline.batch import serving_runtime
    from rankly.engine.types import RecommendationRequest

    model = ranked_shop
    users = []
    for row in range(len(model.users)):
        h = model.users.history(row)
        users.append(UserFeatures(str(model.users.user_ids[row]), row, h, np.sort(h)))
    times = {}
    for name, rerankers in (("default", ("diversity",)), ("ltr", ("ltr", "diversity"))):
        rt = serving_runtime(model, load_settings(environ={},
                                                  pipeline={"rerankers": list(rerankers)}))
        plan = pipeline.default_plan(rt)
        assert "ltr" in rt.components.rerankers and plan.rerankers == rerankers

        def one(user, rt=rt, plan=plan):
            req = RecommendationRequest(user_id=user.user_id, n=10)
            return pipeline.select(rt, rt.components, req, plan, user, pipeline.Trace())

        for user in users[:50]:  # warm up
            one(user)
        samples = []
        for _ in range(3):
            for user in users:
                t = time.perf_counter()
                one(user)
                samples.append(time.perf_counter() - t)
        times[name] = samples
        if name == "ltr":
            cycle = itertools.cycle(users)
            benchmark(lambda one=one, cycle=cycle: one(next(cycle)))
    for name, samples in times.items():
        benchmark.extra_info[f"{name}_p50_ms"] = float(np.percentile(samples, 50) * 1e3)
        benchmark.extra_info[f"{name}_p99_ms"] = float(np.percentile(samples, 99) * 1e3)
    benchmark.extra_info["p99_delta_ms"] = (benchmark.extra_info["ltr_p99_ms"]
                                            - benchmark.extra_info["default_p99_ms"])
