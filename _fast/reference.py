"""NumPy twins of the compiled kernels: the specification of `rankly._fast`.

Each function here has the same signature and results as its compiled twin. The rules they
all share:

- Ranking order is descending score, ties broken by the lower item index.
- NaN scores are never returned. `-inf` is a number: it is eligible and ranks last.
- `exclude` is None or an integer array of item indices that are never returned; duplicates,
  negative and out-of-range values are ignored.
- `k == 0` returns empty arrays, `k < 0` raises ValueError, and fewer than `k` results come
  back when fewer items are eligible (the batch variants pad with index -1 and value -inf).
- Scores are converted with `np.ascontiguousarray(..., dtype=np.float32)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rankly._fast import _inputs


def _ranked(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Return every eligible index of `scores` in ranking order (score desc, index asc)."""
    eligible = ~np.isnan(scores)
    eligible[exclude] = False
    index = np.flatnonzero(eligible)
    return index[np.lexsort((index, -scores[index]))]


def topk(scores: Any, k: int, exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Return `(indices int64, values float32)` of the `k` best eligible scores, best first.

    Fewer than `k` come back when fewer items are eligible; `k == 0` or empty input gives
    empty arrays.
    """
    s = _inputs.as_scores_1d(scores)
    k = _inputs.check_k(k)
    order = _ranked(s, _inputs.exclude_indices(exclude, s.shape[0]))[:k]
    return order.astype(np.int64), s[order]


def _pad_rows(rows: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    width = k
    indices = np.full((len(rows), width), -1, dtype=np.int64)
    values = np.full((len(rows), width), -np.inf, dtype=np.float32)
    for r, (idx, val) in enumerate(rows):
        indices[r, : len(idx)] = idx
        values[r, : len(val)] = val
    return indices, values


def topk_batch(
    scores_2d: Any, k: int, exclude: Sequence[Any] | None = None, *, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply `topk` to each row; return `(indices [B, k] int64, values [B, k] float32)`.

    Rows with fewer than `k` eligible items are padded with index -1 and value -inf.
    `exclude` is None or a sequence of B integer arrays. `threads` is accepted for
    signature parity (None or >= 1) and ignored.
    """
    s = _inputs.as_scores_2d(scores_2d)
    k = _inputs.check_k(k)
    _inputs.check_threads(threads)
    offsets, values = _inputs.exclude_rows(exclude, s.shape[0], s.shape[1])
    rows = [topk(s[r], k, values[offsets[r] : offsets[r + 1]]) for r in range(s.shape[0])]
    return _pad_rows(rows, k)


def score_topk(
    item_factors: Any, user_vector: Any, k: int, exclude: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return `topk(item_factors @ user_vector, k, exclude)`.

    Scores are float32 dot products; the compiled twin sums in a different order, so its values
    agree to about rtol 1e-4 (the tests' tolerance) and its ids agree wherever score gaps
    exceed that.
    """
    items, user = _inputs.as_factors(item_factors, user_vector, 1)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = items @ user
    return topk(scores, k, exclude)


def score_topk_batch(
    item_factors: Any,
    user_matrix: Any,
    k: int,
    exclude: Sequence[Any] | None = None,
    *,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return `topk_batch(user_matrix @ item_factors.T, k, exclude)`, padded like `topk_batch`."""
    items, users = _inputs.as_factors(item_factors, user_matrix, 2)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = users @ items.T
    return topk_batch(scores, k, exclude, threads=threads)


def diverse_topk(
    scores: Any,
    categories: Any,
    k: int,
    cap: int,
    exclude: Any = None,
    fill: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick `k` items with at most `cap` per category; return `(indices, values, within_cap)`.

    Walk the eligible items in ranking order and keep an item while its category has fewer
    than `cap` kept items, until `k` are kept. A category < 0 is "uncategorized" and never
    capped; `cap == 0` skips every categorized item. With `fill=True`, if the walk ends with
    fewer than `k` kept, the best skipped items (in ranking order) fill the remaining slots.
    The result is in ranking order; `within_cap` is True for items kept within their cap and
    False for fill items. `categories` must have the same length as `scores`; `cap < 0`
    raises ValueError.
    """
    s = _inputs.as_scores_1d(scores)
    cats = _inputs.as_categories(categories, s.shape[0])
    k = _inputs.check_k(k)
    cap = _inputs.check_cap(cap)
    order = _ranked(s, _inputs.exclude_indices(exclude, s.shape[0]))
    # Rank of each walked item within its category: its position minus the category's first.
    c = cats[order]
    by_cat = np.argsort(c, kind="stable")
    sorted_c = c[by_cat]
    first = np.searchsorted(sorted_c, sorted_c, side="left")
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_cat] = np.arange(len(order)) - first
    within = (c < 0) | (rank < cap)
    kept = np.flatnonzero(within)[:k]
    if fill and len(kept) < k:
        fillers = np.flatnonzero(~within)[: k - len(kept)]
        kept = np.sort(np.concatenate([kept, fillers]))
    picked = order[kept]
    return picked.astype(np.int64), s[picked], within[kept]


def weighted_rows(matrix: Any, rows: Any, weights: Any) -> np.ndarray:
    """Return float32 `sum_i weights[i] * matrix[rows[i]]` (zeros when `rows` is empty).

    A row index outside the matrix raises IndexError; see `_inputs.as_rows_inputs`.
    """
    m, r, w = _inputs.as_rows_inputs(matrix, rows, weights)
    if r.size == 0:
        return np.zeros(m.shape[1], dtype=np.float32)
    return np.asarray(w @ m[r], dtype=np.float32)


def weighted_rows_batch(matrix: Any, indptr: Any, indices: Any, data: Any, *,
                        threads: Any = None) -> np.ndarray:
    """Return float32 [U, n] `H @ matrix` for the CSR matrix `H = (data, indices, indptr)`
    whose columns index `matrix`'s rows; see `_inputs.as_batch_rows_inputs`. `threads` is
    accepted for the compiled kernel's signature and ignored."""
    m, p, ix, d = _inputs.as_batch_rows_inputs(matrix, indptr, indices, data)
    out = np.zeros((p.size - 1, m.shape[1]), dtype=np.float32)
    for u in range(p.size - 1):
        lo, hi = int(p[u]), int(p[u + 1])
        if hi > lo:
            out[u] = d[lo:hi] @ m[ix[lo:hi]]
    return out


def csr_weighted_rows(indptr: Any, indices: Any, data: Any, rows: Any, weights: Any,
                      n_cols: Any) -> np.ndarray:
    """Return float32 `sum_i weights[i] * M[rows[i]]` (dense, `n_cols` long) of the CSR matrix
    `M = (data, indices, indptr)`; see `_inputs.as_csr_rows_inputs`."""
    p, ix, d, r, w, n = _inputs.as_csr_rows_inputs(indptr, indices, data, rows, weights, n_cols)
    out = np.zeros(n, dtype=np.float32)
    for row, wi in zip(r.tolist(), w.tolist(), strict=True):
        lo, hi = p[row], p[row + 1]
        cols = ix[lo:hi]
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= n):
            raise _inputs.column_error(n)
        np.add.at(out, cols, np.float32(wi) * d[lo:hi])
    return out


def add_standardized(out: Any, x: Any, weight: float = 1.0) -> np.ndarray:
    """``out += weight * (x - mean(x)) / std(x)`` in place; a constant `x` (std at most 1e-6
    of its mean's size) adds nothing. Mean and variance are float64. Returns `out`."""
    o, v = _inputs.as_standardize_inputs(out, x)
    if v.size == 0:
        return o
    mean = float(v.sum(dtype=np.float64)) / v.size
    var = float(np.dot(v.astype(np.float64), v.astype(np.float64))) / v.size - mean * mean
    std = var ** 0.5 if var > 0 else 0.0
    if not std > 1e-6 * (abs(mean) + 1e-6):
        return o
    o += (v - np.float32(mean)) * np.float32(float(weight) / std)
    return o


def _int64_1d(values: Any, name: str) -> np.ndarray:
    out = np.ascontiguousarray(values, dtype=np.int64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-d")
    return out


def positions(items: Any, listed: Any) -> np.ndarray:
    """Int64 ``out[i]``: the first index of ``items[i]`` in ``listed``, -1 where absent."""
    it, ls = _int64_1d(items, "items"), _int64_1d(listed, "listed")
    if ls.size == 0 or it.size == 0:
        return np.full(it.size, -1, dtype=np.int64)
    eq = it[:, None] == ls[None, :]
    return np.where(eq.any(axis=1), eq.argmax(axis=1), -1).astype(np.int64)


def category_features(history: Any, items: Any, categories: Any, window: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 ``(affinity, recency, same)`` of ``items`` for a user whose ``history`` (item
    indices, newest first) is read up to its ``window`` newest items: the share of the item's
    category among the categorized ones there, ``1 / (1 + j)`` for the newest of them at
    ``j``, and 1.0 when the newest categorized one shares it; 0 for an uncategorized item
    (category < 0) or a history without categories. An index outside ``categories`` raises
    IndexError."""
    h = _int64_1d(history, "history")[: max(int(window), 0)]
    it = _int64_1d(items, "items")
    cats_all = _int64_1d(categories, "categories")
    for idx in (h, it):
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= cats_all.size):
            raise IndexError("an item index is outside categories")
    cats, hc = cats_all[it], cats_all[h]
    known = int((hc >= 0).sum())
    zero = np.zeros(it.size)
    if known == 0:
        return zero, zero.copy(), zero.copy()
    ok = cats >= 0
    eq = (cats[:, None] == hc[None, :]) & ok[:, None]
    count = eq.sum(axis=1)
    newest = eq.argmax(axis=1)
    return (count / known, np.where(count > 0, 1.0 / (1.0 + newest), 0.0),
            ((cats == hc[hc >= 0][0]) & ok).astype(np.float64))
