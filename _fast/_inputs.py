"""Input checks shared by the compiled kernels and their NumPy reference twins.

Both implementations call the same functions, so they accept, convert and reject exactly
the same inputs with the same messages.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

_INT32 = np.iinfo(np.int32)


def as_scores_1d(scores: Any, name: str = "scores") -> np.ndarray:
    """Return `scores` as a C-contiguous float32 vector, or raise ValueError."""
    array = np.ascontiguousarray(scores, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    return array


def as_scores_2d(scores: Any, name: str = "scores_2d") -> np.ndarray:
    """Return `scores` as a C-contiguous float32 matrix, or raise ValueError."""
    array = np.ascontiguousarray(scores, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {array.shape}")
    return array


def check_k(k: Any, name: str = "k") -> int:
    """Return `k` as a Python int; TypeError if not an integer, ValueError if negative."""
    value = operator.index(k)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_threads(threads: Any) -> int | None:
    """Return `threads` (None or a positive int), or raise ValueError."""
    if threads is None:
        return None
    value = operator.index(threads)
    if value < 1:
        raise ValueError(f"threads must be None or >= 1, got {value}")
    return value


def exclude_indices(exclude: Any, n: int) -> np.ndarray:
    """Return the sorted unique int64 indices of `exclude` that lie in [0, n).

    Duplicates, negative and out-of-range values are dropped. `exclude` must hold integers
    (an empty list is fine); anything else raises ValueError.
    """
    if exclude is None:
        return np.empty(0, dtype=np.int64)
    array = np.asarray(exclude)
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.ndim > 1:
        raise ValueError(f"exclude must be a 1-D array of item indices, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"exclude must hold integer item indices, got dtype {array.dtype}")
    array = array.ravel()
    if (array.dtype == np.int64 and array[0] >= 0 and array[-1] < n
            and (array.size == 1 or bool((array[1:] > array[:-1]).all()))):
        return array  # already sorted, distinct and in range (a user's seen items)
    if array.dtype.kind == "u":
        array = array[array < n]
    else:
        array = array[(array >= 0) & (array < n)]
    return np.unique(array.astype(np.int64))


def exclude_rows(exclude: Sequence[Any] | None, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return per-row exclusions as CSR arrays `(offsets [rows+1], indices)`, each row sorted.

    `exclude` is None or a sequence of `rows` integer arrays, each cleaned as in
    `exclude_indices`.
    """
    offsets = np.zeros(rows + 1, dtype=np.int64)
    if exclude is None:
        return offsets, np.empty(0, dtype=np.int64)
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2 and exclude.size > 0:
        exclude = list(exclude)
    if len(exclude) != rows:
        raise ValueError(
            f"exclude must be None or a sequence of one index array per row "
            f"({rows} rows), got {len(exclude)}"
        )
    cleaned = [exclude_indices(row, n) for row in exclude]
    offsets[1:] = np.cumsum([len(row) for row in cleaned])
    values = np.concatenate(cleaned) if cleaned else np.empty(0, dtype=np.int64)
    return offsets, values.astype(np.int64, copy=False)


