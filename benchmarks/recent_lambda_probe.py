"""Probe: does scoring the recent history with a lower-lambda EASE beat the recency mix?
(issue 15 notes)

    python benchmarks/recent_lambda_probe.py [--variants ml100k,ml100k-pos,mlsmall]

For each variant, on the three protocols of benchmarks/protocols.py (seed 0), NDCG@10 as a
ratio to plain EASE (``X B(lambda)``) of two ways to weigh a user's latest items, each at the
mix weights ``m`` of :data:`MIXES`:

- ``hist-mix``: ``(1 - m) X B + m R B``, the blend's history mix (``R``: the user's newest
  items, weight ``2^(-position / 2)``, at most 32);
- ``low-lambda recent``: ``(1 - m) X B + m R B(lambda / 5)``: the recent part through an
  EASE that leans less on popular co-occurrence, which next-item protocols prefer.

Both z-scored per row as the blend does. ``lambda`` is what rankly's random validation serves
on each variant (:data:`LAMBDAS`). The weight is not validated: read the ratios as the
trade-off each family offers (the gain on leave-last-one-out and temporal against the cost on
the random hold-out), not as what a validated blend would reach.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocols as P  # noqa: E402
from ensemble_probe import ndcg_of  # noqa: E402

from rankly.plugins.scorers.blend import znorm_rows  # noqa: E402

#: The EASE lambda per variant: near what `rankly train` serves there (its random validation)
LAMBDAS = {"ml100k": 500.0, "ml100k-pos": 500.0, "mlsmall": 250.0}
MIXES = (0.3, 0.6)
HALF_LIFE_ITEMS = 2.0
RECENT_ITEMS = 32


def recent_matrix(train: P.Data, users: np.ndarray) -> sp.csr_matrix:
    """[len(users), n_items]: each user's newest distinct items, ``2^(-position / h)``."""
    order = np.lexsort((train.item, train.ts, train.user))
    u, i = train.user[order], train.item[order]
    starts, ends = np.searchsorted(u, users), np.searchsorted(u, users, side="right")
    rows, cols, vals = [], [], []
    for r, (a, b) in enumerate(zip(starts, ends, strict=True)):
        newest = i[a:b][::-1]
        _, first = np.unique(newest, return_index=True)
        first = np.sort(first)[:RECENT_ITEMS]
        rows += [r] * first.size
        cols += newest[first].tolist()
        vals += np.exp2(-np.arange(first.size) / HALF_LIFE_ITEMS).tolist()
    return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                         shape=(users.size, train.n_items))


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(LAMBDAS))
    args = parser.parse_args()
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        lam = LAMBDAS[variant]
        data = P.load_variant(variant, P.datasets_root())
        for protocol in ("random", "loo", "temporal"):
            split = P.protocol_split(data, protocol, 0)
            x = P.interaction_matrix(split.train)
            x.data[:] = 1.0
            full = np.asarray(x[split.test_users] @ ease_weights(x, lam))
            recent = recent_matrix(split.train, split.test_users)
            rec_high = np.asarray(recent @ ease_weights(x, lam))
            rec_low = np.asarray(recent @ ease_weights(x, lam / 5.0))
            base = ndcg_of(znorm_rows(full.astype(np.float32)), split)
            cells = []
            for m in MIXES:
                mix = ndcg_of(znorm_rows(((1 - m) * full + m * rec_high).astype(np.float32)),
                              split) / base
                low = ndcg_of(znorm_rows(((1 - m) * full + m * rec_low).astype(np.float32)),
                              split) / base
                cells.append(f"m {m}: hist-mix {mix:.3f}x, low-lambda recent {low:.3f}x")
            print(f"{variant} {protocol}: plain EASE {base:.4f}; " + "; ".join(cells),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
