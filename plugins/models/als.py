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
from rankly.plugins.models.holdouts import judge, make_holdout, tuning_shape

NAME = "als"
#: Tuned on a validation split of ML-100K's train part (see docs/evaluation.md).
DEFAULTS: Mapping[str, Any] = {
    "factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15, "seed": 0,
}


#: The keys of ``[plugins.als]`` (training and serving share the section) and defaults.
OPTIONS: Mapping[str, Any] = {**DEFAULTS, "backend": "auto", "validation": "robust",
                              "max_users": 2000}
#: What the trainer tries when no factor count, regularization or alpha is given: first the
#: (regularization, alpha) pairs at the middle factor count, then the other counts at the best
#: pair (at most five fits on one hold-out). The pairs span implicit's scale: rankly's earlier
#: default and the range wider searches on validation splits found best
#: (benchmarks/protocols.py, whose ALS peer uses the same grid).
REGULARIZATION_ALPHA = ((0.05, 2.0), (3.0, 2.0), (10.0, 1.0))
FACTOR_GRID = (32, 64, 128)


def tune(data: TrainingData, fit: Any, base: Mapping[str, Any], shape: str, seed: int,
         max_users: int, k: int = 10) -> tuple[dict[str, Any], dict[tuple[int, float, float],
                                                                  float], int]:
    """Choose factors, regularization and alpha by NDCG@k on a ``shape`` hold-out of ``data``
    (the same hold-out the blend validates on): the pairs of :data:`REGULARIZATION_ALPHA` at
    the middle of :data:`FACTOR_GRID`, then the other factor counts at the best pair. Ties keep
    the earlier configuration. Returns (the chosen parameters, NDCG per (factors,
    regularization, alpha) tried, validation users); with no validation users, ``base``."""
    hold = make_holdout(data, shape, 0.2, max_users, seed)
    if not hold.rows.size:
        return dict(base), {}, 0
    x = hold.train.binary_matrix()
    tried: dict[tuple[int, float, float], float] = {}

    def score(factors: int, reg: float, alpha: float) -> float:
        key = (factors, reg, alpha)
        if key not in tried:
            users, items = fit(x, **{**base, "factors": factors, "regularization": reg,
                                     "alpha": alpha})
            tried[key] = judge(users[hold.rows] @ items.T, hold, k).ndcg
        return tried[key]

    middle = FACTOR_GRID[len(FACTOR_GRID) // 2]
    reg, alpha = max(REGULARIZATION_ALPHA, key=lambda ra: score(middle, *ra))
    factors = max(FACTOR_GRID, key=lambda f: (score(f, reg, alpha), f == middle))
    return ({**base, "factors": factors, "regularization": reg, "alpha": alpha}, tried,
            int(hold.rows.size))


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

    When none of ``factors``, ``regularization`` and ``alpha`` is given, they are chosen on a
    hold-out of the training data (:func:`tune`; ``validation`` "robust"/"random" use the
    random shape, "last" and "temporal" their own; ``max_users``), and the training report
    says what each configuration scored.
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
        metrics: dict[str, Any] = {}
        if not {"factors", "regularization", "alpha"} & set(options):
            shape = tuning_shape(NAME, options.get("validation", "robust"))
            p, tried, users = tune(data, fit, p, shape, p["seed"],
                                   int(options.get("max_users", 2000)))
            metrics["report"] = [
                f"factors, regularization, alpha on the {shape} hold-out "
                f"({users} users): "
                + (", ".join(f"{f}/{r:g}/{a:g}: {v:.4f}" for (f, r, a), v in tried.items())
                   or "no users")
                + f" -> {p['factors']}/{p['regularization']:g}/{p['alpha']:g}"]
        users, items = fit(data.binary_matrix(), **p)
        return ModelPart(name=NAME, params={**p, "backend": backend},
                         arrays={"user_factors": users, "item_factors": items},
                         metrics=metrics)


def _factory(ctx: ComponentContext) -> ALSScorer | None:
    return ALSScorer.from_model(ctx.model, NAME)


@hookimpl
def register_trainers(register):
    register(NAME, ALSTrainer(), options=OPTIONS)


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options=OPTIONS)


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options=OPTIONS)
