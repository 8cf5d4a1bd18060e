"""EASE: the closed-form item-item linear model (Steck, WWW 2019) for catalogs up to ~20k items.

Part ``ease`` holds ``items`` (int64: the catalog indices that had training interactions) and
``weights`` (float32 [len(items), len(items)], zero diagonal). Items without interactions get
no weights (their rows of the Gram matrix are only lambda), so they score 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rankly import _fast
from rankly.engine import hookimpl
from rankly.engine.interactions import TrainingData
from rankly.engine.model import Model
from rankly.engine.types import Candidates, ComponentContext, ModelPart, Reason, UserFeatures
from rankly.plugins.models.itemknn import binary_matrix

NAME = "ease"
MAX_ITEMS = 25_000


class EaseTrainer:
    """Options: ``lambda`` (L2 strength, default 500), ``max_items`` (refuse above; 25k)."""

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        lam = float(options.get("lambda", 500.0))
        limit = int(options.get("max_items", MAX_ITEMS))
        x = binary_matrix(data)
        active = np.flatnonzero(np.diff(x.tocsc().indptr)).astype(np.int64)
        if active.size > limit:
            raise ValueError(
                f"ease: {active.size} items exceed max_items={limit} (a dense "
                f"{active.size}x{active.size} inverse); use itemknn/als or raise the limit"
            )
        xa = x[:, active]
        gram = (xa.T @ xa).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += lam
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        return ModelPart(
            name=NAME, params={"lambda": lam},
            arrays={"items": active, "weights": b.astype(np.float32)},
            metrics={"n_active_items": int(active.size)},
        )


class EaseScorer:
    """Score = sum of the weight rows of the user's history items; also a FOR_YOU generator."""

    def __init__(self, items: np.ndarray, weights: np.ndarray, n_items: int) -> None:
        self.items = np.asarray(items, dtype=np.int64)
        self.weights = weights
        self.n_items = n_items
        self.pos = np.full(n_items, -1, dtype=np.int64)
        self.pos[self.items] = np.arange(self.items.size)

    @classmethod
    def from_model(cls, model: Model) -> EaseScorer | None:
        part = model.part(NAME)
        return None if part is None else cls(part["items"], part["weights"], len(model.catalog))

    def full_scores(self, history: np.ndarray) -> np.ndarray:
        """Return float32 scores over the whole catalog for item indices ``history``."""
        h = np.asarray(history, dtype=np.int64)
        rows = self.pos[h[(h >= 0) & (h < self.n_items)]]
        rows = np.unique(rows[rows >= 0])
        out = np.zeros(self.n_items, dtype=np.float32)
        if rows.size:
            out[self.items] = np.asarray(self.weights[rows], dtype=np.float32).sum(axis=0)
        return out

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        return self.full_scores(user.history)[np.asarray(items, dtype=np.int64)]

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        if user.history.size == 0:
            return Candidates.empty()
        s = self.full_scores(user.history)
        idx, _ = _fast.topk(s, n, exclude=user.seen)
        return Candidates.of(idx, Reason.FOR_YOU)


def _factory(ctx: ComponentContext) -> EaseScorer | None:
    return EaseScorer.from_model(ctx.model)


@hookimpl
def register_trainers(register):
    register(NAME, EaseTrainer())


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory)


@hookimpl
def register_scorers(register):
    register(NAME, _factory)
