"""Metric functions against hand-computed values, the splits, and the evaluation loop."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from rankly.engine import datasets, evaluation
from rankly.engine.interactions import Interactions, build_training_data
from rankly.engine.plugins import make_plugin_manager
from rankly.plugins.models import als, ease, itemknn, popularity
from rankly.plugins.scorers import blend

SHARED = Path(os.environ.get("RANKLY_DATASETS")
              or Path(__file__).resolve().parents[2] / "../shared/datasets").resolve()
PLUGINS = (popularity, itemknn, ease, als, blend)


def test_ndcg_by_hand():
    # hit at rank 2 of 3; ideal has both relevant items at ranks 1-2
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert evaluation.ndcg_at_k([1, 2, 3, 4], {2, 4}, 3) == pytest.approx(expected)
    assert evaluation.ndcg_at_k([2, 4], {2, 4}, 10) == pytest.approx(1.0)
    assert evaluation.ndcg_at_k([1], set(), 10) == 0.0


def test_recall_and_hit_rate_by_hand():
    assert evaluation.recall_at_k([1, 2, 3, 4], {2, 4}, 3) == 0.5
    assert evaluation.hit_rate_at_k([1, 2, 3], {3}, 2) == 0.0
    assert evaluation.hit_rate_at_k([1, 2, 3], {3}, 3) == 1.0


def test_average_precision_by_hand():
    # hits at ranks 1 and 3: (1/1 + 2/3) / min(5, 3)
    assert evaluation.average_precision_at_k([7, 8, 9], {7, 9, 11}, 5) == pytest.approx(
        (1 + 2 / 3) / 3)
    assert evaluation.average_precision_at_k([1, 2, 3, 4], {2, 4}, 3) == pytest.approx(0.25)


def test_intra_list_diversity_by_hand():
    assert evaluation.intra_list_diversity([0, 0, 1]) == pytest.approx(2 / 3)
    assert evaluation.intra_list_diversity([0, 1, 2]) == 1.0
    assert evaluation.intra_list_diversity([-1, -1]) == 1.0  # uncategorized never equal
    assert evaluation.intra_list_diversity([3]) == 0.0


def test_novelty_coverage_and_cap_compliance_by_hand():
    pop = np.array([10, 1, 5])
    assert evaluation.novelty([0, 1], pop, 10) == pytest.approx(math.log2(10) / 2)
    assert evaluation.coverage([[0, 1], [1, 2]], 10) == pytest.approx(0.3)
    assert evaluation.cap_compliance([0, 0, 1, -1, -1, -1], 2)
    assert not evaluation.cap_compliance([0, 0, 0], 2)


def _events(rows):
    u, i, t = zip(*rows, strict=True)
    return Interactions(np.array(u, dtype=str), np.array(i, dtype=str),
                        np.ones(len(rows), np.float32), np.array(t, dtype=np.int64))


def test_user_last_split_holds_out_the_last_fifth_by_time_then_item():
    rows = [("a", f"i{n}", 100 - n) for n in range(10)] + [("b", "x", 5), ("b", "y", 5)]
    rows += [("c", "only", 1)]
    train, test = evaluation.split_user_last(_events(rows))
    held = sorted(zip(test.user_ids.tolist(), test.item_ids.tolist()))
    # a: the two earliest-indexed items are the latest in time; b: tie on ts, later item id
    assert held == [("a", "i0"), ("a", "i1"), ("b", "y")]
    assert "c" in train.user_ids.tolist()


def test_temporal_split_cuts_at_the_quantile():
    rows = [("a", f"i{n}", n) for n in range(10)]
    train, test = evaluation.split_temporal(_events(rows), 0.8)
    assert train.timestamps.max() < test.timestamps.min()
    assert len(test) == 3  # quantile 0.8 of 0..9 ("lower") is 7


def test_targets_exclude_seen_and_keep_cold_items():
    train = _events([("a", "x", 1), ("a", "y", 2)])
    test = _events([("a", "x", 3), ("a", "z", 4), ("a", "new", 5), ("b", "y", 6)])
    data = build_training_data(train)
    targets = evaluation.test_targets(data, test, exclude_seen=True)
    assert targets["b"].tolist() == [data.catalog.index["y"]]
    # "x" was seen in train; "z" and "new" are cold items, distinct and never recommendable
    assert sorted(targets["a"].tolist()) == [-3, -2]


def _synthetic(n_users=60, n_items=40, seed=0):
    """Two taste clusters; each user mostly touches items of their cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pool = np.arange(n_items // 2) + (n_items // 2) * (u % 2)
        for t, i in enumerate(rng.choice(pool, 12, replace=False)):
            rows.append((f"u{u}", f"m{i}", 1000 * t + u))
    return datasets.Dataset(_events(rows), None, (), "events-csv")


def test_evaluate_reports_every_metric_for_each_model():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    report = evaluation.evaluate(_synthetic(), "user-last", ["pop", "itemknn", "ease", "blend"],
                                 k=5, diversity_cap=2, pm=pm)
    names = [r["model"] for r in report["results"]]
    assert names == ["pop", "pop+cap", "itemknn", "itemknn+cap", "ease", "ease+cap",
                     "blend", "blend+cap"]
    warm = {r["model"]: r["warm"] for r in report["results"]}
    assert set(warm["ease"]) >= {"ndcg", "recall", "hr", "map", "coverage", "ild", "novelty"}
    assert warm["ease"]["ndcg"] > warm["pop"]["ndcg"]
    json.dumps(report)
    assert "| ease (warm) |" in evaluation.format_table(report)


def test_recommend_writes_one_json_line_per_user():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    ds = _synthetic()
    data = build_training_data(ds.interactions)
    settings = evaluation.Settings()
    parts = evaluation.train_parts(data, [("pop", {}), ("itemknn", {}), ("als", {}),
                                          ("ease", {})], pm, settings)
    model = evaluation.in_memory_model(data, parts)
    out = io.StringIO()
    settings = settings.replace(pipeline=settings.pipeline.__class__(
        candidates=("itemknn", "als", "popular"), scorers=("blend", "als", "popular")))
    assert evaluation.recommend(model, ["u1", "stranger"], 4, settings, pm=pm, out=out) == 2
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["user_id"] for x in lines] == ["u1", "stranger"]
    assert all(len(x["items"]) == 4 == len(x["scores"]) for x in lines)
    seen = set(data.catalog.item_ids[data.users.history(data.users.row("u1"))].tolist())
    assert not seen & set(lines[0]["items"])


@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").exists(),
                    reason=f"licensed MovieLens 100K not present under {SHARED}")
def test_popularity_matches_the_published_sanity_numbers_on_ml100k():
    pm = make_plugin_manager(load_entrypoints=False, extra=PLUGINS)
    report = evaluation.evaluate(datasets.load(SHARED / "ml-100k"), "temporal", ["pop"], pm=pm)
    warm = report["results"][0]["warm"]
    assert warm["users"] == 109
    assert warm["ndcg"] == pytest.approx(0.145, abs=0.002)
    assert warm["recall"] == pytest.approx(0.063, abs=0.002)
    assert warm["hr"] == pytest.approx(0.505, abs=0.002)
