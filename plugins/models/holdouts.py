"""Validation hold-outs carved from training data, and batch judging of ranked lists.

A library for the trainers that choose their own hyper-parameters (``blend``, ``itemknn``,
``als``): it registers no hooks, so importing it does not make one plugin depend on another.
Every trainer carves its hold-outs with :func:`make_holdout` from the same data and seed, so
they validate on the same events. Judging is vectorized over users: dense scores, seen items
excluded, the compiled batch top-k, NDCG@k per user, coverage and personalization.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from rankly import _fast
from rankly.engine.api import TrainingData, UserTable

#: Hold-out shapes, each carved from the training data like a common offline protocol:
#: "random" (a random 20% of each user's events), "last" (each user's last event) and
#: "temporal" (the last 20% of all events by time).
SHAPES = ("random", "last", "temporal")
#: The hold-out shape a trainer that tunes on one shape uses for each ``validation`` setting:
#: "robust" tunes on the random shape (the blend tunes EASE's lambda there too).
TUNING_SHAPES = {"robust": "random", "random": "random", "last": "last", "temporal": "temporal"}


def tuning_shape(owner: str, validation: Any) -> str:
    """The shape ``owner`` tunes on for the ``validation`` setting (:data:`TUNING_SHAPES`);
    ValueError naming ``owner`` for an unknown one."""
    how = str(validation)
    if how not in TUNING_SHAPES:
        raise ValueError(f"{owner}: validation must be one of {', '.join(TUNING_SHAPES)}, "
                         f"not {how!r}")
    return TUNING_SHAPES[how]


def grid_option(options: Mapping[str, Any], key: str, default: Sequence[float]) -> list[float]:
    """A grid option as floats: a list or tuple (a TOML array), one number, or a string of
    numbers separated by commas, optionally in brackets (how an environment variable such as
    ``RANKLY_PLUGINS__BLEND__MIXES="0.3,0.6"`` arrives). ValueError names the key."""
    value = options.get(key, default)
    if isinstance(value, str):
        text = value.strip().removeprefix("[").removesuffix("]")
        value = [v for v in (t.strip() for t in text.split(",")) if v]
    elif isinstance(value, (int, float)):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} must be a list of numbers, got {value!r}") from exc


def recency(positions: np.ndarray, mix: float, half_life: float) -> np.ndarray:
    """Float32 weight of history positions (0 = newest): ``(1-mix) + mix*2^(-j/h)``; all 1
    when ``mix`` or ``half_life`` is 0."""
    if mix <= 0 or half_life <= 0:
        return np.ones(np.shape(positions), dtype=np.float32)
    return ((1.0 - mix) + mix * np.exp2(-np.asarray(positions) / half_life)).astype(np.float32)


def subset(data: TrainingData, keep: np.ndarray) -> TrainingData:
    """Return ``data`` restricted to the events ``keep`` (same catalog and user rows)."""
    u, i = data.user_idx[keep], data.item_idx[keep]
    w, ts = data.weights[keep], data.timestamps[keep]
    m = sp.csr_matrix((w, (u, i)), shape=data.matrix.shape, dtype=np.float32)
    m.sum_duplicates()
    rev = np.lexsort((-i, -ts, u))
    ru, ri = u[rev], i[rev]
    _, first = np.unique(ru * max(data.n_items, 1) + ri, return_index=True)
    pick = np.sort(first)
    counts = np.bincount(ru[pick], minlength=data.n_users)
    users = UserTable(data.users.user_ids,
                      np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      ri[pick].astype(np.int64), index=data.users.index)
    return TrainingData(data.catalog, users, m, u, i, w, ts)


def holdout_mask(data: TrainingData, shape: str, fraction: float = 0.2, seed: int = 0,
                 min_events: int = 5) -> np.ndarray:
    """Boolean mask of the validation events of ``shape`` (one of :data:`SHAPES`).

    "random": ``ceil(fraction * n)`` random events of each user with >= ``min_events``;
    "last": each such user's latest event (ties: the higher item index, as histories order
    them); "temporal": every event at or after the ``1 - fraction`` quantile of timestamps.
    """
    if shape == "temporal":
        cut = np.quantile(data.timestamps, 1.0 - fraction, method="lower")
        return data.timestamps >= cut
    if shape not in SHAPES:
        raise ValueError(f"unknown validation shape {shape!r}; one of {SHAPES}")
    order = np.lexsort((data.item_idx, data.timestamps, data.user_idx))
    u = data.user_idx[order]
    counts = np.bincount(u, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])[u]
    rank = np.arange(u.size) - starts
    n = counts[u]
    if shape == "last":
        val_sorted = (rank == n - 1) & (n >= min_events)
    else:
        key = np.random.default_rng(seed).random(u.size)
        # rank events of each user by a random key; the first ceil(fraction*n) are held out
        by_key = np.lexsort((key, u))
        rrank = np.empty(u.size, dtype=np.int64)
        rrank[by_key] = np.arange(u.size) - np.concatenate([[0], np.cumsum(counts)])[u[by_key]]
        val_sorted = (rrank < np.ceil(n * fraction)) & (n >= min_events)
    val = np.zeros(u.size, dtype=bool)
    val[order] = val_sorted
    return val


@dataclass
class Holdout:
    """One validation hold-out: the validation-train data and what each sampled user did next.

    ``rows``: validation users (rows of the user table) with history and targets;
    ``targets``: CSR [len(rows), n_items] of held-out items unseen in validation-train.
    """

    shape: str
    train: TrainingData
    rows: np.ndarray
    targets: sp.csr_matrix
    #: flat indices (row * n_items + item) of each validation user's validation-train items
    seen_flat: np.ndarray
    relevant: np.ndarray  # dense bool [len(rows), n_items] of the targets


#: Hold-outs already carved, per training data object (by id, dropped when it is collected):
#: the blend, itemknn and als carve the same ones from the same data in one `rankly train`.
_CARVED: dict[int, dict[tuple[str, float, int, int], Holdout]] = {}
_CARVED_LOCK = threading.Lock()


def make_holdout(data: TrainingData, shape: str, fraction: float, max_users: int,
                 seed: int) -> Holdout:
    """The ``shape`` hold-out of ``data`` (:func:`holdout_mask`): its validation-train part,
    at most ``max_users`` validation users (those with history and unseen targets) and their
    targets. Carved once per data object and arguments; treat the result as read-only."""
    key = (shape, float(fraction), int(max_users), int(seed))
    with _CARVED_LOCK:
        found = _CARVED.get(id(data), {}).get(key)
    if found is not None:
        return found
    hold = _carve(data, shape, fraction, max_users, seed)
    with _CARVED_LOCK:
        if id(data) not in _CARVED:
            _CARVED[id(data)] = {}
            weakref.finalize(data, _CARVED.pop, id(data), None)
        _CARVED[id(data)][key] = hold
    return hold


def _carve(data: TrainingData, shape: str, fraction: float, max_users: int,
           seed: int) -> Holdout:
    val = holdout_mask(data, shape, fraction, seed)
    sub = subset(data, ~val)
    t = sp.csr_matrix((np.ones(int(val.sum()), np.float32),
                       (data.user_idx[val], data.item_idx[val])), shape=data.matrix.shape)
    t.sum_duplicates()
    t = t - t.multiply(sub.matrix > 0)
    t.eliminate_zeros()
    has_hist = np.diff(sub.users.history_indptr) > 0
    rows = np.flatnonzero((np.diff(t.indptr) > 0) & has_hist)
    if rows.size > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    hist = history_matrix(sub.users, rows, data.n_items, 0.0, 0.0)
    seen_flat = (np.repeat(np.arange(rows.size, dtype=np.int64), np.diff(hist.indptr))
                 * data.n_items + hist.indices)
    targets = t[rows]
    return Holdout(shape, sub, rows, targets, seen_flat, targets.toarray() > 0)


def history_matrix(users: UserTable, rows: np.ndarray, n_items: int, mix: float,
                   half_life: float, limit: int | None = None) -> sp.csr_matrix:
    """CSR [len(rows), n_items] of :func:`history_weights` over each row's history (its
    ``limit`` newest items when given)."""
    indptr = users.history_indptr
    lens = indptr[rows + 1] - indptr[rows]
    if limit is not None:
        lens = np.minimum(lens, limit)
    out_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = np.arange(int(out_ptr[-1]), dtype=np.int64) + np.repeat(indptr[rows] - out_ptr[:-1],
                                                                    lens)
    pos = np.arange(int(out_ptr[-1]), dtype=np.int64) - np.repeat(out_ptr[:-1], lens)
    return sp.csr_matrix((recency(pos, mix, half_life), users.history_items[flat], out_ptr),
                         shape=(rows.size, n_items))


def _ndcg(top: np.ndarray, relevant: np.ndarray, n_relevant: np.ndarray, k: int
          ) -> np.ndarray:
    """Binary NDCG@k per row of ranked item indices ``top`` [U, >=k] (-1 = padding), given
    the dense relevance mask ``relevant`` [U, n_items] and each row's number of targets."""
    top = top[:, :k]
    rel = np.take_along_axis(relevant, np.maximum(top, 0), 1) & (top >= 0)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_relevant, k)]
    return (rel * disc[: top.shape[1]]).sum(axis=1) / np.maximum(ideal, 1e-12)