def as_factors(item_factors: Any, user: Any, user_ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 C-contiguous `(item_factors [n, d], user)` with matching d, or raise."""
    items = np.ascontiguousarray(item_factors, dtype=np.float32)
    if items.ndim != 2:
        raise ValueError(f"item_factors must be a 2-D array [n, d], got shape {items.shape}")
    users = np.ascontiguousarray(user, dtype=np.float32)
    name = "user_vector" if user_ndim == 1 else "user_matrix"
    if users.ndim != user_ndim:
        shape = "[d]" if user_ndim == 1 else "[b, d]"
        raise ValueError(f"{name} must be a {user_ndim}-D array {shape}, got shape {users.shape}")
    if users.shape[-1] != items.shape[1]:
        raise ValueError(
            f"{name} has {users.shape[-1]} factors but item_factors has {items.shape[1]}"
        )
    return items, users


def as_categories(categories: Any, n: int) -> np.ndarray:
    """Return `categories` as C-contiguous int32 of length n, or raise ValueError."""
    array = np.asarray(categories)
    if array.ndim != 1:
        raise ValueError(f"categories must be a 1-D array, got shape {array.shape}")
    if array.shape[0] != n:
        raise ValueError(f"categories has length {array.shape[0]} but scores has length {n}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"categories must hold integers, got dtype {array.dtype}")
    if array.dtype != np.int32 and array.size:
        if array.min() < _INT32.min or array.max() > _INT32.max:
            raise ValueError("categories must fit in int32")
    return np.ascontiguousarray(array, dtype=np.int32)


def check_cap(cap: Any) -> int:
    """Return `cap` as a Python int; ValueError if negative."""
    value = operator.index(cap)
    if value < 0:
        raise ValueError(f"cap must be >= 0, got {value}")
    return value


def as_rows_inputs(matrix: Any, rows: Any, weights: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return `(matrix float32 [m, n] C-contiguous, rows int64 [h], weights float32 [h])` for
    `weighted_rows`, or raise ValueError (shapes, dtypes) / IndexError (a row out of range).

    A memory-mapped matrix is viewed as a plain ndarray (no copy when it is already float32
    and C-contiguous)."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"matrix must be a 2-D array, got shape {m.shape}")
    r = np.asarray(rows)
    if r.ndim != 1:
        raise ValueError(f"rows must be a 1-D array, got shape {r.shape}")
    if r.size and r.dtype.kind not in "iu":
        raise ValueError(f"rows must hold integer row indices, got dtype {r.dtype}")
    r = np.ascontiguousarray(r, dtype=np.int64)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != r.shape:
        raise ValueError(f"weights must have the shape of rows {r.shape}, got {w.shape}")
    if r.size and (int(r.min()) < 0 or int(r.max()) >= m.shape[0]):
        raise IndexError(f"rows must lie in [0, {m.shape[0]})")
    return m, r, w


def as_batch_rows_inputs(matrix: Any, indptr: Any, indices: Any, data: Any
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs of `weighted_rows_batch`: (matrix float32 [m, n] C-contiguous, indptr,
    indices int64, data float32); ValueError for shapes, IndexError for a column of the
    histories outside the matrix's rows."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"matrix must be a 2-D array, got shape {m.shape}")
    p = np.ascontiguousarray(indptr, dtype=np.int64)
    ix = np.ascontiguousarray(indices, dtype=np.int64)
    d = np.ascontiguousarray(data, dtype=np.float32)
    if p.ndim != 1 or p.size < 1 or ix.ndim != 1 or d.shape != ix.shape:
        raise ValueError("indptr, indices and data must be a CSR matrix's 1-D arrays")
    if int(p[0]) != 0 or int(p[-1]) != ix.size or (p.size > 1 and bool((np.diff(p) < 0).any())):
        raise ValueError("indptr must start at 0, never decrease and end at len(indices)")
    if ix.size and (int(ix.min()) < 0 or int(ix.max()) >= m.shape[0]):
        raise IndexError(f"history columns must lie in [0, {m.shape[0]})")
    return m, p, ix, d


def as_csr_rows_inputs(indptr: Any, indices: Any, data: Any, rows: Any, weights: Any,
                       n_cols: Any) -> tuple[np.ndarray, ...]:
    """Checked inputs of `csr_weighted_rows`: (indptr, indices int64, data float32, rows
    int64, weights float32, n_cols int); ValueError / IndexError naming what is wrong."""
    p = np.ascontiguousarray(indptr, dtype=np.int64)
    ix = np.ascontiguousarray(indices, dtype=np.int64)
    d = np.ascontiguousarray(data, dtype=np.float32)
    n = operator.index(n_cols)
    if p.ndim != 1 or p.size < 1 or ix.ndim != 1 or d.shape != ix.shape:
        raise ValueError("indptr, indices and data must be a CSR matrix's 1-D arrays")
    r = np.asarray(rows)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError("rows must be a 1-D array of integer row indices")
    r = np.ascontiguousarray(r, dtype=np.int64)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != r.shape:
        raise ValueError(f"weights must have the shape of rows {r.shape}, got {w.shape}")
    if r.size and (int(r.min()) < 0 or int(r.max()) >= p.size - 1):
        raise IndexError(f"rows must lie in [0, {p.size - 1})")
    return p, ix, d, r, w, n


def column_error(n: int) -> ValueError:
    """What `csr_weighted_rows` raises when a row it reads has a column outside [0, n)."""
    return ValueError(f"column indices must lie in [0, {n})")


def as_standardize_inputs(out: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked inputs of `add_standardized`: `out` a writable C-contiguous float32 vector,
    `x` a float32 vector of its length."""
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writable, C-contiguous float32 vector")
    v = np.ascontiguousarray(x, dtype=np.float32)
    if v.shape != out.shape:
        raise ValueError(f"x must have out's shape {out.shape}, got {v.shape}")
    return out, v
