"""Offline evaluation (`rankly evaluate`).

Splits and the evaluation loop: train each model setup on the train part, rank the whole
train catalogue for every test user through the same plugin components the server uses
(candidate generators -> scorer -> optional per-category cap), and report the metrics for
warm and cold users separately. The metrics at k and the per-user work shared with the Ray
engine live in :mod:`.batch`, as does ``rankly recommend`` (``name as name`` imports keep
them importable from here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .. import pipeline
from ..config import (
    PipelineSettings,
    Settings,
    load_settings,
    non_negative_int,
    positive_int,
)
from ..model import Model
from ..plugins import check_plugin_sections, collect, collect_all, make_plugin_manager
from ..runtime import serving_defaults
from ..types import DataRefused, ModelPart
from . import datasets
from . import progress as progress_bars
from .batch import (
    MetricsJob,
    coverage,
    serving_runtime,
    user_metrics,
)
from .interactions import Interactions, TrainingData, build_training_data
from .recommend import add_engine_arguments, engine_from_args
from .training import DEFAULT_TRAINERS, absorb_tuned, trainer_options

# --- splits --------------------------------------------------------------------------------


def split_temporal(data: Interactions, quantile: float = 0.8) -> tuple[Interactions, Interactions]:
    """Cut all events at the ``quantile`` of timestamps: ``ts < T`` is train, the rest test."""
    cut = np.quantile(data.timestamps, quantile, method="lower")
    train = data.timestamps < cut
    return data.take(train), data.take(~train)


def split_user_last(data: Interactions, fraction: float = 0.2) -> tuple[Interactions, Interactions]:
    """Hold out each user's last ``fraction`` of events by (timestamp, item id) as test.

    At least one event per user is held out and at least one stays in train; users with a
    single event stay entirely in train. Every test user is therefore warm.
    """
    users = np.asarray(data.user_ids, dtype=str)
    order = np.lexsort((np.asarray(data.item_ids, dtype=str), data.timestamps, users))
    u = users[order]
    _, inv, counts = np.unique(u, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)])[inv]
    rank = np.arange(u.size) - starts
    n_test = np.where(counts >= 2, np.clip(np.ceil(counts * fraction), 1, counts - 1), 0)
    test = np.zeros(u.size, dtype=bool)
    test[order] = rank >= (counts - n_test)[inv]
    return data.take(~test), data.take(test)


SPLITS = {"temporal": split_temporal, "user-last": split_user_last}

# --- the evaluation loop -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One evaluated model setup: parts to train and the pipeline plan that serves them."""

    trainers: tuple[tuple[str, Mapping[str, Any]], ...]
    candidates: tuple[str, ...]
    scorers: tuple[str, ...]
    rerankers: tuple[str, ...] = ()
    label: str = ""


IMPLICIT_PEER = {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15,
                 "backend": "implicit"}
#: Exactly what `rankly train` fits by default and how the default settings serve it.
SERVED_TRAINERS: tuple[tuple[str, Mapping[str, Any]], ...] = tuple(
    (t, {}) for t in DEFAULT_TRAINERS)
_SERVED = PipelineSettings()
SETUPS: Mapping[str, Setup] = {
    "pop": Setup((("pop", {}),), ("popular",), ("popular",)),
    "itemknn": Setup((("pop", {}), ("itemknn", {})), ("itemknn", "popular"), ("itemknn",)),
    "ease": Setup((("pop", {}), ("ease", {"lambda": 500.0})), ("ease", "popular"), ("ease",),
                  label="EASE, lambda 500 (peer)"),
    "als": Setup((("pop", {}), ("als", {})), ("als", "popular"), ("als",)),
    "implicit-als": Setup((("pop", {}), ("als", IMPLICIT_PEER)), ("als", "popular"), ("als",),
                          label="implicit ALS, library defaults (peer)"),
    "blend": Setup(SERVED_TRAINERS, _SERVED.candidates, _SERVED.scorers, (),
                   label="default served model without its reranker"),
    "served": Setup(SERVED_TRAINERS, _SERVED.candidates, _SERVED.scorers, _SERVED.rerankers,
                    label="default served pipeline (blend + diversity reranker)"),
}
#: The peers the default served pipeline must match (issue #3's quality bar).
PEERS = ("pop", "ease", "implicit-als")
DEFAULT_MODELS = ("pop", "itemknn", "ease", "als", "implicit-als", "blend", "served")


