"""Implicit-feedback matrix factorization (ALS, Hu/Koren/Volinsky 2008).

Training uses the `implicit` library when importable (``pip install 'rankly[als]'``) and a
compact NumPy ALS otherwise. Part ``als`` holds ``user_factors`` (float32 [U, d]) and
``item_factors`` (float32 [N, d]); serving needs nothing else and ranks with
``rankly._fast.score_topk``. Users unknown at training time are folded in from their history
by one least-squares solve against the item factors.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from rankly import _fast
from rankly.engine.api import (
    Candidates,
    ComponentContext,
    Model,
    ModelPart,
    Reason,
    TrainingData,
    UserFeatures,
    anchored_reasons,
    hookimpl,
)

NAME = "als"
#: Only this many of the most recent history items are considered as a candidate's anchor.
ANCHOR_HISTORY = 50
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


#: Catalogs of at least this many factor floats are scanned in parallel chunks (one per core
#: this process may use): a scan that size is bound by memory bandwidth, which one core
#: does not exhaust.
PARALLEL_SCAN_FLOATS = 1 << 24
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)
_SCAN_THREADS = ThreadPoolExecutor(max_workers=max(_CORES - 1, 1),
                                   thread_name_prefix="rankly-als-scan")


def split_score_topk(items: np.ndarray, user: np.ndarray, k: int, exclude: np.ndarray,
                     chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """``_fast.score_topk(items, user, k, exclude)`` over ``chunks`` contiguous slices of
    ``items`` at once (the kernel releases the GIL), merged: the same indices and values.

    Each slice's top-k comes back best first, ties by the lower index; the slices are
    concatenated in index order, so one more top-k over them (ties: the lower position, i.e.
    the lower index) gives the global order exactly.
    """
    n = items.shape[0]
    bounds = np.linspace(0, n, chunks + 1).astype(np.int64)
    ex = np.asarray(exclude, dtype=np.int64)

    def part(c: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        mine = ex[(ex >= lo) & (ex < hi)] - lo
        idx, vals = _fast.score_topk(items[lo:hi], user, k, exclude=mine)
        return idx + lo, vals

    futures = [_SCAN_THREADS.submit(part, c) for c in range(1, chunks)]
    parts = [part(0)] + [f.result() for f in futures]
    idx = np.concatenate([p[0] for p in parts])
    vals = np.concatenate([p[1] for p in parts])
    pos, top = _fast.topk(vals, k)
    return idx[pos], top


class ALSScorer:
    """Dot product of user and item factors; also a candidate generator."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray,
                 regularization: float = 0.05, alpha: float = 2.0) -> None:
        self.user_factors = user_factors
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.reg, self.alpha = regularization, alpha
        y = self.item_factors.astype(np.float64)
        self.gram = y.T @ y + regularization * np.eye(y.shape[1])

    @classmethod
    def from_model(cls, model: Model) -> ALSScorer | None:
        part = model.part(NAME)
        if part is None:
            return None
        p = model.params(NAME)
        return cls(part["user_factors"], part["item_factors"],
                   float(p.get("regularization", DEFAULTS["regularization"])),
                   float(p.get("alpha", DEFAULTS["alpha"])))

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        """Return the factors of an unseen user from item indices (zeros for no history)."""
        h = np.unique(np.asarray(history, dtype=np.int64))
        h = h[(h >= 0) & (h < self.item_factors.shape[0])]
        if h.size == 0:
            return np.zeros(self.item_factors.shape[1], dtype=np.float32)
        y = self.item_factors[h].astype(np.float64)
        a = self.gram + self.alpha * (y.T @ y)
        return np.linalg.solve(a, y.sum(axis=0) * (1.0 + self.alpha)).astype(np.float32)

    def user_vector(self, user: UserFeatures) -> np.ndarray:
        if 0 <= user.row < self.user_factors.shape[0]:
            return np.asarray(self.user_factors[user.row], dtype=np.float32)
        return self.fold_in(user.history)

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        v = self.user_vector(user)
        return self.item_factors[np.asarray(items, dtype=np.int64)] @ v

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        """Top ``n`` by factor score; reason BECAUSE_YOU_LIKED with anchor
        ``argmax_h item_factors[h] . item_factors[i]`` over the :data:`ANCHOR_HISTORY` most
        recent history items (FOR_YOU when there is no history or no positive similarity).
        """
        if user.row < 0 and user.history.size == 0:
            return Candidates.empty()
        if self.item_factors.size >= PARALLEL_SCAN_FLOATS and _CORES > 1:
            idx, _ = split_score_topk(self.item_factors, self.user_vector(user), n, user.seen,
                                      _CORES)
        else:
            idx, _ = _fast.score_topk(self.item_factors, self.user_vector(user), n,
                                      exclude=user.seen)
        h = np.asarray(user.history[:ANCHOR_HISTORY], dtype=np.int64)
        h = h[(h >= 0) & (h < self.item_factors.shape[0])]
        if h.size == 0:
            return Candidates.of(idx, Reason.FOR_YOU)
        sims = self.item_factors[h] @ self.item_factors[idx].T  # [H, n]
        return Candidates(idx, *anchored_reasons(h, sims, np.arange(idx.size)))


def _factory(ctx: ComponentContext) -> ALSScorer | None:
    return ALSScorer.from_model(ctx.model)


@hookimpl
def register_trainers(register):
    register(NAME, ALSTrainer(), options={**DEFAULTS, "backend": "auto"})


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options={**DEFAULTS, "backend": "auto"})


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options={**DEFAULTS, "backend": "auto"})
