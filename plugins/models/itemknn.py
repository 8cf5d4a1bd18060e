"""Item-item neighbours: shrunk cosine on co-occurrence, top-M neighbours per item precomputed.

Part ``itemknn`` holds the neighbour lists as CSR arrays: ``indptr`` (N+1 int64), ``indices``
(int64 neighbour item indices) and ``sims`` (float32), each row sorted by similarity desc.
The scorer also answers ``/items/{id}/similar`` (:meth:`ItemKNNScorer.similar`) and anonymous
session recommendations (:meth:`ItemKNNScorer.session_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    hookimpl,
)
from rankly.plugins.models import linear
from rankly.plugins.models.holdouts import (
    grid_option,
    history_matrix,
    judge,
    make_holdout,
    tuning_shape,
)

NAME = "itemknn"
#: Only the most recent items of a long history vote, keeping a request O(MAX_HISTORY * M).
MAX_HISTORY = 200
#: The keys of ``[plugins.itemknn]`` (training and serving share the section) and defaults.
OPTIONS = {"neighbours": 100, "shrink": 10.0, "alpha": 0.5, "max_history": MAX_HISTORY,
           "neighbour_grid": (25, 50, 100, 200), "validation": "robust", "seed": 0,
           "max_users": 2000}


def neighbours(x: sp.csr_matrix, m: int, shrink: float, alpha: float = 0.5) -> sp.csr_matrix:
    """Return the item x item matrix keeping each row's ``m`` largest shrunk similarities.

    ``sim(i, j) = c_ij / (n_i^alpha * n_j^(1-alpha) + shrink)`` with ``c_ij`` the number of
    users who touched both and ``n_i`` the users of item i (alpha 0.5 is cosine). The diagonal
    is zero; rows are sorted by similarity desc, ties by the lower item index.

    On a small catalog whose items mostly co-occur (MovieLens) the co-occurrence counts come
    from a dense BLAS product and each row's neighbours straight from its dense row; otherwise
    from a sparse product. Both give the same lists (``tests/plugins/test_self_tuning.py``).
    """
    n_items = x.shape[1]
    if 0 < n_items <= DENSE_MAX_ITEMS and m > 0 and linear.gram_is_dense(x):
        return _dense_neighbours(x, m, shrink, alpha)
    xt = x.T.tocsr()
    co = (xt @ x).tocsr().astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    n = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    co.data /= n[rows] ** alpha * n[co.indices] ** (1 - alpha) + shrink
    indptr = [0]
    indices: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    co.sort_indices()  # a row's positions in column order: the kernel's ties go to the lower
    for i in range(co.shape[0]):
        lo, hi = co.indptr[i], co.indptr[i + 1]
        idx, val = co.indices[lo:hi], co.data[lo:hi]
        # the compiled top-k: by similarity desc, ties by the lower position (= item index)
        order = _fast.topk(val, m)[0] if m > 0 else np.empty(0, np.int64)
        indices.append(idx[order].astype(np.int64))
        sims.append(val[order].astype(np.float32))
        indptr.append(indptr[-1] + order.size)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    return sp.csr_matrix(
        (cat(sims, np.float32), cat(indices, np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=co.shape,
    )


#: Catalogs up to this size may take the dense path of :func:`neighbours` (an items x items
#: float32 scratch matrix).
DENSE_MAX_ITEMS = 6000


def _dense_neighbours(x: sp.csr_matrix, m: int, shrink: float, alpha: float) -> sp.csr_matrix:
    """:func:`neighbours` through the dense co-occurrence matrix: pairs that never co-occur
    and the diagonal become NaN, which the compiled top-k never returns, and a row's
    positions are item indices, so its ties already go to the lower item."""
    co = linear.gram(x)
    counts = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
    # an item nobody touched gives 0/0 with no shrink: it never co-occurs, so it becomes NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = co / ((counts[:, None] ** alpha) * (counts[None, :] ** (1 - alpha))
                    + np.float32(shrink))
    sim[co == 0] = np.nan
    np.fill_diagonal(sim, np.nan)
    n = sim.shape[0]
    # every row at once through the compiled batch top-k: rows with fewer than m
    # co-occurring items come back padded with -1, which is dropped
    idx, val = _fast.topk_batch(sim, min(m, n))
    keep = idx >= 0
    lens = keep.sum(axis=1)
    return sp.csr_matrix(
        (val[keep].astype(np.float32), idx[keep].astype(np.int64),
         np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)), shape=(n, n))


def truncate(s: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """The first ``m`` entries of each row of ``s`` (rows sorted by similarity desc, as
    :func:`neighbours` writes them): its ``m`` nearest neighbours."""
    lens = np.diff(s.indptr)
    rank = np.arange(s.nnz, dtype=np.int64) - np.repeat(s.indptr[:-1], lens)
    keep = rank < m
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lens, m))]).astype(np.int64)
    return sp.csr_matrix((s.data[keep], s.indices[keep], indptr), shape=s.shape)


def tune_neighbours(data: TrainingData, grid: Sequence[int], shrink: float, alpha: float,
                    shape: str, seed: int, max_users: int, max_history: int, k: int = 10
                    ) -> tuple[int, dict[int, float], int]:
    """Choose the neighbour count of ``grid`` with the best NDCG@k on a ``shape`` hold-out
    carved from ``data`` (the same hold-out the blend validates on; ties: fewer neighbours).

    One similarity computation at the largest count; each smaller one keeps the first
    entries of every row. Users are scored as served: summed similarity to their (at most
    ``max_history`` newest) history items. Returns (count, NDCG per count, validation users);
    with no validation users, the middle of the grid and no scores.
    """
    grid = sorted({int(m) for m in grid if int(m) > 0})
    if not grid:
        raise ValueError("itemknn: neighbour_grid must hold a positive neighbour count")
    hold = make_holdout(data, shape, 0.2, max_users, seed)
    if not hold.rows.size:
        return grid[len(grid) // 2], {}, 0
    full = neighbours(hold.train.binary_matrix(), grid[-1], shrink, alpha)
    hist = history_matrix(hold.train.users, hold.rows, data.n_items, 0.0, 0.0, max_history)
    # a small catalog's lists are scored as dense weight rows, added per user by the
    # compiled gather of the EASE scorer; a sparse product writes a nearly full sparse result
    every_item = np.arange(data.n_items)
    tried = {}
    for m in grid:
        near = truncate(full, m)
        if data.n_items <= DENSE_MAX_ITEMS:
            scores = linear.EaseScorer(every_item, near.toarray(), data.n_items).batch(
                hist, threads=None)
        else:
            scores = np.asarray((hist @ near).toarray(), dtype=np.float32)
        scores[scores <= 0] = np.nan  # as served: unreachable items are not candidates
        tried[m] = judge(scores, hold, k).ndcg
    best = max(grid, key=lambda m: (tried[m], -m))
    return best, tried, int(hold.rows.size)


class ItemKNNTrainer:
    """Options: ``neighbours`` M, ``shrink`` (default 10), ``alpha`` (0.5).

    Without an explicit ``neighbours``, M is chosen from ``neighbour_grid`` (25, 50, 100, 200)
    by NDCG@10 on a hold-out of the training data (:func:`tune_neighbours`; ``validation``
    "robust"/"random" use the random shape, "last" and "temporal" their own; ``seed``,
    ``max_users``); the training report says what each count scored."""

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        shrink = float(options.get("shrink", 10.0))
        alpha = float(options.get("alpha", 0.5))
        report: list[str] = []
        if "neighbours" in options:
            m = int(options["neighbours"])
        else:
            shape = tuning_shape(NAME, options.get("validation", "robust"))
            grid = grid_option(options, "neighbour_grid", OPTIONS["neighbour_grid"])
            m, tried, users = tune_neighbours(
                data, [int(g) for g in grid], shrink, alpha, shape,
                int(options.get("seed", 0)), int(options.get("max_users", 2000)),
                int(options.get("max_history", MAX_HISTORY)))
            report.append(
                f"neighbours on the {shape} hold-out ({users} users): "
                + (", ".join(f"{g}: {v:.4f}" for g, v in tried.items()) or "no users")
                + f" -> {m}")
        s = neighbours(data.binary_matrix(), m, shrink, alpha)
        return ModelPart(
            name=NAME,
            params={"neighbours": m, "shrink": shrink, "alpha": alpha},
            arrays={"indptr": s.indptr.astype(np.int64), "indices": s.indices.astype(np.int64),
                    "sims": s.data.astype(np.float32)},
            metrics={"nnz": int(s.nnz), **({"report": report} if report else {})},
        )


class ItemKNNScorer:
    """Score items by the summed similarity to the user's (recent) history items.

    Also a candidate generator (``generate``) whose reason is BECAUSE_YOU_LIKED with the history
    item that contributed most as anchor.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, sims: np.ndarray,
                 max_history: int = MAX_HISTORY) -> None:
        n = int(np.asarray(indptr).size - 1)
        self.sim = sp.csr_matrix(
            (np.asarray(sims, dtype=np.float32), np.asarray(indices), np.asarray(indptr)),
            shape=(n, n),
        )
        self.max_history = max_history

    @classmethod
    def from_part(cls, part: Mapping[str, np.ndarray], **options: Any) -> ItemKNNScorer:
        return cls(part["indptr"], part["indices"], part["sims"],
                   int(options.get("max_history", MAX_HISTORY)))

    @property
    def n_items(self) -> int:
        return int(self.sim.shape[0])

    def _history(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        h = np.asarray(items, dtype=np.int64)[: self.max_history]
        return h[(h >= 0) & (h < self.n_items)]

    def _gather(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The neighbour lists of history rows ``h``, concatenated: (neighbour, similarity,
        position in ``h``). Straight from the CSR arrays: scipy's row and column indexing
        validate and convert on every call, most of the cost for short histories (#8)."""
        indptr = self.sim.indptr
        starts, lens = indptr[h], indptr[h + 1] - indptr[h]
        ends = np.cumsum(lens)
        flat = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
        src = np.repeat(np.arange(h.size, dtype=np.int64), lens)
        return self.sim.indices[flat], self.sim.data[flat], src

    def _sums(self, nbr: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Summed similarity per catalog item (float64 accumulation, float32 out)."""
        return np.bincount(nbr, weights=sims, minlength=self.n_items).astype(np.float32)

    def session_scores(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """Return float32 scores over the whole catalog for a list of item indices."""
        h = self._history(items)
        if h.size == 0:
            return np.zeros(self.n_items, dtype=np.float32)
        nbr, sims, _ = self._gather(h)
        return self._sums(nbr, sims)

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        return self.session_scores(user.history)[np.asarray(items, dtype=np.int64)]

    def similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``n`` nearest neighbours of ``item_idx``: (int64 indices, float32 sims)."""
        if not 0 <= item_idx < self.n_items:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        lo, hi = self.sim.indptr[item_idx], self.sim.indptr[item_idx + 1]
        k = min(n, hi - lo)
        return (self.sim.indices[lo:lo + k].astype(np.int64),
                self.sim.data[lo:lo + k].astype(np.float32))

    def recommend_session(self, items: Sequence[int] | np.ndarray, n: int,
                          exclude: np.ndarray | None = None) -> Candidates:
        """Return up to ``n`` SIMILAR_TO candidates for a session (anchor: the closest item)."""
        h = self._history(items)
        ex = h if exclude is None else np.union1d(h, exclude)
        return self._top(h, n, ex, Reason.SIMILAR_TO)

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        return self._top(self._history(user.history), n, user.seen, Reason.BECAUSE_YOU_LIKED)

    def _top(self, h: np.ndarray, n: int, exclude: np.ndarray, reason: Reason) -> Candidates:
        if h.size == 0 or n <= 0:
            return Candidates.empty()
        nbr, sims, src = self._gather(h)
        scores = self._sums(nbr, sims)
        scores[scores <= 0] = np.nan  # items no history item points to are not candidates
        idx, _ = _fast.topk(scores, n, exclude=exclude)
        if idx.size == 0:
            return Candidates.empty()
        # anchor: the history item with the largest similarity to the candidate (ties: the
        # earlier one in ``h``), from a dense [H, candidates] block of the entries that reach
        # a candidate (column = 1 + rank, looked up in a catalog-sized map; 0: no candidate)
        column = np.zeros(self.n_items, dtype=np.int32)
        column[idx] = np.arange(1, idx.size + 1, dtype=np.int32)
        col = column[nbr]
        hit = col > 0
        contrib = np.zeros((h.size, idx.size), dtype=np.float32)
        contrib[src[hit], col[hit] - 1] = sims[hit]
        return Candidates.of(idx, reason, h[np.argmax(contrib, axis=0)])


def scorer(model: Model, **options: Any) -> ItemKNNScorer | None:
    """Return the neighbour scorer of ``model``, or None when it has no itemknn part."""
    part = model.part(NAME)
    return None if part is None else ItemKNNScorer.from_part(part, **options)


def similar_items(model: Model, item_index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``model``'s ``n`` nearest neighbours of one item (empty when no itemknn part)."""
    s = scorer(model)
    return (np.empty(0, np.int64), np.empty(0, np.float32)) if s is None else s.similar(
        item_index, n)


def session_recommendations(model: Model, items: Sequence[int], n: int) -> Candidates:
    """Return up to ``n`` candidates for an anonymous session of item indices."""
    s = scorer(model)
    return Candidates.empty() if s is None else s.recommend_session(items, n)


@hookimpl
def register_trainers(register):
    register(NAME, ItemKNNTrainer(), options=OPTIONS)


def _factory(ctx: ComponentContext) -> ItemKNNScorer | None:
    return scorer(ctx.model, **ctx.options)


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options=OPTIONS)


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options=OPTIONS)
