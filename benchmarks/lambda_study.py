"""Study: how to read EASE's lambda off a noisy validation curve (issue 15 notes).

    python benchmarks/lambda_study.py [--variants ml100k,ml100k-pos,mlsmall] [--seeds 0,1,2]

For each random cell of benchmarks/protocols.py (its splits, its metric code), plain EASE
(no dropout, no diagonal bound) at every lambda of a factor-sqrt(2) grid is scored twice:

- on rankly's own validation hold-out, carved from the cell's train part the way
  ``rankly train`` carves it (``holdouts.make_holdout``, the random shape, seed 0, the
  validation items the blend keeps), which is all a selection rule may look at;
- on the cell's test split, which only judges the rules.

Each rule picks a lambda from the validation curve alone; its test NDCG@10 (read off the test
curve, interpolated in log(lambda)) is divided by the test NDCG@10 of the harness's tuned EASE
peer for the cell (its cache, or recomputed with ``--peers``). The rules:

- ``walk``: the blend's former rule, a factor-2 walk from 250 that stops at the first step
  that does not improve, serving the grid point;
- ``vertex``: the same walk, serving the vertex of the parabola in log(lambda) through the
  best grid point and its two neighbours (``blend.smoothed_peak``), the served default;
- ``grid max``: the best point of the factor-sqrt(2) grid (twice the fits);
- ``oracle``: the best test point of the grid (no rule can do better on this grid).

Results go to stdout and benchmarks/results/lambda_study.json. About 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import protocols as P  # noqa: E402

from rankly.engine.offline import datasets  # noqa: E402
from rankly.engine.offline.interactions import build_training_data  # noqa: E402
from rankly.plugins.models import holdouts, linear  # noqa: E402
from rankly.plugins.scorers import blend  # noqa: E402

#: a factor-sqrt(2) grid: the factor-2 grid of the walk at the even positions
GRID = tuple(float(250.0 * 2.0 ** (k / 2)) for k in range(-4, 7))
FACTOR2 = tuple(range(0, len(GRID), 2))


def rankly_training_data(split: P.Split, tmp: Path):
    """The cell's train part as ``rankly train`` reads it (events CSV plus the item file)."""
    train = split.train
    path = tmp / "train.csv"
    order = np.argsort(train.ts, kind="stable")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("user,item,timestamp\n")
        for u, i, t in zip(train.user_ids[train.user[order]], train.item_ids[train.item[order]],
                           train.ts[order].tolist(), strict=True):
            fh.write(f"{u},{i},{t}\n")
    ds = datasets.load(path, str(train.items_file), format="events-csv")
    return build_training_data(ds.interactions, ds.items)


def validation_curve(data) -> list[float]:
    """NDCG@10 of plain EASE at each lambda of :data:`GRID` on rankly's random hold-out."""
    hold = holdouts.make_holdout(data, "random", 0.2, 2000, 0)
    x = hold.train.binary_matrix()
    limit = blend.validation_item_limit(np.diff(data.matrix.tocsc().indptr), blend.OPTIONS)
    items = linear.active_items(x, 1, limit)
    g = linear.gram(x[:, items])
    hist = holdouts.history_matrix(hold.train.users, hold.rows, data.n_items, 0.0, 0.0)
    out = []
    for lam in GRID:
        model = linear.EaseScorer(items, linear.item_weights(g, lam), data.n_items)
        out.append(holdouts.judge(model.batch(hist), hold, P.K).ndcg)
    return out


def test_curve(split: P.Split) -> list[float]:
    """NDCG@10 of plain EASE at each lambda of :data:`GRID` on the cell's test split."""
    x = P.interaction_matrix(split.train)
    g = linear.gram(x)
    xq = x[split.test_users]
    allowed = np.asarray(x.sum(axis=0)).ravel() > 0
    out = []
    for lam in GRID:
        lists = P.top_k(xq @ linear.item_weights(g, lam), xq, allowed)
        lists = [[int(i) for i in row if i >= 0] for row in lists]
        out.append(P.score_lists(lists, split.targets, P.catalog_size(split.train),
                                 split.train.genre)["ndcg"])
    return out


def walk(scores: list[float]) -> int:
    """The factor-2 walk of the blend on :data:`FACTOR2`: from 250 upwards, then downwards,
    while the next step improves. Returns a :data:`GRID` index."""
    at = FACTOR2.index(GRID.index(250.0))
    for step in (1, -1):
        while 0 <= at + step < len(FACTOR2) and scores[FACTOR2[at + step]] > scores[FACTOR2[at]]:
            at += step
    return FACTOR2[at]


def rules(val: list[float], test: list[float]) -> dict[str, float]:
    """The lambda each rule picks."""
    at = walk(val)
    coarse = [GRID[i] for i in FACTOR2]
    return {
        "walk": GRID[at],
        "vertex": blend.smoothed_peak(coarse, FACTOR2.index(at), [val[i] for i in FACTOR2]),
        "grid max": GRID[int(np.argmax(val))],
        "oracle": GRID[int(np.argmax(test))],
    }


def at_lambda(curve: list[float], lam: float) -> float:
    return float(np.interp(np.log(lam), np.log(GRID), curve))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="ml100k,ml100k-pos,mlsmall")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(HERE / "results" / "lambda_study.json"))
    args = parser.parse_args(argv)
    root = P.datasets_root()
    cells = []
    for variant in args.variants.split(","):
        data = P.load_variant(variant, root)
        for seed in (int(s) for s in args.seeds.split(",")):
            split = P.protocol_split(data, "random", seed)
            peer = P.run_cell(variant, "random", seed, data, ["ease"], [])["models"]["ease"]
            with tempfile.TemporaryDirectory(prefix="rankly-lambda-") as tmp:
                val = validation_curve(rankly_training_data(split, Path(tmp)))
            test = test_curve(split)
            picked = rules(val, test)
            ratios = {name: at_lambda(test, lam) / peer["ndcg"] for name, lam in picked.items()}
            cells.append({"variant": variant, "seed": seed, "grid": GRID, "validation": val,
                          "test": test, "peer": {"config": peer["config"],
                                                 "ndcg": peer["ndcg"]},
                          "lambda": picked, "ratio": ratios})
            print(f"{variant} random s{seed}: " + ", ".join(
                f"{name} {picked[name]:.0f} -> {ratios[name]:.3f}x" for name in picked),
                flush=True)
    print("\nrule: test NDCG@10 / tuned peer EASE, min and mean over the cells")
    for name in cells[0]["ratio"]:
        values = [c["ratio"][name] for c in cells]
        print(f"  {name:<9} min {min(values):.3f}  mean {np.mean(values):.3f}")
    Path(args.out).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