@dataclass
class Result:
    """Metrics of one setup: per user group, each an average over its users."""

    name: str
    train_seconds: float
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    label: str = ""
    cap: int | None = None
    #: Why the setup was not evaluated: a trainer it cannot go without refused the data
    #: (:class:`~rankly.engine.api.DataRefused`, e.g. EASE on a catalog too large for it)
    skipped: str | None = None


def train_parts(data: TrainingData, trainers: Iterable[tuple[str, Mapping[str, Any]]],
                pm: Any, settings: Settings,
                tuned: dict[str, dict[str, Any]] | None = None) -> list[ModelPart]:
    """Fit each named trainer with its options as `rankly train` builds them
    (:func:`training.trainer_options`); ``tuned`` carries what earlier parts chose for later
    trainers across calls (updated in place)."""
    registry = collect(pm, "trainers")
    tuned = {} if tuned is None else tuned
    parts: list[ModelPart] = []
    for name, opts in trainers:
        part = registry.get(name).fit(data, trainer_options(name, tuned, settings, opts))
        absorb_tuned(tuned, part)
        parts.append(part)
    return parts


def in_memory_model(data: TrainingData, parts: Sequence[ModelPart]) -> Model:
    manifest = {"parts": {p.name: {"params": dict(p.params), "metrics": dict(p.metrics)}
                          for p in parts}}
    return Model("in-memory", manifest, data.catalog, data.users,
                 {p.name: dict(p.arrays) for p in parts})


def test_targets(data: TrainingData, test: Interactions, exclude_seen: bool,
                 min_weight: float = 0.0, event_types: Sequence[str] = ()
                 ) -> dict[str, np.ndarray]:
    """Relevant item indices per test user (minus train-seen ones when ``exclude_seen``).

    Test items missing from the train catalog (cold items) get distinct negative indices: they
    can never be recommended, but they count in recall's denominator.
    """
    keep = np.asarray(test.weights) >= min_weight
    if event_types and test.event_types is not None:
        keep &= np.isin(test.event_types, list(event_types))
    item_ids = np.asarray(test.item_ids, dtype=str)[keep].tolist()
    idx = data.catalog.lookup(item_ids).tolist()
    cold: dict[str, int] = {}
    out: dict[str, set[int]] = {}
    for uid, iid, i in zip(np.asarray(test.user_ids, dtype=str)[keep].tolist(), item_ids, idx,
                           strict=True):
        if i < 0:
            i = cold.setdefault(iid, -2 - len(cold))
        out.setdefault(uid, set()).add(i)
    targets = {}
    for uid, items in out.items():
        rel = np.fromiter(sorted(items), dtype=np.int64)
        if exclude_seen:
            rel = rel[~np.isin(rel, data.users.history(data.users.row(uid)))]
        if rel.size:
            targets[uid] = rel
    return targets


def _with_cap(settings: Settings, cap: int | None) -> Settings:
    if cap is None:
        return settings
    return settings.replace(plugins={**settings.plugins,
                                     "diversity": {**settings.plugin_options("diversity"),
                                                   "cap": int(cap)}})


def served_cap(settings: Settings) -> int | None:
    """The diversity cap configured for the pipeline, or None: the model's own (the cap
    `rankly train` validated, see plugins/scorers/blend.py)."""
    cap = settings.plugin_options("diversity").get("cap")
    return None if cap is None else int(cap)


