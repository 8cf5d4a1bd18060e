"""Batch jobs on Ray: the same output as the local engine, block by block over Ray workers."""

from __future__ import annotations

import builtins
import io
import json
from importlib.util import find_spec

import pytest

from rankly.engine.cli import main
from rankly.engine.config import load_settings
from rankly.engine.model import fingerprint, load_model, save_model
from rankly.engine.offline import datasets, evaluation
from rankly.engine.offline.demo import synthesize
from rankly.engine.offline.interactions import build_training_data
from rankly.engine.plugins import collect_all, make_plugin_manager

needs_ray = pytest.mark.skipif(find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'rankly[ray]')")

CONFIG = """
[pipeline]
candidates = ["itemknn", "popular"]
scorers = ["itemknn", "popular"]
rerankers = ["diversity"]
"""


@pytest.fixture(scope="module")
def ray_engine():
    """One bounded local Ray (2 CPUs, 200 MB object store) for the module's tests; the
    commands find it initialized and use it instead of starting their own."""
    from rankly.engine.offline.batch_ray import RayEngine

    with RayEngine.start(workers=2, block_users=1000) as engine:
        yield engine


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A synthetic shop of 10,000 users and 1,000 items, a pop + item-kNN model, a config
    that serves it (with the diversity reranker)."""
    root = tmp_path_factory.mktemp("ray-shop")
    interactions, items = synthesize(n_users=10_000, n_items=1000, mean_events=15, seed=11)
    data = build_training_data(interactions, items)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    parts = [trainers[name].fit(data, {}) for name in ("pop", "itemknn")]
    artifacts = save_model(root / "model", data.catalog, data.users, parts, version="v1",
                           data_fingerprint=fingerprint(data.users.history_items))
    config = root / "rankly.toml"
    config.write_text(CONFIG)
    return artifacts, config


@pytest.mark.slow
@needs_ray
def test_recommend_all_on_ray_writes_the_local_engines_bytes(ray_engine, shop, capsys):
    artifacts, config = shop
    model = load_model(artifacts)
    users = [str(u) for u in model.users.user_ids.tolist()]
    local = io.StringIO()
    evaluation.recommend(model, users, 10, load_settings(config, environ={}), out=local)
    assert main(["recommend", "--artifacts", str(artifacts), "--all", "--config", str(config),
                 "--quiet", "--engine", "ray"]) == 0
    captured = capsys.readouterr()
    assert len(users) == 10_000 and captured.out.count("\n") == 10_000
    assert captured.out == local.getvalue()
    assert "10000 users written" in captured.err
    first = json.loads(captured.out.splitlines()[0])
    assert first["user_id"] == users[0] and len(first["items"]) == 10


@pytest.mark.slow
@needs_ray
def test_evaluate_on_ray_reports_the_local_metrics(ray_engine):
    interactions, items = synthesize(n_users=600, n_items=300, mean_events=20, seed=5)
    ds = datasets.Dataset(interactions, items, (), "synthetic")
    models = ["pop", "itemknn", "ease"]

    def report(engine):
        out = evaluation.evaluate(ds, "user-last", models, k=10, diversity_cap=3,
                                  settings=load_settings(environ={}), engine=engine)
        for row in out["results"]:
            row.pop("train_seconds")
        return out

    ray_engine.block_users = 100  # several blocks per setup: their order must hold
    try:
        assert report(ray_engine) == report(None)
    finally:
        ray_engine.block_users = 1000


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["recommend", "--artifacts", str(_tiny_model(tmp_path)), "--all",
                 "--engine", "ray"])
    assert code == 2
    assert "pip install 'rankly[ray]'" in capsys.readouterr().err


def _tiny_model(root):
    interactions, items = synthesize(n_users=20, n_items=30, seed=1)
    data = build_training_data(interactions, items)
    trainers = collect_all(make_plugin_manager())["trainers"].entries
    return save_model(root / "tiny", data.catalog, data.users, [trainers["pop"].fit(data, {})],
                      data_fingerprint="tiny")
