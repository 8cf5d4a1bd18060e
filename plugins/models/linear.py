"""Item-item linear models: EASE / EDLAE weights, age-decayed training pairs, and the scorer
that sums weight rows over a history.

A library for the plugins that fit or serve such a model (``ease``, ``blend``): it registers
no hooks, so importing it does not make one plugin depend on another.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rankly import _fast
from rankly.engine.api import Candidates, Model, TrainingData, UserFeatures, anchored_reasons


def item_weights(gram: np.ndarray, lam: float, dropout: float = 0.0,
                 diagonal_bound: float = 0.0) -> np.ndarray:
    """Return the EASE / EDLAE / RLAE weight matrix (float32 [n, n], zero diagonal) of a Gram
    matrix.

    With ``P = (G + L)^-1`` and ``L = lam*I + dropout/(1-dropout)*diag(G)``:
    ``B = I - P diag(1/diag(P))``, EASE (Steck, WWW 2019) when ``dropout`` is 0 and its
    emphasized-denoising form EDLAE (Steck, NeurIPS 2020), which regularizes popular items
    harder, otherwise. ``diagonal_bound`` ``xi`` > 0 relaxes EASE's zero-diagonal constraint
    to ``diag(B) <= xi`` (RLAE / RDLAE, Moon et al., SIGIR 2023):
    ``B = I - P diag(max(L_jj, (1 - xi)/P_jj))``, whose off-diagonal column ``j`` is EASE's
    scaled by ``max(L_jj P_jj, 1 - xi)`` (:func:`relaxed_columns`): popular items, whose
    ``L_jj P_jj`` is small, weigh up to ``1 - xi`` less. The diagonal is returned as zero
    either way: it only ever scores an item the user already has, which is never served.

    Inverts with a float32 Cholesky factorization (LAPACK potrf + potri, a third of a
    general inverse's flops); falls back to float64 when float32 loses positive
    definiteness. ``gram`` is not modified.
    """
    b, leverage = ease_leverage(gram, lam, dropout)
    if diagonal_bound:
        b *= relaxed_columns(leverage, diagonal_bound)[None, :]
    return b


def mix_weights(high: np.ndarray, low: np.ndarray, share: float) -> np.ndarray:
    """``(1 - share) * high + share * low`` in float32: the weights of two EASE fits of one
    Gram matrix (a lambda and a smaller one) served as one matrix."""
    out = np.multiply(high, np.float32(1.0 - share), dtype=np.float32)
    out += np.float32(share) * low
    return out


def relaxed_columns(leverage: np.ndarray, diagonal_bound: float) -> np.ndarray:
    """float32 column factors that turn EASE weights into RLAE's for ``diag(B) <= xi``:
    ``max(L_jj P_jj, 1 - xi)`` (``leverage`` is ``L_jj P_jj``, in (0, 1])."""
    if not 0.0 <= diagonal_bound < 1.0:
        raise ValueError(f"ease: diagonal_bound must be in [0, 1), got {diagonal_bound}")
    return np.maximum(leverage, 1.0 - diagonal_bound).astype(np.float32)


def ease_leverage(gram: np.ndarray, lam: float, dropout: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(EASE / EDLAE weights as :func:`item_weights` with no relaxation, ``L_jj P_jj`` per
    item): what :func:`relaxed_columns` needs to try several bounds on one inverse."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"ease: dropout must be in [0, 1), got {dropout}")
    n = gram.shape[0]
    if n == 0:
        return np.zeros((0, 0), np.float32), np.ones(0, np.float32)
    diag = np.diag(gram).astype(np.float64) * (dropout / (1.0 - dropout)) + lam
    # NOTE: scipy.linalg is imported where a model is fitted: processes that only serve (a
    # Ray batch worker, a server) never load it
    from scipy.linalg import lapack

    for dtype, potrf, potri in ((np.float32, lapack.spotrf, lapack.spotri),
                                (np.float64, lapack.dpotrf, lapack.dpotri)):
        a = np.array(gram, dtype=dtype, order="F")
        a[np.diag_indices(n)] += diag.astype(dtype)
        c, info = potrf(a, lower=0, overwrite_a=1, clean=0)
        if info == 0:
            p, info = potri(c, lower=0, overwrite_c=1)
        if info == 0:
            break
    else:
        raise ValueError("ease: the regularized Gram matrix is not positive definite")
    # potri fills the upper triangle only; P is symmetric, so once mirrored its Fortran
    # buffer read as C order is P itself, and dividing its columns runs along rows
    p = _mirror_upper(p).T
    pd = np.diag(p).astype(np.float64)
    b = p / (-np.diag(p))[None, :]
    b[np.diag_indices(n)] = 0.0
    leverage = np.clip(diag * pd, 0.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(b, dtype=np.float32), leverage


def _mirror_upper(p: np.ndarray, block: int = 256) -> np.ndarray:
    """Copy the upper triangle of square ``p`` onto its lower one, in place, a band of
    ``block`` columns at a time (``np.triu`` builds masks over the whole matrix)."""
    n = p.shape[0]
    for i in range(0, n, block):
        j = min(i + block, n)
        p[j:, i:j] = p[i:j, j:].T
        square = p[i:j, i:j]
        lower = np.tril_indices(j - i, -1)
        square[lower] = square.T[lower]
    return p


#: :func:`gram` goes dense when the dense product needs fewer than this many times the
#: sparse one's operations: an estimate of how much more a sparse pair costs than a BLAS
#: multiply-add, from timing both on MovieLens-sized matrices.
_SPARSE_COST = 1000.0
#: Users densified at once by :func:`gram` (bounds its scratch memory).
_GRAM_BLOCK = 2048


def gram_is_dense(x: sp.csr_matrix) -> bool:
    """Whether :func:`gram` takes its dense BLAS path for ``x`` (the cheaper one by operation
    count; see :data:`_SPARSE_COST`)."""
    users, n = x.shape
    lens = np.diff(sp.csr_matrix(x).indptr).astype(np.float64)
    return bool(users and n and users * float(n) ** 2 <= _SPARSE_COST * float((lens ** 2).sum()))


def gram(x: sp.csr_matrix) -> np.ndarray:
    """The dense float32 Gram matrix ``x.T @ x`` of a users x items matrix.

    A sparse product pays per pair of items in each user's history and writes a sparse
    result that is nearly full on a few thousand items; a BLAS ``syrk`` over blocks of
    densified users pays ``users x items^2`` at full speed. The cheaper one is used."""
    x = sp.csr_matrix(x, dtype=np.float32)
    users, n = x.shape
    if not gram_is_dense(x):
        return np.ascontiguousarray((x.T @ x).toarray(), dtype=np.float32)
    from scipy.linalg import blas  # fitting only (see ease_leverage)

    out = np.zeros((n, n), dtype=np.float32, order="F")
    for lo in range(0, users, _GRAM_BLOCK):
        block = x[lo:lo + _GRAM_BLOCK].toarray()
        out = blas.ssyrk(1.0, block, beta=1.0, c=out, trans=1, lower=0, overwrite_c=1)
    # syrk fills the upper triangle of a Fortran buffer; mirrored, read as C order it is G
    return _mirror_upper(out).T


def items_holding(users_per_item: np.ndarray, share: float) -> int:
    """How many of the most popular items (by ``users_per_item``, any order) hold ``share`` of
    the events (at least 1; every item with a user when ``share`` >= 1)."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"the share of events must be in (0, 1], got {share}")
    counts = np.sort(np.asarray(users_per_item))[::-1]
    held = np.cumsum(counts, dtype=np.float64)
    if held.size == 0 or held[-1] == 0:
        return max(1, int(counts.size))
    if share >= 1.0:
        return max(1, int((counts > 0).sum()))
    return int(np.searchsorted(held, share * held[-1])) + 1


def active_items(x: sp.csr_matrix, min_count: int, limit: int) -> np.ndarray:
    """Items (int64, ascending) with at least ``min_count`` users in ``x``; the ``limit`` most
    popular of them (ties: lower index) when there are more."""
    counts = np.diff(x.tocsc().indptr)
    items = np.flatnonzero(counts >= max(min_count, 1)).astype(np.int64)
    if items.size > limit:
        order = np.lexsort((items, -counts[items]))[:limit]
        items = np.sort(items[order])
    return items


def decayed_matrix(data: TrainingData, half_life_days: float) -> tuple[sp.csr_matrix, float]:
    """(users x items matrix, lambda factor): every interacted pair weighs ``2^(-age /
    half_life_days)`` by the age of its newest event (from the newest event of the data),
    capped at 1; a half-life of 0 is the binary matrix and factor 1.

    A decayed Gram shrinks by about the mean squared weight; the factor (that mean, at most
    1) scales lambda alike, so the regularization keeps its strength relative to the data.
    """
    if half_life_days <= 0 or data.timestamps.size == 0:
        return data.binary_matrix(), 1.0
    age = (float(data.timestamps.max()) - data.timestamps.astype(np.float64)) / 86400.0
    w = np.exp2(-age / half_life_days).astype(np.float32)
    m = sp.csr_matrix((w, (data.user_idx, data.item_idx)), shape=data.matrix.shape,
                      dtype=np.float32)
    m.sum_duplicates()
    np.minimum(m.data, 1.0, out=m.data)
    factor = float(np.mean(m.data.astype(np.float64) ** 2)) if m.nnz else 1.0
    return m, min(max(factor, 1e-6), 1.0)


class EaseScorer:
    """Score = sum of the weight rows of the user's history items; also a candidate generator.

    The weighted forms (:meth:`rows`, :meth:`batch`) serve the blend, which weighs history
    items by recency.
    """

    def __init__(self, items: np.ndarray, weights: np.ndarray, n_items: int) -> None:
        self.items = np.asarray(items, dtype=np.int64)
        self.weights = weights
        self.n_items = n_items
        self.pos = np.full(n_items, -1, dtype=np.int64)
        self.pos[self.items] = np.arange(self.items.size)
        # every catalog item has a row, in catalog order (items is ascending)
        self.every_item = self.items.size == n_items

    @classmethod
    def from_model(cls, model: Model, part_name: str = "ease") -> EaseScorer | None:
        """The scorer of ``model``'s EASE part (None when it has none)."""
        part = model.part(part_name)
        if part is None:
            return None
        return cls(part["items"], part["weights"], len(model.catalog))

    def usable(self, h: np.ndarray) -> np.ndarray:
        """Which of the (in-range) item indices ``h`` have weight rows."""
        return self.pos[h] >= 0

    def rows(self, h: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Float32 scores over the catalog: ``w @ B[h]`` for usable, distinct items ``h``."""
        if self.every_item:  # rows already in catalog order: no scatter
            return _fast.weighted_rows(self.weights, self.pos[h], w)
        out = np.zeros(self.n_items, dtype=np.float32)
        if h.size:
            out[self.items] = _fast.weighted_rows(self.weights, self.pos[h], w)
        return out

    def batch(self, hist: sp.csr_matrix, threads: int | None = 1) -> np.ndarray:
        """Dense float32 [U, n_items] scores of a users x items history-weight matrix.

        The compiled :func:`rankly._fast.weighted_rows_batch` adds each user's weight rows
        (on ``threads`` threads; None: all), so the cost follows the histories' non-zeros, not
        the users x catalog cells a dense product would multiply.

        ``hist`` is only read: validation threads score one shared history matrix side by
        side, and scipy's in-place canonicalization (``sum_duplicates`` sorts the index
        arrays, which a CSR built from another shares) raced there and corrupted memory. A
        duplicate entry needs no merging: the kernel adds its weight row once per entry, which
        is the merged entry's sum."""
        h = sp.csr_matrix(hist)
        cols = self.pos[h.indices]
        keep = cols >= 0
        if keep.all():
            indptr = h.indptr
        else:  # history items without a weight row add nothing
            kept = np.concatenate([[0], np.cumsum(keep)])
            indptr = kept[h.indptr]
        scores = _fast.weighted_rows_batch(self.weights, indptr, cols[keep], h.data[keep],
                                           threads=threads)
        if self.every_item:
            return scores
        out = np.zeros((hist.shape[0], self.n_items), dtype=np.float32)
        out[:, self.items] = scores
        return out

    def _history_rows(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history item indices that have weights, their rows in ``weights``), deduplicated."""
        h = np.asarray(history, dtype=np.int64)
        h = h[(h >= 0) & (h < self.n_items)]
        h = np.unique(h[self.usable(h)])
        return h, self.pos[h]

    def full_scores(self, history: np.ndarray) -> np.ndarray:
        """Return float32 scores over the whole catalog for item indices ``history``."""
        h, _ = self._history_rows(history)
        return self.rows(h, np.ones(h.size, dtype=np.float32))

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        return self.full_scores(user.history)[np.asarray(items, dtype=np.int64)]

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        """Top ``n`` unseen items; reason BECAUSE_YOU_LIKED with anchor ``argmax_h B[h, i]``.

        The anchor is the history item contributing most to the candidate's score (ties: the
        lower item index); a candidate no history item pushes up (max contribution <= 0)
        keeps FOR_YOU. Cost: one [H, n] gather of the weight rows already read for scoring.
        """
        h, rows = self._history_rows(user.history)
        if h.size == 0:
            return Candidates.empty()
        block = np.asarray(self.weights[rows], dtype=np.float32)
        s = np.zeros(self.n_items, dtype=np.float32)
        s[self.items] = block.sum(axis=0)
        idx, _ = _fast.topk(s, n, exclude=user.seen)
        return Candidates(idx, *anchored_reasons(h, block, self.pos[idx]))
