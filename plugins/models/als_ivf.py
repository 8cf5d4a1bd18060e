"""Two-stage ALS candidates: probe the k-means clusters nearest the user, score only their items.

An IVF-style ("inverted file") index over the ALS item factors: at build time k-means splits
the items into ``n_clusters`` cells; at request time the user vector is scored against the
centroids, the ``nprobe`` best cells are gathered and ranked exactly with
``rankly._fast.score_topk``. Cost per request is O(C d + (N nprobe / C) d) instead of O(N d).

The index is the model part ``als-ivf`` (``centroids`` float32 [C, d], ``order`` int64 [N]
item indices grouped by cell, ``offsets`` int64 [C + 1]); :func:`build_index` writes it. A model
without the part gets one built when components are built, if the catalog is at most
``max_build_items`` (k-means on a large catalog belongs in the artifact, not in every worker).
Recall against exact scoring depends on how clustered the factors are: measure it
(``benchmarks/test_pipeline.py`` does) before choosing ``nprobe``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from rankly import _fast
from rankly.engine.api import Candidates, Model, ModelPart, Reason, UserFeatures, hookimpl
from rankly.plugins.models.factors import ALSScorer

NAME = "als-ivf"
log = logging.getLogger("rankly.als_ivf")
DEFAULTS: Mapping[str, Any] = {
    "n_clusters": 0,  # 0: about 4 * sqrt(N)
    "nprobe": 0,  # 0: about n_clusters / 128, at least 16
    "iterations": 8,
    "sample": 131_072,  # items k-means trains on (all items are then assigned)
    "seed": 0,
    "max_build_items": 200_000,
}


def default_clusters(n_items: int) -> int:
    return int(max(1, min(n_items, round(4 * np.sqrt(n_items)))))


def default_nprobe(n_clusters: int) -> int:
    """Cells to probe: on the 1M x 64 benchmark catalog 16 of 4000 already gave recall@10 1.0."""
    return int(min(n_clusters, max(16, n_clusters // 128)))


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the L2-nearest centroid for each row of ``x`` (argmax of x.c - |c|^2 / 2)."""
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(x.shape[0], dtype=np.int64)
    for lo in range(0, x.shape[0], chunk):
        block = np.asarray(x[lo:lo + chunk], dtype=np.float32)
        out[lo:lo + chunk] = np.argmax(block @ centroids.T - half, axis=1)
    return out


def kmeans(x: np.ndarray, n_clusters: int, iterations: int, sample: int,
           seed: int) -> np.ndarray:
    """Lloyd's k-means on a random sample of the rows of ``x``; return float32 centroids [C, d].

    Empty cells are re-seeded from random sample rows, so every centroid stays in the data.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    rows = np.sort(rng.choice(n, size=min(n, max(sample, n_clusters)), replace=False))
    train = np.asarray(x[rows], dtype=np.float32)
    centroids = train[rng.choice(train.shape[0], size=n_clusters, replace=False)].copy()
    for _ in range(iterations):
        cell = _nearest(train, centroids)
        counts = np.bincount(cell, minlength=n_clusters)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, cell, train)
        empty = counts == 0
        centroids = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        if empty.any():
            centroids[empty] = train[rng.choice(train.shape[0], size=int(empty.sum()))]
    return centroids


def build_index(item_factors: np.ndarray, n_clusters: int = 0, iterations: int = 8,
                sample: int = 131_072, seed: int = 0) -> ModelPart:
    """Cluster ``item_factors`` (float32 [N, d]) and return the ``als-ivf`` model part."""
    n = int(item_factors.shape[0])
    c = int(n_clusters) or default_clusters(n)
    centroids = kmeans(item_factors, c, iterations, sample, seed)
    cell = _nearest(item_factors, centroids)
    order = np.argsort(cell, kind="stable").astype(np.int64)
    offsets = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell, minlength=c), out=offsets[1:])
    return ModelPart(name=NAME, params={"n_clusters": c, "iterations": iterations,
                                        "sample": sample, "seed": seed},
                     arrays={"centroids": centroids, "order": order, "offsets": offsets})


class IVFCandidates:
    """FOR_YOU candidates from the ``nprobe`` cells whose centroids best match the user."""

    def __init__(self, scorer: ALSScorer, centroids: np.ndarray, order: np.ndarray,
                 offsets: np.ndarray, nprobe: int) -> None:
        self.scorer = scorer
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.order = np.asarray(order, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.nprobe = int(min(max(nprobe, 1), self.centroids.shape[0]))

    def probe(self, u: np.ndarray) -> np.ndarray:
        """Item indices of the cells to scan for user vector ``u`` (cell by cell)."""
        cs = self.centroids @ u
        if self.nprobe < cs.size:
            cells = np.argpartition(-cs, self.nprobe - 1)[: self.nprobe]
        else:
            cells = np.arange(cs.size)
        lo, hi = self.offsets[cells], self.offsets[cells + 1]
        return np.concatenate([self.order[a:b] for a, b in zip(lo.tolist(), hi.tolist(),
                                                                strict=True)])

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        if user.row < 0 and user.history.size == 0:
            return Candidates.empty()
        u = self.scorer.user_vector(user)
        idx = self.probe(u)
        sub = self.scorer.item_factors[idx]  # gathered rows: contiguous float32 [M, d]
        exclude = np.flatnonzero(np.isin(idx, user.seen)) if user.seen.size else None
        pos, _ = _fast.score_topk(sub, u, n, exclude=exclude)
        return Candidates.of(idx[pos], Reason.FOR_YOU)


def from_model(model: Model, options: Mapping[str, Any]) -> IVFCandidates | None:
    """Build the generator from the model's ``als`` part and its ``als-ivf`` index (or None)."""
    scorer = ALSScorer.from_model(model, "als")
    if scorer is None:
        return None
    opts = {k: options.get(k, v) for k, v in DEFAULTS.items()}
    part = model.part(NAME)
    if part is None:
        n = scorer.item_factors.shape[0]
        if n > int(opts["max_build_items"]):
            log.warning("model %s has no %s index and %d items (> max_build_items): "
                        "generator unavailable; build it into the artifact", model.version,
                        NAME, n)
            return None
        part = build_index(scorer.item_factors, int(opts["n_clusters"]),
                           int(opts["iterations"]), int(opts["sample"]),
                           int(opts["seed"])).arrays
    centroids = part["centroids"]
    nprobe = int(opts["nprobe"]) or default_nprobe(centroids.shape[0])
    return IVFCandidates(scorer, centroids, part["order"], part["offsets"], nprobe)


@hookimpl
def register_candidate_generators(register):
    register(NAME, lambda ctx: from_model(ctx.model, ctx.options), options=DEFAULTS)
