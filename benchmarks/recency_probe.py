"""Probe: can one time-aware item-item model serve every protocol? (issue 15 notes)

    python benchmarks/recency_probe.py [--variants ml100k,ml100k-pos,mlsmall]

For each variant, on the three protocols of benchmarks/protocols.py (seed 0), NDCG@10 of
three ways to make EASE time-aware, as a ratio to plain EASE on the same split (each at the
EASE lambda benchmarks/results/protocols.md reports tuned for the cell):

- ``global H``: the recency-weighted EASE peer: every training pair weighs
  ``2^(-age / H days)``, age counted from the newest training event;
- ``mix H``: ``0.7 z(EASE) + 0.3 z(global H)``, a partial dose of the same;
- ``gated H``: ``global H`` for users active in the last 30 days of training, plain EASE
  for the others (``2^(-days inactive / 30)`` of the decayed scores).

The half-life and the weights are not tuned on the test split, and nothing here picks one
per protocol: the ratios show how far apart the protocols pull. A time-aware model that a
global-temporal split rewards by tens of percent costs random and leave-last-one-out
hold-outs as much, and the per-user gate that spares those two takes the gain away.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocols as P  # noqa: E402
from ensemble_probe import ndcg_of  # noqa: E402

from rankly.plugins.scorers.blend import znorm_rows  # noqa: E402

#: (variant, protocol) -> the EASE lambda benchmarks/results/protocols.md reports tuned there
LAMBDAS = {
    ("ml100k", "random"): 500, ("ml100k", "loo"): 200, ("ml100k", "temporal"): 200,
    ("ml100k-pos", "random"): 500, ("ml100k-pos", "loo"): 100, ("ml100k-pos", "temporal"): 50,
    ("mlsmall", "random"): 500, ("mlsmall", "loo"): 50, ("mlsmall", "temporal"): 2000,
}
HALF_LIVES = (90.0, 365.0)
GATE_DAYS = 30.0
MIX = 0.3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="ml100k,ml100k-pos,mlsmall")
    args = ap.parse_args(argv)
    for variant in args.variants.split(","):
        data = P.load_variant(variant, P.datasets_root())
        for protocol in P.PROTOCOLS:
            split = P.protocol_split(data, protocol, 0)
            train, query = split.train, split.test_users
            lam = LAMBDAS[(variant, protocol)]
            x = P.interaction_matrix(train)
            plain = znorm_rows(next(P.ease_scores(x, x[query], [lam])))
            base = ndcg_of(plain, split)
            last = np.zeros(train.n_users)
            np.maximum.at(last, train.user, train.ts)
            inactive = (train.ts.max() - last[query]) / P.DAY
            gate = np.exp2(-inactive / GATE_DAYS).astype(np.float32)[:, None]
            ratios = {}
            for half in HALF_LIVES:
                w = P.recency_weights(train, half)
                xw = P.interaction_matrix(train, w)
                decayed = znorm_rows(next(P.ease_scores(xw, xw[query],
                                                        [P.recency_lambda(w, lam)])))
                ratios[f"global {half:g}"] = ndcg_of(decayed, split) / base
                ratios[f"mix {half:g}"] = ndcg_of((1 - MIX) * plain + MIX * decayed,
                                                  split) / base
                ratios[f"gated {half:g}"] = ndcg_of((1 - gate) * plain + gate * decayed,
                                                    split) / base
            print(f"{variant} {protocol} ({query.size} users): EASE {base:.4f}; "
                  + ", ".join(f"{name} {r:.3f}x" for name, r in ratios.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
