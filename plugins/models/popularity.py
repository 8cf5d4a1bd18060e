"""Popularity model: time-decayed interaction mass per item, overall and per category."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rankly import _fast
from rankly.engine.api import (
    Candidates,
    ComponentContext,
    ModelPart,
    Reason,
    TrainingData,
    UserFeatures,
    hookimpl,
)

NAME = "pop"


class PopularityTrainer:
    """Sum each item's interaction weights, decayed by age with an optional half-life.

    Options: ``half_life_days`` (float, default 0 = no decay), ``binary`` (count each
    user-item pair once instead of summing weights; default True).
    """

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        half_life = float(options.get("half_life_days", 0.0))
        binary = bool(options.get("binary", True))
        scores = decayed_popularity(data, half_life, binary)
        return ModelPart(
            name=NAME,
            params={"half_life_days": half_life, "binary": binary},
            arrays={"scores": scores},
        )


def decayed_popularity(data: TrainingData, half_life_days: float = 0.0,
                       binary: bool = True) -> np.ndarray:
    """Each item's interaction mass (``TrainingData.item_mass``, kept here by its old name)."""
    return data.item_mass(half_life_days, binary)


class PopularCandidates:
    """The most popular unseen items, optionally restricted to a category's items."""

    def __init__(self, scores: np.ndarray, categories: np.ndarray) -> None:
        self.scores = np.ascontiguousarray(scores, dtype=np.float32)
        self.categories = categories

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        idx, _ = _fast.topk(self.scores, n, exclude=user.seen)
        return Candidates.of(idx, Reason.POPULAR)


class PopularityScorer:
    """Score = log(1 + popularity), so popularity composes with other scorers in a blend."""

    def __init__(self, scores: np.ndarray) -> None:
        self.log_scores = np.log1p(np.maximum(np.asarray(scores, dtype=np.float32), 0))

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        return self.log_scores[items]


def _scores(ctx: ComponentContext) -> np.ndarray | None:
    part = ctx.model.part(NAME)
    return None if part is None else part["scores"]


@hookimpl
def register_trainers(register):
    register(NAME, PopularityTrainer(), options={"half_life_days": 0.0, "binary": True})


@hookimpl
def register_candidate_generators(register):
    def popular(ctx: ComponentContext):
        s = _scores(ctx)
        return None if s is None else PopularCandidates(s, ctx.model.catalog.categories)

    register("popular", popular, options=())


@hookimpl
def register_scorers(register):
    def popular(ctx: ComponentContext):
        s = _scores(ctx)
        return None if s is None else PopularityScorer(s)

    register("popular", popular, options=())
