"""Probe: does a second model blended into EASE gain on the protocols? (issue 15 notes)

    python benchmarks/ensemble_probe.py

For each (variant, protocol) cell of benchmarks/protocols.py (seed 0), with each peer's
configuration as benchmarks/results/protocols.md reports it tuned for that cell: NDCG@10 of
``z(EASE) + b * z(ALS)`` and ``z(EASE) + b * z(item-kNN)`` over the test users, as a ratio to
EASE alone, and likewise for a user-kNN (cosine, the 50 nearest users, similarities
squared). The weights are chosen here on the test split, so the ratios are an upper bound
of what a validated blend could gain: if they are small, blending these peers cannot carry
the served default past the best tuned peer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocols as P  # noqa: E402

from rankly.plugins.scorers.blend import znorm_rows  # noqa: E402

#: (variant, protocol) -> (EASE lambda, ALS configuration, item-kNN k): the peers' tuned
#: choices in benchmarks/results/protocols.md
CELLS = {
    ("ml100k", "random"): (500, {"factors": 32, "regularization": 10.0, "alpha": 1.0}, 200),
    ("ml100k", "loo"): (200, {"factors": 128, "regularization": 10.0, "alpha": 1.0}, 200),
    ("ml100k-pos", "random"): (500, {"factors": 64, "regularization": 3.0, "alpha": 2.0}, 100),
    ("ml100k-pos", "loo"): (100, {"factors": 128, "regularization": 3.0, "alpha": 2.0}, 20),
    ("mlsmall", "random"): (500, {"factors": 64, "regularization": 10.0, "alpha": 1.0}, 100),
    ("mlsmall", "loo"): (50, {"factors": 64, "regularization": 3.0, "alpha": 2.0}, 10),
}
WEIGHTS = (0.1, 0.2, 0.35, 0.5)


def ndcg_of(scores: np.ndarray, split: P.Split) -> float:
    train = split.train
    seen = P.interaction_matrix(train)[split.test_users]
    top = P.top_k(scores, seen, np.ones(train.n_items, dtype=bool))
    lists = [list(r[r >= 0]) for r in top]
    return P.score_lists(lists, split.targets, P.catalog_size(train),
                         P._with_unknown(train.genre))["ndcg"]


def user_knn_scores(x, users: np.ndarray, k: int = 50, power: float = 2.0) -> np.ndarray:
    """Dense [len(users), n_items] user-kNN scores: cosine similarity to every other user,
    the ``k`` most similar kept (raised to ``power``), their items summed."""
    x = x.astype(np.float32)
    norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel()) + 1e-9
    sim = (x[users] @ x.T).toarray() / norms[users][:, None] / norms[None, :]
    sim[np.arange(users.size), users] = 0.0
    drop = np.argpartition(-sim, k, axis=1)[:, k:]
    np.put_along_axis(sim, drop, 0.0, axis=1)
    return np.asarray((x.T @ (sim ** power).T).T)


def main() -> int:
    for (variant, protocol), (lam, als_config, k) in CELLS.items():
        split = P.protocol_split(P.load_variant(variant, P.datasets_root()), protocol, 0)
        x = P.interaction_matrix(split.train)
        xq = x[split.test_users]
        ease = znorm_rows(next(P.ease_scores(x, xq, [lam])))
        als = znorm_rows(P.factor_scores("als", als_config, x, split.test_users))
        idx, sim = P.itemknn_neighbours(x, k)
        knn = znorm_rows(P.itemknn_scores(xq, idx, sim, k))
        uknn = znorm_rows(user_knn_scores(x, split.test_users).astype(np.float32))
        base = ndcg_of(ease, split)
        ratios = {}
        for b in WEIGHTS:
            ratios[f"+als {b}"] = ndcg_of(ease + b * als, split) / base
            ratios[f"+knn {b}"] = ndcg_of(ease + b * knn, split) / base
            ratios[f"+uknn {b}"] = ndcg_of(ease + b * uknn, split) / base
        print(f"{variant} {protocol}: EASE {base:.4f}; "
              + ", ".join(f"{name} {r:.3f}x" for name, r in ratios.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
