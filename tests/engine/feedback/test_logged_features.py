"""`rankly train-ranker` on a log with point-in-time features: the values served, not recomputed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import cli
from rankly.engine.config import load_settings
from rankly.engine.feedback.ltr_features import FEATURES
from rankly.engine.feedback.ltr_training import (
    has_logged_features,
    item_stats,
    pool_plan,
    slate_rows,
)
from rankly.engine.feedback.slates import load_feedback
from rankly.engine.model import load_model
from rankly.engine.offline.batch import serving_runtime
from rankly.engine.offline.simulator import Simulator, drive
from rankly.engine.pipeline.served import ITEM_FIELDS, SLATE_FIELDS
from rankly.engine.serving.app import create_app


@pytest.fixture(scope="module")
def served(artifacts, tmp_path_factory):
    """60 simulated requests served (exploration 0.5 over the top 10, no cache tier) from a
    copy of the artifacts, which the tests then change as a retrain would."""
    root = tmp_path_factory.mktemp("point-in-time")
    art = root / "art"
    shutil.copytree(artifacts, art)
    settings = load_settings(environ={}, artifacts=art, data_dir=root / "log",
                             exploration={"rate": 0.5, "top_m": 10}, cache={"tiers": []})
    with TestClient(create_app(settings)) as client:
        drive(client, Simulator.for_model(load_model(art), seed=4), requests=60, n=10, seed=2)
    return art, root / "log" / "events" / "events.jsonl", settings


def _rows(art, settings, feedback, recompute: bool) -> list[np.ndarray]:
    model = load_model(art, mmap=False)
    rt = serving_runtime(model, settings)
    stats = item_stats(feedback.slates, len(model.catalog), model.catalog.index)
    out = []
    for s in feedback.slates:
        if recompute:
            s = dataclasses.replace(s, features=None)
        out.append(slate_rows(model, rt, pool_plan(rt), feedback, s, 100, stats))
    return out


def test_logged_features_equal_the_served_ones_and_survive_a_retrain(served):
    art, path, settings = served
    feedback = load_feedback(path)
    assert len(feedback.slates) == 60
    assert all(has_logged_features(s) for s in feedback.slates)
    logged = _rows(art, settings, feedback, recompute=False)
    # the model in DIR is still the one that served, without a cache tier: recomputing the
    # features reproduces the served ones, so the logged values are what serving had
    recomputed = _rows(art, settings, feedback, recompute=True)
    for a, b in zip(logged, recomputed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # a retrain changes the model's popularity; the logged rows keep the served value
    pop_file = art / "parts" / "pop" / "scores.npy"
    original = np.load(pop_file)
    try:
        np.save(pop_file, original * 3.0 + 7.0)
        after = _rows(art, settings, feedback, recompute=False)
        moved = _rows(art, settings, feedback, recompute=True)
    finally:
        np.save(pop_file, original)
    col = FEATURES.index("log_popularity")
    for a, b, c in zip(logged, after, moved, strict=True):
        np.testing.assert_array_equal(a, b)
        assert (c[:, col] > b[:, col]).all()


def test_train_ranker_uses_logged_features_and_recomputes_for_old_logs(served, tmp_path,
                                                                        capsys):
    pytest.importorskip("lightgbm")
    art, path, _ = served
    old = tmp_path / "old.jsonl"
    with open(path, encoding="utf-8") as src, open(old, "w", encoding="utf-8") as dst:
        for line in src:
            doc = json.loads(line)
            for name in (*ITEM_FIELDS, *SLATE_FIELDS):
                doc.get("c", {}).pop(name, None)
            dst.write(json.dumps(doc) + "\n")
    reports = []
    for log in (path, old):
        # half the slates validate: the simulated clicks depend on rankings that move with
        # the wall clock (decayed online popularity), and 6 validation slates could hold none
        assert cli.main(["train-ranker", "--events", str(log), "--artifacts", str(art),
                         "--dry-run", "--json", "--rounds", "5", "--valid-share", "0.5"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["logged_feature_slates"] for r in reports] == [60, 0]
    assert reports[0]["train_rows"] == reports[1]["train_rows"]


def test_export_events_keeps_the_logged_features(served, tmp_path):
    from rankly.engine.events import cli as events_cli

    _, path, settings = served
    out = tmp_path / "export.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        asyncio.run(events_cli.export(settings, fh, include_impressions=True, fmt="jsonl"))
    a, b = load_feedback(path), load_feedback(out)
    for x, y in zip(a.slates, b.slates, strict=True):
        assert np.array_equal(x.features, y.features, equal_nan=True)
        assert x.sources == y.sources
    assert [s.context["history_length"] for s in a.slates] == [
        s.context["history_length"] for s in b.slates]
    assert all(not np.isnan(s.features[:, :3]).any() for s in b.slates)  # rank, score, pop


def test_logged_feature_arrays_read_nulls_short_and_longer_lines():
    from rankly.engine.events.values import Event
    from rankly.engine.feedback.slates import join

    def imp(pos, features, **extra):
        return Event(f"imp:r:{pos}", "u", f"i{pos}", "impression", 1.0, None, "r",
                     {"position": pos, "history_length": 4, "features": features, **extra})

    slate = join([imp(0, [0, 1.5, 3.0, None, 0.0, 0.5, 1.0, 1]),
                  imp(1, [None, None, 2.0]),  # a backfilled item, from a shorter writer
                  imp(2, [2, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0, 9.9], sources={"a": 4})]).slates[0]
    nan = np.nan
    assert np.array_equal(slate.features, [[0, 1.5, 3.0, nan, 0.0, 0.5, 1.0, 1],
                                           [nan, nan, 2.0, nan, nan, nan, nan, nan],
                                           [2, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0]],
                          equal_nan=True)
    assert slate.sources == [{}, {}, {"a": 4}]
    assert slate.context["history_length"] == 4 and "features" not in slate.context


@pytest.mark.parametrize("logged", [False, True], ids=["recomputed", "logged"])
def test_an_item_the_catalog_no_longer_holds_borrows_no_other_items_features(
        artifacts, logged):
    # a log from before a retrain that dropped an item: its rows must not read the arrays
    # at index 0 (the first catalog item's popularity, category, click rate)
    from rankly.engine.feedback.slates import Feedback, Slate

    model = load_model(artifacts, mmap=False)
    rt = serving_runtime(model, load_settings(environ={}))
    first = model.catalog.id_list()[0]
    items = ["gone", first]
    context = {"history_length": 3} if logged else {}
    features = None
    if logged:  # rank, score, popularity, the rest unknown
        features = np.full((2, 8), np.nan)
        features[:, :3] = [[np.nan, np.nan, np.nan], [4.0, 1.5, 30.0]]
    clicked = Slate("r0", "1", 1.0, [first, "x"], np.ones(2), np.arange(2), {},
                    np.array([True, False]), np.zeros(2, dtype=bool))
    slate = Slate("r1", "1", 2.0, items, np.ones(2), np.arange(2), context,
                  np.zeros(2, dtype=bool), np.zeros(2, dtype=bool), features)
    missed = Slate("r2", "1", 1.5, ["x", first], np.ones(2), np.arange(2), {},
                   np.zeros(2, dtype=bool), np.zeros(2, dtype=bool))
    feedback = Feedback([clicked, missed, slate], {})
    stats = item_stats([clicked, missed] * 5, len(model.catalog), model.catalog.index)
    assert stats[0][0] != 1.0 and stats[1][0] == 10  # the first item has a record
    rows = slate_rows(model, rt, pool_plan(rt), feedback, slate, 100, stats)
    gone = dict(zip(FEATURES, rows[0].tolist(), strict=True))
    assert gone["rank"] == 100  # outside the pool
    assert gone["log_popularity"] == 0.0
    assert gone["item_ctr"] == 1.0 and gone["log_item_impressions"] == 0.0
    assert gone["category_affinity"] == gone["category_recency"] == 0.0
    assert gone["same_category_as_last"] == 0.0
