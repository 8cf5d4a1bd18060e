"""The example scorer on a catalog without categories (a ratings file with no item table)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from rankly.engine.api import UserFeatures

MODULE = (Path(__file__).resolve().parents[2] / "examples" / "rankly-category-affinity"
          / "rankly_category_affinity" / "__init__.py")


def example():
    spec = importlib.util.spec_from_file_location("category_affinity_source", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user(history):
    history = np.asarray(history, dtype=np.int64)
    return UserFeatures("u", 0, history, np.unique(history))


def test_it_scores_zero_on_a_catalog_without_categories():
    scorer = example().CategoryAffinityScorer(np.full(5, -1, dtype=np.int32))
    scores = scorer.score(user([0, 3]), np.arange(5, dtype=np.int64))
    assert scores.dtype == np.float32 and scores.tolist() == [0.0] * 5


def test_items_without_a_category_score_zero_next_to_the_share_of_the_others():
    scorer = example().CategoryAffinityScorer(np.array([0, 0, 1, -1], dtype=np.int32))
    scores = scorer.score(user([0, 1, 2, 3]), np.array([3, 2, 0], dtype=np.int64))
    assert scores.tolist() == [0.0, np.float32(1 / 3), np.float32(2 / 3)]