def evaluate_setup(name: str, setup: Setup, data: TrainingData, targets: Mapping[str, np.ndarray],
                   settings: Settings, pm: Any, k: int, cap: int | None, exclude_seen: bool,
                   parts_cache: dict[str, ModelPart] | None = None, engine: Any = None) -> Result:
    """Train ``setup`` on ``data`` and compute every metric over the users of ``targets``.

    Each user is ranked by the serving pipeline (:func:`rank_user`) with ``setup``'s plan;
    ``cap`` is the diversity reranker's cap when the plan has that reranker. ``engine``
    (e.g. :class:`rankly.engine.offline.batch_ray.RayEngine`) ranks the users elsewhere, block by
    block, and gives back the same rows in the same order.
    """
    started = time.perf_counter()
    parts_cache = {} if parts_cache is None else parts_cache
    parts = []
    tuned: dict[str, dict[str, Any]] = {}
    for trainer, opts in setup.trainers:
        # what an earlier part of this setup tuned for the trainer is part of its identity
        key = f"{trainer}:{json.dumps([tuned.get(trainer, {}), opts], sort_keys=True)}"
        if key not in parts_cache:
            try:
                parts_cache[key] = train_parts(data, [(trainer, opts)], pm, settings, tuned)[0]
            except DataRefused as exc:
                # as `rankly train` does: a part that refuses the data is left out, and a
                # setup that is that part (a peer: pop + one model) is reported as skipped
                if trainer == "pop" or len(setup.trainers) <= 2:
                    return Result(name, round(time.perf_counter() - started, 2),
                                  label=setup.label, skipped=str(exc))
                continue  # e.g. EASE on a catalog too large for it: the blend goes without
        absorb_tuned(tuned, parts_cache[key])
        parts.append(parts_cache[key])
    train_seconds = time.perf_counter() - started
    model = in_memory_model(data, parts)
    capped = "diversity" in setup.rerankers
    if capped and cap is None:
        # the reranker is built as the server builds it, with the cap training chose for
        # the model (None: no cap); the metrics check that cap, not the plugin's default
        cap = serving_defaults(model).get("diversity", {}).get("cap")
    run_settings = _with_cap(settings, cap if capped else None)
    run_settings = run_settings.replace(pipeline=dataclasses.replace(
        run_settings.pipeline, candidates=setup.candidates, scorers=setup.scorers,
        rerankers=setup.rerankers, exclude_seen=exclude_seen))
    plan = pipeline.Plan(setup.candidates, setup.scorers, setup.rerankers)
    pop = np.diff(data.matrix.tocsc().indptr)
    job = MetricsJob(plan, k, cap if capped and cap else 3, exclude_seen, pop, data.n_users)
    if engine is None:
        rows = user_metrics(serving_runtime(model, run_settings, pm), job, targets)
    else:
        rows = engine.user_metrics(data, parts, run_settings, job, targets)
    groups: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    lists: dict[str, list[np.ndarray]] = {"warm": [], "cold": []}
    for group, metrics, items in rows:
        groups[group].append(metrics)
        lists[group].append(items)
    result = Result(name, round(train_seconds, 2), label=setup.label,
                    cap=cap if capped else None)
    for group, rows in [*groups.items(), ("all", groups["warm"] + groups["cold"])]:
        if not rows:
            continue
        avg = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
        group_lists = lists[group] if group != "all" else lists["warm"] + lists["cold"]
        avg["coverage"] = coverage(group_lists, data.n_items)
        avg["users"] = float(len(rows))
        result.groups[group] = avg
    return result


def quality_bar(results: Sequence[Result]) -> dict[str, Any] | None:
    """Compare the served pipeline with the peers and its uncapped twin (warm NDCG@k)."""
    by = {r.name: r.groups.get("warm", {}).get("ndcg") for r in results}
    if by.get("served") is None:
        return None
    peers = {p: by[p] for p in PEERS if by.get(p) is not None}
    out: dict[str, Any] = {"served_ndcg": by["served"], "peers": peers}
    if peers:
        best = max(peers, key=lambda p: peers[p])
        out.update(best_peer=best, best_peer_ndcg=peers[best],
                   meets_bar=bool(by["served"] >= peers[best] - 1e-12))
    if by.get("blend"):
        out["cap_cost"] = 1.0 - by["served"] / by["blend"]
        out["cap_within_5pct"] = bool(out["cap_cost"] <= 0.05)
    return out


