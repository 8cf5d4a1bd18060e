"""The ``rankly experiments`` subcommands: analyze, sample-size and assign."""

from __future__ import annotations

import argparse
import csv
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
from .stats import IMPRESSION_METRICS, METRICS, ArmCounts, ImpressionCounts, analyze, sample_size


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
    p.add_argument("--metric", choices=METRICS, default="conversion",
                   help="primary metric (default conversion): per exposed user (ctr, "
                        "conversion) or per impression (impression_ctr, "
                        "impression_conversion: needs --impressions)")
    p.add_argument("--guardrail", action="append", choices=METRICS, default=[],
                   help="a metric no variant may be significantly worse on (repeatable)")
    p.add_argument("--impressions", metavar="CSV",
                   help="per-user impression counts, header arm,user,impressions,clicks,"
                        "conversions: adds the per-impression results (CTR and conversion "
                        "per served item, user-clustered variance)")
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
    impressions = None
    if args.impressions:
        impressions = read_impressions(args.impressions, [a.name for a in args.arm])
    doc = analyze(
        args.arm,
        args.weights,
        args.metric,
        guardrails=args.guardrail,
        alpha=args.alpha,
        correction=args.correction,
        mde=args.mde,
        mde_relative=not args.absolute,
        impressions=impressions,
    )
    if args.json:
        out.write(json.dumps(doc, allow_nan=False, indent=2) + "\n")
        return 0
    render_analysis(doc, out)
    return 0


def render_analysis(doc: dict[str, Any], out: TextIO) -> None:
    """The results document as text: verdict, SRM, the primary metric per arm and per
    comparison, each guardrail's comparisons, and the per-impression results when present."""
    out.write(f"verdict: {doc['verdict']} ({doc['verdict_reason']})\n")
    srm = doc["srm"]
    out.write(
        f"srm: p = {_fmt(srm['p_value'])}{'  ALERT: untrustworthy' if srm['alert'] else ''}\n"
    )
    primary = doc["primary_metric"]
    metric = doc["metrics"][primary]
    per_imp = {a["name"]: a for a in doc.get("per_impression", {}).get("arms", ())}
    out.write(f"primary metric: {primary}"
              f"{' (per impression)' if primary in IMPRESSION_METRICS else ' (per user)'}\n")
    for arm in doc["arms"]:
        name = arm["name"]
        n = (f"impressions={per_imp[name]['impressions']:<10}" if primary in IMPRESSION_METRICS
             else f"n={arm['exposures']:<10}")
        best = metric.get("p_best")
        out.write(f"  {name:<16} {n} rate={_fmt(metric['rates'][name])}"
                  + (f"  P(best)={_fmt(best[name])}" if best else "") + "\n")
    for c in metric["comparisons"]:
        out.write(f"{c['variant']} vs {doc['control']}: {_comparison(c)}\n")
    for g in doc["guardrails"]:
        for c in doc["metrics"][g]["comparisons"]:
            out.write(f"guardrail {g}: {c['variant']} vs {doc['control']}: "
                      f"{_comparison(c)}\n")
    if per_imp:
        pi = doc["per_impression"]
        out.write("per impression (user-clustered variance):\n")
        for arm in pi["arms"]:
            out.write(f"  {arm['name']:<16} impressions={arm['impressions']:<10} "
                      f"ctr={_fmt(arm['ctr'])} (se {_fmt(arm['ctr_se'])})  "
                      f"conversion={_fmt(arm['conversion_rate'])} "
                      f"(se {_fmt(arm['conversion_rate_se'])})\n")
        for name, m in pi["metrics"].items():
            for c in m["comparisons"]:
                out.write(f"impression_{name}: {c['variant']} vs {pi['control']}: "
                          f"{_comparison(c)}\n")


def _comparison(c: dict[str, Any]) -> str:
    d, lift = c["diff"], c["relative_lift"]
    bayes = c.get("bayes")
    return (f"diff={_fmt(d['estimate'])} CI={_ci(d['ci'])}  lift={_fmt(lift['estimate'])} "
            f"CI={_ci(lift['ci'])} [{lift['status']}]  p={_fmt(c['z_test']['p_value'])} "
            f"(adj {_fmt(c['z_test'].get('p_value_adjusted'))})  "
            f"always-valid CI={_ci(c['sequential']['ci'])}"
            + (f"  P(beats control)={_fmt(bayes['prob_beats_control'])}" if bayes else "")
            + f"  -> {c['direction']}")


#: Columns of ``rankly experiments analyze --impressions``: one row per (arm, user).
IMPRESSION_COLUMNS = ("arm", "user", "impressions", "clicks", "conversions")


def read_impressions(path: str, arms: Sequence[str]) -> list[ImpressionCounts]:
    """Per-arm per-impression sums (in ``arms`` order) from a CSV of per-user counts."""
    rows: dict[str, dict[str, dict[str, int]]] = {a: {} for a in arms}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(IMPRESSION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(sorted(missing))} "
                             f"(expected {','.join(IMPRESSION_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            arm = row["arm"]
            if arm not in rows:
                raise ValueError(f"{path}:{line}: arm {arm!r} is not one of the --arm names")
            try:
                got = {k: int(row[c]) for k, c in (("n", "impressions"), ("x", "clicks"),
                                                   ("c", "conversions"))}
            except ValueError:
                raise ValueError(f"{path}:{line}: counts must be integers") from None
            user = rows[arm].setdefault(row["user"], {"n": 0, "x": 0, "c": 0})
            for k, v in got.items():
                user[k] += v
    return [ImpressionCounts.of_users(a, list(rows[a].values())) for a in arms]


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
