"""Latent-factor scoring: a user's vector (trained, or folded in from a history) against the
item factors, exact top-k over the catalog, in one chunk per core for large catalogs.

A library for the plugins that serve factor models (``als``, ``als-ivf``): it registers no
hooks, so importing it does not make one plugin depend on another.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rankly import _fast
from rankly.engine.api import Candidates, Model, Reason, UserFeatures, anchored_reasons

#: Only this many of the most recent history items are considered as a candidate's anchor.
ANCHOR_HISTORY = 50
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
    def from_model(cls, model: Model, part_name: str = "als") -> ALSScorer | None:
        """The scorer of ``model``'s factor part (None when it has none)."""
        part = model.part(part_name)
        if part is None:
            return None
        p = model.params(part_name)
        return cls(part["user_factors"], part["item_factors"],
                   float(p.get("regularization", 0.05)), float(p.get("alpha", 2.0)))

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