def evaluate(ds: datasets.Dataset, split: str, models: Sequence[str], k: int = 10,
             diversity_cap: int | None = None, settings: Settings | None = None,
             pm: Any = None, exclude_seen: bool = True, min_weight: float = 0.0,
             event_types: Sequence[str] = (), progress: IO[str] | None = None,
             max_users: int | None = None, seed: int = 0,
             split_validation: bool = False, engine: Any = None) -> dict[str, Any]:
    """Split ``ds``, train and score every setup in ``models``; return a JSON-ready report.

    With ``split_validation`` the blend trainer validates its weights on a hold-out of the
    train part shaped like ``split`` (``validation = split``) instead of its default (both
    shapes): a deployment knows whether it serves "what next in time" or "what next per user".

    With ``diversity_cap`` every setup without the diversity reranker is also run with it at
    that cap, reported as ``<name>+cap``; ``served`` always runs with its configured cap.
    ``max_users`` evaluates a random sample (``seed``) of the test users, to bound run time.
    A bar over the setups is drawn on ``progress`` when it is a terminal. ``engine`` ranks
    the users elsewhere (:func:`evaluate_setup`); training stays in this process.
    """
    settings = settings or Settings()
    pm = pm if pm is not None else make_plugin_manager(settings.load_entrypoints,
                                                       settings.blocked_plugins)
    # strict, as `rankly train` is: a misspelt [plugins.*] section or key fails before training
    settings = settings.replace(plugins=check_plugin_sections("plugins", settings.plugins,
                                                              collect_all(pm)))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    if not models:
        raise ValueError(f"--models names no model; one or more of {', '.join(SETUPS)}")
    unknown = [m for m in models if m not in SETUPS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; one of {', '.join(SETUPS)}")
    train, test = SPLITS[split](ds.interactions)
    if not len(train):
        # NOTE: the temporal cut is a timestamp: when the earliest time is also the cut
        # (one time for most events, or no time column and one row), nothing precedes it
        raise ValueError(f"the {split} split leaves no events to train on ({len(test)} "
                         f"events, all at or after the cut time); try --split user-last, "
                         f"or give the events distinct timestamps")
    event_types = relevant_event_types(test, event_types)
    data = build_training_data(train, ds.items)
    targets = test_targets(data, test, exclude_seen, min_weight, event_types)
    if not targets:
        raise ValueError(_no_targets_message(split, test, exclude_seen, min_weight,
                                             event_types))
    if max_users is not None and len(targets) > max_users:
        keep = np.random.default_rng(seed).choice(sorted(targets), max_users, replace=False)
        targets = {u: targets[u] for u in sorted(keep.tolist())}
    variants: dict[str, tuple[Setup, int | None]] = {}
    for name in models:
        s = _validated_on(SETUPS[name], split if split_validation else None)
        variants[name] = (s, served_cap(settings))
        if diversity_cap is not None and "diversity" not in s.rerankers:
            variants[f"{name}+cap"] = (dataclasses.replace(
                s, rerankers=(*s.rerankers, "diversity")), diversity_cap)
    results = []
    cache: dict[str, ModelPart] = {}
    for label in progress_bars.steps(list(variants), progress is None, desc="evaluating",
                                     stream=progress):
        setup, cap = variants[label]
        results.append(evaluate_setup(label, setup, data, targets, settings, pm, k,
                                      cap, exclude_seen, cache, engine))
    n_test_users = np.unique(test.user_ids).size
    return {
        "split": split, "k": k, "diversity_cap": diversity_cap, "exclude_seen": exclude_seen,
        "train_events": len(train), "test_events": len(test), "test_users": int(n_test_users),
        "evaluated_users": len(targets), "catalog_items": data.n_items,
        "results": [{"model": r.name, "label": r.label, "cap": r.cap,
                     "train_seconds": r.train_seconds, **r.groups,
                     **({"skipped": r.skipped} if r.skipped else {})} for r in results],
        "blend": _blend_info(cache),
        "quality_bar": quality_bar(results),
    }


def relevant_event_types(test: Interactions, event_types: Sequence[str]) -> list[str]:
    """``event_types`` (``--relevant-events``) folded onto the loader's canonical names
    (``buy`` is ``purchase``); raise ValueError when the test events carry no types, or none
    of a named type, so that a filter is never silently ignored or empty."""
    names = list(dict.fromkeys(datasets.EVENT_ALIASES.get(e.strip().lower(), e.strip().lower())
                               for e in event_types if e.strip()))
    if not names:
        return []
    if test.event_types is None:
        raise ValueError(f"--relevant-events {','.join(event_types)}: the data has no event "
                         f"types (no event_type column), so no test event can match")
    present = set(np.unique(test.event_types).tolist())
    missing = [e for e in names if e not in present]
    if missing:
        raise ValueError(f"--relevant-events: no test event has type {missing[0]!r}; the "
                         f"test events' types: {', '.join(sorted(present)) or 'none'}")
    return names


def _no_targets_message(split: str, test: Interactions, exclude_seen: bool, min_weight: float,
                        event_types: Sequence[str]) -> str:
    why = [f"{len(test)} test events from the {split} split"]
    if min_weight:
        why.append(f"--min-weight {min_weight:g}")
    if event_types:
        why.append(f"--relevant-events {','.join(event_types)}")
    if exclude_seen:
        why.append("items seen in train left out (--include-seen keeps them)")
    return f"no test user has a relevant item to evaluate ({'; '.join(why)})"


#: The blend's validation shape closest to each evaluation split.
SPLIT_SHAPES = {"temporal": "temporal", "user-last": "last"}


def _validated_on(setup: Setup, split: str | None) -> Setup:
    """``setup`` with its blend trainer validating on hold-outs shaped like ``split``."""
    if split is None:
        return setup
    shape = SPLIT_SHAPES.get(split, "robust")
    trainers = tuple((t, {**opts, "validation": shape} if t == "blend" else opts)
                     for t, opts in setup.trainers)
    return dataclasses.replace(setup, trainers=trainers)


def _blend_info(cache: Mapping[str, ModelPart]) -> dict[str, Any] | None:
    part = next((p for key, p in cache.items() if key.startswith("blend:")), None)
    return None if part is None else {"params": {k: v for k, v in part.params.items()
                                                 if k != "tuned_options"},
                                      "tuned": part.params.get("tuned_options"),
                                      **dict(part.metrics)}


COLUMNS = (("ndcg", "NDCG"), ("recall", "Recall"), ("hr", "HR"), ("map", "MAP"),
           ("coverage", "Cov"), ("ild", "ILD"), ("categories", "Cats"), ("cap_ok", "Cap ok"),
           ("novelty", "Nov"))


def format_table(report: Mapping[str, Any]) -> str:
    """Render :func:`evaluate`'s report as a Markdown table (one row per model and group)."""
    k = report["k"]
    head = ["model", "users", *(f"{t}@{k}" if m in ("ndcg", "recall", "hr", "map") else t
                                for m, t in COLUMNS), "train s"]
    lines = [
        f"split={report['split']} train={report['train_events']} test={report['test_events']}"
        f" evaluated users={report['evaluated_users']} catalog={report['catalog_items']}"
        f" exclude_seen={report['exclude_seen']}",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | skipped: {r['skipped']} |")
            continue
        for group in ("warm", "cold"):
            g = r.get(group)
            if not g:
                continue
            cells = [f"{r['model']} ({group})", str(int(g["users"]))]
            cells += [f"{g[m]:.2f}" if m in ("novelty", "categories") else f"{g[m]:.4f}"
                      for m, _ in COLUMNS]
            cells.append(f"{r['train_seconds']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    lines.extend(_summary_lines(report))
    return "\n".join(lines)


def _summary_lines(report: Mapping[str, Any]) -> list[str]:
    out = []
    blend = report.get("blend")
    if blend:
        out.extend(f"blend: {line.strip()}" for line in blend.get("report") or ())
    bar = report.get("quality_bar")
    if bar and "best_peer" in bar:
        out.append(f"quality bar: served {bar['served_ndcg']:.4f} vs best peer "
                   f"{bar['best_peer']} {bar['best_peer_ndcg']:.4f}: "
                   f"{'met' if bar['meets_bar'] else 'NOT met'}")
    if bar and "cap_cost" in bar:
        out.append(f"diversity cap cost (served vs blend): {100 * bar['cap_cost']:+.1f}% "
                   f"({'within' if bar['cap_within_5pct'] else 'over'} 5%)")
    return out


# --- CLI: `rankly evaluate` ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rankly evaluate``."""
    datasets.add_input_arguments(parser)
    parser.add_argument("--split", choices=sorted(SPLITS), default="temporal",
                        help="how test events are held out: the last 20%% of all events by "
                             "time (temporal) or each user's last 20%% of events, at least one "
                             "(user-last; a user with one event stays in train)")
    parser.add_argument("--k", type=positive_int, default=10,
                        help="list length the metrics are computed at (NDCG@k, recall@k, ...)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, from: {', '.join(SETUPS)} (served = the "
                             "default pipeline with its diversity reranker)")
    parser.add_argument("--diversity-cap", type=positive_int, default=None,
                        help="also evaluate each model capped at C items per primary category")
    parser.add_argument("--include-seen", action="store_true",
                        help="do not exclude train items from recommendations (Taobao repeats)")
    parser.add_argument("--min-weight", type=float, default=0.0,
                        help="only test events weighing at least this count (e.g. rating 4)")
    parser.add_argument("--relevant-events", default="",
                        help="only these test event types count, e.g. purchase")
    parser.add_argument("--max-users", type=positive_int, default=None,
                        help="evaluate a random sample of this many test users (run time)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the --max-users sample")
    parser.add_argument("--blend-validation", choices=("split", "default"), default="default",
                        help="default: the blend validates as `rankly train` does (robust: "
                             "every hold-out shape); split: only on a hold-out shaped like "
                             "--split")
    parser.add_argument("--config", default=None, help="settings file (plugin options)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--html", default=None, metavar="PATH",
                        help="also write the metrics as charts to one self-contained HTML file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        if args.html == "":  # an unset variable: no report would be written, silently
            raise ValueError("--html is empty")
        if args.html:
            from .report import check_writable

            check_writable(args.html)
        settings = load_settings(args.config)
        ds = datasets.load_from_args(args, event_types=settings.event_types)
        # a process that ends with the command need not leave a joined Ray first
        with engine_from_args(args, getattr(args, "ends_process", False)) as engine:
            report = evaluate(
                ds, args.split, [m.strip() for m in args.models.split(",") if m.strip()],
                k=args.k, diversity_cap=args.diversity_cap, settings=settings,
                exclude_seen=not args.include_seen, min_weight=args.min_weight,
                event_types=[e for e in args.relevant_events.split(",") if e],
                progress=None if args.quiet else sys.stderr, max_users=args.max_users,
                seed=args.seed, split_validation=args.blend_validation == "split",
                engine=engine)
        if args.html:
            from .report import write_html

            write_html(args.html, [report], title=f"rankly evaluate: {args.interactions}")
    except (datasets.DatasetError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    if engine is not None and engine.joined:
        from .batch_ray import end_process

        end_process(0)
    return 0
