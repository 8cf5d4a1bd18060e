"""The ``rankly experiments`` subcommands: analyze, sample-size and assign."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .assignment import (
    ExperimentError,
    Status,
    assign_one,
    parse_experiment,
)
from .stats import ArmCounts, analyze, sample_size


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``experiments {analyze,sample-size,assign}`` on an argparse subparsers object.

    Every parser sets ``func`` to ``run``; call ``args.func(args)`` to get the exit status.
    """
    parser = subparsers.add_parser("experiments", help="analyze, size and debug experiments")
    parser.set_defaults(func=run, experiments_command=None)
    sub = parser.add_subparsers(dest="experiments_command", metavar="COMMAND")

    p = sub.add_parser("analyze", help="results of an experiment from per-arm counts")
    p.add_argument(
        "--arm",
        action="append",
        required=True,
        type=_arm,
        metavar="NAME:EXPOSURES:CONVERSIONS",
        help="one per arm, control first; NAME:EXPOSURES:CONVERSIONS[:CLICKS]",
    )
    p.add_argument("--weights", type=_floats, help="configured shares, e.g. 50,50 (default equal)")
    p.add_argument("--metric", choices=("conversion", "ctr"), default="conversion",
                   help="primary metric (default conversion)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--correction", choices=("holm", "bh"), default="holm",
                   help="multiple-comparison correction: Holm or Benjamini-Hochberg "
                        "(default holm)")
    p.add_argument("--mde", type=float, help="planned minimum detectable effect")
    p.add_argument("--absolute", action="store_true", help="--mde is absolute, not relative")
    p.add_argument("--json", action="store_true", help="print the full JSON document")
    p.set_defaults(func=run)

    p = sub.add_parser("sample-size", help="per-variant sample size and expected duration")
    p.add_argument("--baseline", type=float, required=True, help="control rate, e.g. 0.05")
    p.add_argument("--mde", type=float, required=True, help="effect to detect")
    p.add_argument("--relative", action="store_true", help="--mde is relative to the baseline")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="statistical power (default 0.8)")
    p.add_argument("--arms", type=int, default=2, help="variants, control included (default 2)")
    p.add_argument("--daily-traffic", type=float, help="users entering the experiment per day")
    p.add_argument("--unpooled", action="store_true", help="unpooled variance under H0")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)

    p = sub.add_parser("assign", help="print the variant a user gets (debugging)")
    p.add_argument("--experiment", required=True, help="experiment key")
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--weights", type=_floats, help="variant weights (default 50,50)")
    p.add_argument("--variants", help="comma-separated names (default control,treatment...)")
    p.add_argument("--seed", help="hash seed (default: the key)")
    p.add_argument("--phase", type=int, default=0, help="experiment phase (default 0)")
    p.add_argument("--coverage", type=float, default=1.0,
                   help="share of users in the experiment (default 1.0)")
    p.add_argument("--json", action="store_true", help="print the assignment as JSON")
    p.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the selected ``experiments`` subcommand; return the process exit status.

    0 on success, 2 on invalid input (the message goes to stderr).
    """
    out = out or sys.stdout
    command = getattr(args, "experiments_command", None)
    try:
        if command == "analyze":
            return _analyze(args, out)
        if command == "sample-size":
            return _sample_size(args, out)
        if command == "assign":
            return _assign(args, out)
    except (ValueError, ExperimentError) as exc:
        print(f"rankly experiments {command}: {exc}", file=sys.stderr)
        return 2
    print("rankly experiments: choose a command: analyze, sample-size, assign", file=sys.stderr)
    return 2


def _analyze(args: argparse.Namespace, out: TextIO) -> int:
    doc = analyze(
        args.arm,
        args.weights,
        args.metric,
        alpha=args.alpha,
        correction=args.correction,
        mde=args.mde,
        mde_relative=not args.absolute,
    )
    if args.json:
        out.write(json.dumps(doc, allow_nan=False, indent=2) + "\n")
        return 0
    metric = doc["metrics"][args.metric]
    out.write(f"verdict: {doc['verdict']} ({doc['verdict_reason']})\n")
    srm = doc["srm"]
    out.write(
        f"srm: p = {_fmt(srm['p_value'])}{'  ALERT: untrustworthy' if srm['alert'] else ''}\n"
    )
    for arm in doc["arms"]:
        r = metric["rates"][arm["name"]]
        out.write(
            f"  {arm['name']:<16} n={arm['exposures']:<10} rate={_fmt(r)}"
            f"  P(best)={_fmt(metric['p_best'][arm['name']])}\n"
        )
    for c in metric["comparisons"]:
        d, lift = c["diff"], c["relative_lift"]
        out.write(
            f"{c['variant']} vs {doc['control']}: diff={_fmt(d['estimate'])} "
            f"CI={_ci(d['ci'])}  lift={_fmt(lift['estimate'])} CI={_ci(lift['ci'])} "
            f"[{lift['status']}]  p={_fmt(c['z_test']['p_value'])} "
            f"(adj {_fmt(c['z_test'].get('p_value_adjusted'))})  "
            f"always-valid CI={_ci(c['sequential']['ci'])}  "
            f"P(beats control)={_fmt(c['bayes']['prob_beats_control'])}  -> {c['direction']}\n"
        )
    return 0


def _sample_size(args: argparse.Namespace, out: TextIO) -> int:
    doc = sample_size(
        args.baseline,
        args.mde,
        relative=args.relative,
        alpha=args.alpha,
        power=args.power,
        arms=args.arms,
        pooled=not args.unpooled,
        daily_traffic=args.daily_traffic,
    )
    if args.json:
        out.write(json.dumps(doc, allow_nan=False, indent=2) + "\n")
        return 0
    out.write(f"per variant: {doc['per_variant']}\n")
    out.write(f"total: {doc['total']} ({doc['arms']} arms)\n")
    if doc["days"] is not None:
        out.write(f"expected duration: {doc['days']} days\n")
    return 0


def _assign(args: argparse.Namespace, out: TextIO) -> int:
    weights = args.weights or [1.0, 1.0]
    names = (
        args.variants.split(",")
        if args.variants
        else ["control"]
        + [f"treatment{i}" if len(weights) > 2 else "treatment" for i in range(1, len(weights))]
    )
    if len(names) != len(weights):
        raise ValueError("--variants and --weights must have the same length")
    raw: dict[str, Any] = {
        "key": args.experiment,
        "status": Status.RUNNING.value,
        "phase": args.phase,
        "coverage": args.coverage,
        "variants": [{"name": n, "weight": w} for n, w in zip(names, weights, strict=True)],
    }
    if args.seed:
        raw["seed"] = args.seed
    experiment = parse_experiment(raw)
    a = assign_one(experiment, args.user)
    doc = {
        "experiment": experiment.key,
        "user": args.user,
        "seed": experiment.hash_seed,
        "variant": a.variant_name if a else None,
        "probability": a.probability if a else None,
        "phase": experiment.phase,
    }
    if args.json:
        out.write(json.dumps(doc) + "\n")
    else:
        out.write(f"{doc['variant'] if a else '(not in experiment: outside coverage)'}\n")
    return 0


def _arm(text: str) -> ArmCounts:
    parts = text.split(":")
    try:
        if len(parts) == 4:
            name, n, conv, clicks = parts
            return ArmCounts(name, int(n), int(clicks), int(conv))
        name, n, conv = parts
        return ArmCounts(name, int(n), 0, int(conv))
    except ValueError:  # also raised by unpacking the wrong number of parts
        raise argparse.ArgumentTypeError(
            f"expected NAME:EXPOSURES:CONVERSIONS[:CLICKS], got {text!r}"
        ) from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(":", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _ci(ci: Sequence[float | None] | None) -> str:
    return "n/a" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``experiments`` standalone (``python -m rankly.engine.experiments.cli analyze ...``)."""
    parser = argparse.ArgumentParser(prog="rankly")
    add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiments", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
