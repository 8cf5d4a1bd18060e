"""Implicit-feedback matrix factorization (ALS, Hu/Koren/Volinsky 2008).

Training uses the `implicit` library when importable (``pip install 'rankly[als]'``) and a
compact NumPy ALS otherwise. Part ``als`` holds ``user_factors`` (float32 [U, d]) and
``item_factors`` (float32 [N, d]); serving needs nothing else and ranks with
``rankly._fast.score_topk``. Users unknown at training time are folded in from their history
by one least-squares solve against the item factors.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from rankly.engine.api import (
    ComponentContext,
    ModelPart,
    TrainingData,
    hookimpl,
)
from rankly.plugins.models.factors import (  # noqa: F401 (the scoring side, re-exported)
    ALSScorer,
    split_score_topk,
)

NAME = "als"
#: Tuned on a validation split of ML-100K's train part (see docs/evaluation.md).
DEFAULTS: Mapping[str, Any] = {
    "factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15, "seed": 0,
}


def _implicit_available() -> bool:
    try:
        import implicit.cpu.als  # noqa: F401
    except ImportError:
        return False
    return True


def fit_implicit(x: sp.csr_matrix, factors: int, regularization: float, alpha: float,
                 iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit with ``implicit.cpu.als.AlternatingLeastSquares``; return (user, item) factors."""
    from implicit.cpu.als import AlternatingLeastSquares

    def fit() -> Any:
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            random_state=seed, calculate_training_loss=False,
        )
        model.fit(x, show_progress=False)
        return model

    try:  # implicit is slow (and warns) when BLAS runs its own thread pool inside its loops
        from threadpoolctl import threadpool_limits
    except ImportError:
        model = fit()
    else:
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model = fit()
    return (np.asarray(model.user_factors, dtype=np.float32),
            np.asarray(model.item_factors, dtype=np.float32))


def _solve_side(x: sp.csr_matrix, other: np.ndarray, reg: float, alpha: float) -> np.ndarray:
    """One ALS half-step: the least-squares factors of every row of ``x`` given ``other``."""
    d = other.shape[1]
    gram = other.T @ other + reg * np.eye(d)
    out = np.zeros((x.shape[0], d))
    for r in range(x.shape[0]):
        lo, hi = x.indptr[r], x.indptr[r + 1]
        if lo == hi:
            continue
        y = other[x.indices[lo:hi]]
        conf = alpha * x.data[lo:hi]  # confidence - 1
        a = gram + (y.T * conf) @ y
        out[r] = np.linalg.solve(a, y.T @ (1.0 + conf))
    return out


def fit_numpy(x: sp.csr_matrix, factors: int, regularization: float, alpha: float,
              iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit implicit ALS with exact per-row solves (O(nnz d^2 + rows d^3) per iteration)."""
    rng = np.random.default_rng(seed)
    users = rng.normal(0, 0.01, (x.shape[0], factors))
    items = rng.normal(0, 0.01, (x.shape[1], factors))
    xt = x.T.tocsr()
    for _ in range(iterations):
        users = _solve_side(x, items, regularization, alpha)
        items = _solve_side(xt, users, regularization, alpha)
    return users.astype(np.float32), items.astype(np.float32)


class ALSTrainer:
    """Options: ``factors``, ``regularization``, ``alpha``, ``iterations``, ``seed`` (see
    :data:`DEFAULTS`), ``backend`` ("auto" | "implicit" | "numpy").
    """

    def __init__(self, defaults: Mapping[str, Any] = DEFAULTS) -> None:
        self.defaults = defaults

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        p = {k: options.get(k, v) for k, v in self.defaults.items()}
        p = {"factors": int(p["factors"]), "regularization": float(p["regularization"]),
             "alpha": float(p["alpha"]), "iterations": int(p["iterations"]),
             "seed": int(p["seed"])}
        backend = str(options.get("backend", "auto"))
        if backend == "auto":
            backend = "implicit" if _implicit_available() else "numpy"
        fit = fit_implicit if backend == "implicit" else fit_numpy
        users, items = fit(data.binary_matrix(), **p)
        return ModelPart(name=NAME, params={**p, "backend": backend},
                         arrays={"user_factors": users, "item_factors": items})


def _factory(ctx: ComponentContext) -> ALSScorer | None:
    return ALSScorer.from_model(ctx.model, NAME)


@hookimpl
def register_trainers(register):
    register(NAME, ALSTrainer(), options={**DEFAULTS, "backend": "auto"})


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options={**DEFAULTS, "backend": "auto"})


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options={**DEFAULTS, "backend": "auto"})