def apply_cap(top: np.ndarray, categories: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Return ``k`` of the ranked items ``top`` [U, d] per row under a per-category cap.

    The served diversity reranker's rule (``_fast.diverse_topk`` with fill): walk each ranking
    keeping an item while its category (< 0 = uncategorized, never capped) has fewer than
    ``cap`` kept; the best skipped items fill the remaining slots; the slate keeps ranking
    order. Padding (-1) stays last.
    """
    c = np.where(top >= 0, categories[np.maximum(top, 0)], -1)
    by_cat = np.argsort(c, axis=1, kind="stable")
    sc = np.take_along_axis(c, by_cat, 1)
    col = np.broadcast_to(np.arange(top.shape[1]), sc.shape)
    start = np.maximum.accumulate(np.where(
        np.concatenate([np.ones((sc.shape[0], 1), bool), sc[:, 1:] != sc[:, :-1]], 1),
        col, 0), axis=1)
    rank = np.empty_like(by_cat)
    np.put_along_axis(rank, by_cat, col - start, 1)
    skipped = (c >= 0) & (rank >= cap)
    order = np.sort(np.argsort(skipped, axis=1, kind="stable")[:, :k], axis=1)
    return np.take_along_axis(top, order, 1)


@dataclass(frozen=True)
class Outcome:
    """Validation result of one candidate on one hold-out."""

    ndcg: float
    per_user: np.ndarray
    coverage: float  # distinct recommended items / catalog items
    personalization: float  # 1 - mean overlap of two users' top-k lists


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """One outcome from several folds of a shape: mean NDCG, coverage and personalization;
    the per-user values concatenated (the same users in the same order for every candidate,
    so differences stay paired)."""
    if len(outcomes) == 1:
        return outcomes[0]
    return Outcome(float(np.mean([o.ndcg for o in outcomes])),
                   np.concatenate([o.per_user for o in outcomes]),
                   float(np.mean([o.coverage for o in outcomes])),
                   float(np.mean([o.personalization for o in outcomes])))


def personalization(top: np.ndarray, k: int, pairs: int = 500, seed: int = 0) -> float:
    """1 - the mean share of items two random users' top-``k`` lists have in common."""
    if top.shape[0] < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, top.shape[0], pairs)
    b = (a + rng.integers(1, top.shape[0], pairs)) % top.shape[0]
    both = np.sort(np.concatenate([top[a, :k], top[b, :k]], axis=1), axis=1)
    # each list holds distinct items, so an item in both lists is an adjacent equal pair
    common = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)).sum(axis=1)
    return 1.0 - float(common.mean()) / k


def judge(scores: np.ndarray, hold: Holdout, k: int, cap: int | None = None,
          categories: np.ndarray | None = None, depth: int = 50, threads: int | None = None
          ) -> Outcome:
    """Rank every validation user from dense ``scores`` [U, n_items] as served and score it:
    seen items excluded (their scores become NaN, which the kernels never return), the
    compiled batch top-k (on ``threads`` threads; None: the kernel decides), the diversity cap
    on the top ``depth`` (``cap`` items per ``categories`` entry; both or neither). Modifies
    ``scores``."""
    scores.ravel()[hold.seen_flat] = np.nan
    top, _ = _fast.topk_batch(scores, max(depth, k) if cap is not None else k, threads=threads)
    if cap is not None:
        if categories is None:
            raise ValueError("judge: a diversity cap needs the items' categories")
        top = apply_cap(top, categories, k, cap)
    per_user = _ndcg(top, hold.relevant, np.diff(hold.targets.indptr), k)
    top = top[:, :k]
    items = np.unique(top[top >= 0])
    return Outcome(float(per_user.mean()) if per_user.size else 0.0, per_user,
                   items.size / max(scores.shape[1], 1), personalization(top, k))
