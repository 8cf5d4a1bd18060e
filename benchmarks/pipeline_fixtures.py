"""Artifacts, runtimes and request mixes shared by the pipeline and load benchmarks.

Artifacts are written once under ``$RANKLY_BENCH_DIR`` (default ``.rankly/bench`` in the
checkout) and reused:
``ml100k`` is the default models trained on MovieLens 100K (or, when the dataset is absent, a
synthetic shop of the same size); ``synth1m`` is a 1M-item catalog with d = 64 ALS factors
generated directly (a mixture of Gaussian "topics", as trained factors are clustered), a
popularity part and the ``als-ivf`` index.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rankly.engine.config import PipelineSettings, Settings, load_settings
from rankly.engine.model import Catalog, Model, UserTable, fingerprint, load_model, save_model
from rankly.engine.runtime import Runtime, build_runtime
from rankly.engine.types import ModelPart

ML100K = Path("/work/shared/datasets/ml-100k")
BENCH_DIR = Path(os.environ.get("RANKLY_BENCH_DIR",
                                Path(__file__).resolve().parents[1] / ".rankly" / "bench"))
MODELS = ("pop", "itemknn", "ease", "als", "blend")
#: Component name -> (candidate generators, scorers) that make it the request's scorer.
SCORER_PLANS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pop": (("popular",), ("popular",)),
    "itemknn": (("itemknn", "popular"), ("itemknn", "popular")),
    "ease": (("ease", "popular"), ("ease", "popular")),
    "als": (("als", "popular"), ("als", "popular")),
    # the served default (engine/config.py PipelineSettings): the blend scores the catalog
    # in one fused step
    "default": (PipelineSettings().candidates, PipelineSettings().scorers),
    # the same components through the general chain (the blend is not the first generator,
    # so the pipeline generates, merges, filters and scores): what the fused path replaces
    "default-chain": (tuple(reversed(PipelineSettings().candidates)),
                      PipelineSettings().scorers),
}
SYNTH_ITEMS = 1_000_000
SYNTH_USERS = 20_000
SYNTH_DIM = 64


def ml100k_artifacts(root: Path = BENCH_DIR) -> Path:
    """Train the default models and ALS on MovieLens 100K (synthetic stand-in if absent),
    once."""
    out = root / ("ml100k-v2" if ML100K.exists() else "ml100k-synthetic-v2")
    if (out / "manifest.json").exists():
        return out
    from rankly.engine.offline import datasets
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.offline.training import DEFAULT_TRAINERS, train

    if ML100K.exists():
        ds = datasets.load_movielens_100k(ML100K / "u.data")
        interactions, items = ds.interactions, ds.items
    else:  # same shape as ML-100K: 943 users, 1682 items, ~100 events per user
        interactions, items = synthesize(n_users=943, n_items=1682, mean_events=106, seed=1)
    data = build_training_data(interactions, items)
    parts = train(data, (*DEFAULT_TRAINERS, "als"), load_settings(environ={}),
                  progress=sys.stderr)
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx, data.weights),
               info={"source": str(ML100K) if ML100K.exists() else "synthetic ml-100k size"})
    return out


def synthetic_factors(n: int, d: int, seed: int, topics: int = 512,
                      spread: float = 0.5) -> np.ndarray:
    """float32 [n, d] rows drawn around ``topics`` random centres (as trained factors cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d)).astype(np.float32) / np.sqrt(d)
    which = rng.integers(0, topics, n)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 262_144):
        hi = min(n, lo + 262_144)
        noise = rng.normal(scale=spread / np.sqrt(d), size=(hi - lo, d)).astype(np.float32)
        out[lo:hi] = centres[which[lo:hi]] + noise
    return out


def synth1m_artifacts(root: Path = BENCH_DIR, n_items: int = SYNTH_ITEMS,
                      n_users: int = SYNTH_USERS, d: int = SYNTH_DIM) -> Path:
    """Write the synthetic 1M-item catalog (ALS d=64 + pop + als-ivf index), once."""
    out = root / f"synth{n_items // 1000}k-d{d}"
    if (out / "manifest.json").exists():
        return out
    from rankly.plugins.models import als_ivf

    started = time.perf_counter()
    rng = np.random.default_rng(7)
    # items and users share the topic centres (seed 11), so users have clear tastes
    both = synthetic_factors(n_items + n_users, d, seed=11)
    items, users = both[:n_items], both[n_items:] * 4.0
    cats = rng.integers(0, 20, n_items).astype(np.int32)
    catalog = Catalog(
        item_ids=np.char.add("i", np.arange(n_items).astype(str)),
        titles=np.char.add("Item ", np.arange(n_items).astype(str)),
        categories=cats, category_names=tuple(f"cat{c}" for c in range(20)),
        cat_indptr=np.arange(n_items + 1, dtype=np.int64), cat_indices=cats,
    )
    lengths = rng.integers(5, 60, n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    table = UserTable(user_ids=np.char.add("u", np.arange(n_users).astype(str)),
                      history_indptr=indptr,
                      history_items=rng.integers(0, n_items, int(indptr[-1])).astype(np.int64))
    pop = (1e6 / (1.0 + rng.permutation(n_items))).astype(np.float32)
    parts = [
        ModelPart("pop", {"binary": True}, {"scores": pop}),
        ModelPart("als", {"factors": d, "regularization": 0.05, "alpha": 2.0},
                  {"user_factors": users, "item_factors": items}),
        als_ivf.build_index(items),
    ]
    save_model(out, catalog, table, parts, data_fingerprint=f"synthetic-{n_items}-{d}",
               info={"source": "benchmarks/pipeline_fixtures.py synthetic"})
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return out


def settings_for(artifacts: Path, **overrides: Any) -> Settings:
    """Settings that ignore the environment (benchmarks must not pick up a developer's RANKLY_*)."""
    return load_settings(environ={}, artifacts=artifacts, **overrides)


def runtime_for(model: Model, settings: Settings) -> Runtime:
    return build_runtime(settings, model)


def load(path: Path) -> Model:
    return load_model(path)


def warm_users(model: Model, count: int, seed: int = 0) -> list[str]:
    """Known user ids, drawn uniformly (with replacement when ``count`` > users)."""
    ids = model.users.user_ids
    rng = np.random.default_rng(seed)
    return [str(ids[i]) for i in rng.integers(0, ids.size, count)]
