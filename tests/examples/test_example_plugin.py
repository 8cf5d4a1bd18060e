"""The example third-party scorer package: installed with pip, discovered, selected by config."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankly.engine import pipeline
from rankly.engine.config import load_settings
from rankly.engine.runtime import build_runtime
from rankly.engine.types import RecommendationRequest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rankly-category-affinity"


@pytest.fixture(scope="module")
def installed_example():
    """pip-install the example package into this environment (no deps: rankly is installed)."""
    try:
        md.distribution("rankly-category-affinity")
    except md.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(EXAMPLE)],
                       check=True, timeout=300)
        importlib.invalidate_caches()
    dist = md.distribution("rankly-category-affinity")
    assert any(ep.group == "rankly" for ep in dist.entry_points)
    return dist


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rankly.engine.model import fingerprint, load_model, save_model
    from rankly.engine.offline.demo import synthesize
    from rankly.engine.offline.interactions import build_training_data
    from rankly.engine.offline.training import train

    interactions, items = synthesize(n_users=200, n_items=300, seed=11)
    data = build_training_data(interactions, items)
    parts = train(data, ("pop", "itemknn"), load_settings(environ={}))
    out = tmp_path_factory.mktemp("art")
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx))
    return load_model(out)


def test_example_plugin_is_discovered(installed_example):
    out = subprocess.run([sys.executable, "-m", "rankly.engine.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    rows = {r["name"]: r for r in __import__("json").loads(out.stdout)}
    assert rows["category_affinity"]["components"] == {"scorers": ["category-affinity"]}
    assert rows["category_affinity"]["distribution"] == "rankly-category-affinity 1.0.0"


def test_example_scorer_selected_by_config_decides_the_ranking(installed_example, trained):
    settings = load_settings(environ={"RANKLY_PIPELINE__SCORERS": "category-affinity,popular",
                                      "RANKLY_PIPELINE__RERANKERS": ""})
    rt = build_runtime(settings, trained)
    assert "category-affinity" in rt.components.scorers
    user = "1"
    req = RecommendationRequest(user_id=user, n=10, request_id="t")
    resp = asyncio.run(pipeline.rank(rt, req, pipeline.default_plan(rt)))
    assert resp["fallback"] is None
    cats = trained.catalog.categories
    hist = trained.users.history(trained.users.row(user))
    share = np.bincount(cats[hist], minlength=cats.max() + 1) / hist.size
    got = [share[cats[trained.catalog.index[it["item_id"]]]] for it in resp["items"]]
    assert got == sorted(got, reverse=True)
    assert [it["score"] for it in resp["items"]] == pytest.approx(got, abs=1e-6)
    popular_plan = pipeline.Plan(rt.settings.pipeline.candidates, ("popular",), ())
    popular = asyncio.run(pipeline.rank(rt, req, popular_plan))
    assert [i["item_id"] for i in popular["items"]] != [i["item_id"] for i in resp["items"]]


def test_the_example_tests_itself_with_the_kit(installed_example):
    # -p no:rankly: the kit may also be installed as the `rankly` pytest11 entry point
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:rankly", "-p", "rankly.engine.testing.pytest_plugin"],
                         cwd=EXAMPLE, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout
    assert "category-affinity" in out.stdout and "built-in popular" in out.stdout
