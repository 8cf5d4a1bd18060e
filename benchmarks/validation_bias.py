"""How well the blend's random validation shape predicts a component's cost on a random split.

For each random split of ``benchmarks/protocols.py`` (same loading, splits and metrics), rankly
is trained twice through its CLI: once with every blend component off (the plain tuned EASE)
and once with one component forced on (by default ``sequence`` at weight 0.05; the diversity
cap still validated at its usual 1%). The training report gives the validation NDCG of both on
the random shape; the split's test users give the test NDCG of both. A faithful validation
shows the same relative change on both.

    python benchmarks/validation_bias.py [--variants mlsmall,ml100k] [--seeds 0,1,2]
        [--component sequence|history|popularity] [--weight 0.05] [--full-items]

``--full-items`` validates on as many items as the served EASE keeps (``validation_mass`` 1,
``max_validation_items`` 6000) instead of the items that hold 99% of the events (at most
3,000). Results go to stdout and ``benchmarks/results/validation_bias.json`` (appended).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocols as P  # noqa: E402

RESULTS = P.REPO / "benchmarks" / "results" / "validation_bias.json"
OFF = {"RANKLY_PLUGINS__BLEND__MIXES": "[]", "RANKLY_PLUGINS__BLEND__SEQ_WEIGHTS": "[]",
       "RANKLY_PLUGINS__BLEND__POP_WEIGHTS": "[]"}
#: The grid that forces one component at ``weight`` (its other settings at their defaults)
COMPONENTS = {
    "sequence": lambda w: {"RANKLY_PLUGINS__BLEND__SEQ_WEIGHTS": f"[{w}]"},
    "history": lambda w: {"RANKLY_PLUGINS__BLEND__MIXES": f"[{w}]",
                          "RANKLY_PLUGINS__BLEND__HISTORY_HALF_LIVES": "[2]"},
    "popularity": lambda w: {"RANKLY_PLUGINS__BLEND__POP_WEIGHTS": f"[{w}]",
                             "RANKLY_PLUGINS__BLEND__POP_HALF_LIVES": "[0]",
                             "RANKLY_PLUGINS__BLEND__POP_GATES": "[0]"},
}
#: Accept the forced component whatever it costs; the diversity cap keeps its own 1% test
FORCE = {"RANKLY_PLUGINS__BLEND__MAX_LOSS": "1", "RANKLY_PLUGINS__BLEND__DIVERSITY_MAX_LOSS":
         "0.01"}
FULL_ITEMS = {"RANKLY_PLUGINS__BLEND__VALIDATION_MASS": "1.0",
              "RANKLY_PLUGINS__BLEND__MAX_VALIDATION_ITEMS": "6000"}


def train_and_test(split: P.Split, env: dict[str, str]) -> dict[str, float | str]:
    """rankly trained on ``split`` with ``env`` added: its test NDCG@10 and the chosen blend's
    and the plain model's random-shape validation NDCG@10 (from the model's manifest)."""
    result = P.evaluate_rankly(split, env=env)
    if "error" in result:
        raise SystemExit(result["error"])
    blend = next((line.split(": ", 1)[1].strip() for line in result["train_log"].splitlines()
                  if "blend (" in line), "")
    return {"test": result["ndcg"], "val": result["blend"]["validation_ndcg"]["random"],
            "val_plain": result["blend"]["plain_ndcg"]["random"], "blend": blend,
            "train_seconds": result["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="mlsmall,ml100k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--component", default="sequence", choices=sorted(COMPONENTS))
    parser.add_argument("--weight", type=float, default=0.05)
    parser.add_argument("--full-items", action="store_true")
    args = parser.parse_args(argv)
    root = P.datasets_root()
    forced = {**OFF, **COMPONENTS[args.component](args.weight), **FORCE}
    extra = FULL_ITEMS if args.full_items else {}
    rows = []
    print(f"{args.component} {args.weight:g}"
          + (" (validation on the served item count)" if args.full_items else ""))
    print("| variant | seed | validation change | test change | test plain | test forced "
          "| train s (forced) |")
    print("|---|---|---|---|---|---|---|")
    for variant in [v for v in args.variants.split(",") if v]:
        data = P.load_variant(variant, root)
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            split = P.random_split(data, seed)
            plain = train_and_test(split, {**OFF, **extra})
            comp = train_and_test(split, {**forced, **extra})
            row = {"variant": variant, "seed": seed, "plain": plain, "forced": comp,
                   "val_change": comp["val"] / comp["val_plain"] - 1.0,
                   "test_change": comp["test"] / plain["test"] - 1.0}
            rows.append(row)
            print(f"| {variant} | {seed} | {row['val_change']:+.1%} | {row['test_change']:+.1%} "
                  f"| {plain['test']:.4f} | {comp['test']:.4f} | {comp['train_seconds']} |",
                  flush=True)
    record = {"command": " ".join(["python", "benchmarks/validation_bias.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": P._commit(), "component": args.component, "weight": args.weight,
              "full_items": args.full_items, "rows": rows}
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else []
    RESULTS.write_text(json.dumps({"runs": [*runs, record]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
