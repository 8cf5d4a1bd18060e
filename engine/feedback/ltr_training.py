"""``rankly train-ranker``: a LightGBM lambdarank model learned from rankly's own log.

Rows are logged impressions, one query per served slate, labelled 0 (no click), 1 (click or
add-to-cart) or 2 (purchase), credited by ``request_id`` or within an attribution window
(feedback/slates.py). Features are those of feedback/ltr_features.py: the values the
impressions logged at serve time (pipeline/served.py) when the log has them, else recomputed
for the user as they were at the request (offpolicy.user_at) and the scorer's pool of the
model in DIR (logs from before point-in-time logging, or written with it off).

Position bias: clicks at the top of a slate are partly clicks *because* of the top. The
shown position is a feature during training and is held at 0 for every candidate when
serving, so the model explains the position's share of the clicks with that feature and
ranks by the rest (``--bias position``, the default). ``--bias ipw`` weighs each clicked
impression by 1 / the examination probability of its position instead, estimated from the
slates exploration shuffled (there the item at a position is independent of the position,
so the click rates by position are proportional to the examination probabilities);
``--bias none`` corrects nothing. docs/feedback-loop.md compares the three.

Validation: the last ``--valid-share`` of the slates in time, never trained on, scored two
ways: NDCG@K of the shown items reordered by the model against their order in the current
ranking (clicks as labels), and the off-policy estimates (engine/feedback/offpolicy.py) of the
click-through rate of the pipeline with the ranker (``rerankers = ["ltr", ...]``) against
the pipeline without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..config import open_fraction, positive_float, positive_int
from ..model import MANIFEST, Model, load_model
from ..pipeline.served import FEATURE_FIELDS
from .ltr_features import FEATURES, feature_matrix, ranker_features
from .offpolicy import (
    ITEM_PRIOR,
    estimate_text,
    interval_text,
    json_ready,
    skipped_text,
    user_at,
)
from .slates import DEFAULT_WINDOW_S, Feedback, Slate, load_feedback

PART = "ltr"
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank", "num_leaves": 15, "learning_rate": 0.05,
    "min_data_in_leaf": 50, "feature_fraction": 0.9, "lambdarank_truncation_level": 20,
    "verbose": -1, "num_threads": 2, "deterministic": True, "seed": 0,
}


BIAS_CORRECTIONS = ("position", "ipw", "none")
#: Floor of an estimated examination probability (relative to the first position).
MIN_EXAMINATION = 0.05


def examination(slates: Sequence[Slate]) -> np.ndarray:
    """Relative examination probability per position (1 at the first): click rates by shown
    position over the shuffled slates (all slates when none was shuffled), monotone
    non-increasing, floored at :data:`MIN_EXAMINATION`."""
    shuffled = [s for s in slates if (s.base_positions != np.arange(len(s.items))).any()]
    use = shuffled or list(slates)
    kmax = max((len(s.items) for s in use), default=1)
    shown = np.zeros(kmax)
    clicked = np.zeros(kmax)
    for s in use:
        shown[: len(s.items)] += 1
        clicked[: len(s.items)] += s.clicks
    rate = clicked / np.maximum(shown, 1)
    if rate[0] <= 0:
        return np.ones(kmax)
    return np.clip(np.minimum.accumulate(rate / rate[0]), MIN_EXAMINATION, 1.0)


def item_stats(slates: Sequence[Slate], n_items: int, index: dict[str, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(item_ctr, impressions) per catalog item from ``slates``: clicks over the clicks the
    positions it was shown at predict (shrunk to 1 by :data:`ITEM_PRIOR`), and shows."""
    kmax = max((len(s.items) for s in slates), default=1)
    shown = np.zeros(kmax)
    clicked = np.zeros(kmax)
    for s in slates:
        m = len(s.items)
        shown[:m] += 1
        clicked[:m] += s.clicks
    theta = clicked / np.maximum(shown, 1)
    expected = np.zeros(n_items)
    got = np.zeros(n_items)
    imps = np.zeros(n_items, dtype=np.float32)
    for s in slates:
        idx = np.array([index.get(a, -1) for a in s.items])
        ok = idx >= 0
        np.add.at(expected, idx[ok], theta[: len(s.items)][ok])
        np.add.at(got, idx[ok], s.clicks[ok])
        np.add.at(imps, idx[ok], 1)
    return ((got + ITEM_PRIOR) / (expected + ITEM_PRIOR)).astype(np.float32), imps


def pool_plan(rt: Any) -> Any:
    """The serving plan without its rerankers: its scorer's pool, in score order."""
    from .. import pipeline

    base = pipeline.default_plan(rt)
    return pipeline.Plan(base.candidates, base.scorers, ())


def slate_rows(model: Model, rt: Any, plan: Any, feedback: Feedback, slate: Slate,
               depth: int, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Features of the slate's shown items (positions as shown): the values its impressions
    logged at serve time when they have them (:func:`logged_rows`), else recomputed for the
    user as they were at the request (their history then, the scorer's pool of the model in
    DIR)."""
    if has_logged_features(slate):
        return logged_rows(model, slate, depth, stats)
    from ..offline.batch import rank_user

    user = user_at(model, feedback, slate, rt.settings.pipeline.exclude_seen)
    pool = rank_user(rt, plan, user, depth)
    where = {int(i): r for r, i in enumerate(pool.items.tolist())}
    items = model.catalog.lookup(slate.items)
    floor = float(pool.scores.min()) - 1.0 if len(pool) else 0.0
    ranks = np.array([where.get(int(i), len(pool)) for i in items], dtype=np.float32)
    scores = np.array([pool.scores[where[int(i)]] if int(i) in where else floor
                       for i in items], dtype=np.float32)
    pop = model.part("pop")
    return without_unknown_items(items, ranker_features(
        user.history, np.maximum(items, 0), ranks, scores,
        np.asarray(model.catalog.categories),
        None if pop is None else np.asarray(pop["scores"]), stats[0], stats[1],
        np.arange(len(items), dtype=np.float32)))


#: What an item outside the catalog gets of the per-item features: no popularity, the
#: neutral click multiplier, no impressions, no category (serving's values for an item
#: without any record).
UNKNOWN_ITEM = {"log_popularity": 0.0, "item_ctr": 1.0, "log_item_impressions": 0.0,
                "category_affinity": 0.0, "category_recency": 0.0,
                "same_category_as_last": 0.0}


def without_unknown_items(items: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` with the rows of items the catalog does not hold (index -1: a log from before
    a retrain that dropped them) set to :data:`UNKNOWN_ITEM`: the arrays were read for them
    at index 0, the first catalog item's values."""
    gone = items < 0
    if gone.any():
        for name, value in UNKNOWN_ITEM.items():
            x[gone, FEATURES.index(name)] = value
    return x


def has_logged_features(slate: Slate) -> bool:
    """Whether the slate's impressions logged the ranker's inputs at serve time (a log
    written with ``impressions.features`` on; older logs did not)."""
    return slate.features is not None and "history_length" in slate.context


def logged_rows(model: Model, slate: Slate, depth: int,
                stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """:func:`slate_rows` from the values logged at serve time: pool rank and score, the
    model's popularity, the user's history length and category features, as the pipeline
    had them when it computed the slate, whatever happened since (later events, a retrained
    model in DIR). An item outside the pool (backfilled) gets rank ``depth`` and a score
    below the slate's lowest, as a recomputed one outside the pool does; an unknown
    popularity or category feature counts 0; ``item_ctr`` and ``log_item_impressions`` come
    from ``stats`` (the training log), as always (neutral for an item the catalog in DIR no
    longer holds)."""
    f = slate.features
    assert f is not None
    col = {name: f[:, k] for k, name in enumerate(FEATURE_FIELDS)}
    idx = model.catalog.lookup(slate.items)
    # an item the catalog no longer holds has no record in the training log's statistics
    item_ctr = np.where(idx >= 0, stats[0][np.maximum(idx, 0)], UNKNOWN_ITEM["item_ctr"])
    impressions = np.where(idx >= 0, stats[1][np.maximum(idx, 0)], 0.0)
    scores = col["score"]
    known = ~np.isnan(scores)
    floor = scores[known].min() - 1.0 if known.any() else 0.0
    return feature_matrix(
        np.arange(len(idx), dtype=np.float32), np.where(np.isnan(col["rank"]), depth,
                                                        col["rank"]),
        np.where(known, scores, floor), np.nan_to_num(col["popularity"]),
        item_ctr, impressions, float(slate.context["history_length"]),
        *(np.nan_to_num(col[name]) for name in ("category_affinity", "category_recency",
                                                 "same_category_as_last")))


def labels(slate: Slate) -> np.ndarray:
    return slate.clicks.astype(np.int32) + slate.conversions.astype(np.int32)


def ndcg(gains: np.ndarray, k: int) -> float:
    """NDCG@k of ``gains`` in the given order (0 when there is no gain)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    g = (2.0 ** gains[:k] - 1) @ disc[: min(k, gains.size)]
    ideal = (2.0 ** np.sort(gains)[::-1][:k] - 1) @ disc[: min(k, gains.size)]
    return float(g / ideal) if ideal > 0 else 0.0


def write_part(artifacts: str | Path, arrays: dict[str, np.ndarray], params: dict[str, Any],
               metrics: dict[str, Any]) -> str:
    """Put the ``ltr`` part into the artifact directory; return the new model version.

    The part's files go to a fresh directory renamed into place (a server memory-mapping an
    older part keeps its files), then the manifest is replaced atomically with the part and
    a new version (the old one plus ``+ltr-<hash>``), so caches keyed by version and
    ``rankly publish`` see a new model.
    """
    root = Path(artifacts)
    manifest = json.loads((root / MANIFEST).read_text())
    parts_dir = root / "parts"
    parts_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parts_dir, prefix=f".{PART}-new-"))
    digest = hashlib.sha256()
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", np.asarray(arr), allow_pickle=False)
        digest.update(np.ascontiguousarray(arr).tobytes())
    final = parts_dir / PART
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=parts_dir, prefix=f".{PART}-old-"))
        os.replace(final, old / PART)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    base = str(manifest["version"]).split("+ltr-")[0]
    manifest["version"] = f"{base}+ltr-{digest.hexdigest()[:8]}"
    # each array's shape, as save_model records them: load_model then refuses an ltr
    # array copied in from another model
    manifest.setdefault("parts", {})[PART] = {
        "params": params, "metrics": metrics, "arrays": sorted(arrays),
        "shapes": {name: list(np.shape(arr)) for name, arr in arrays.items()}}
    fd, path = tempfile.mkstemp(dir=root, prefix=".manifest-")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    os.replace(path, root / MANIFEST)
    return manifest["version"]


def train_ranker(events: str | Path, artifacts: str | Path, settings: Any, *,
                 window_s: float = DEFAULT_WINDOW_S, depth: int = 100,
                 valid_share: float = 0.2, rounds: int = 100, bias: str = "position",
                 params: dict[str, Any] | None = None, write: bool = True,
                 progress: IO[str] | None = None) -> dict[str, Any]:
    """Train on the log ``events`` for the model in ``artifacts``; return the report."""
    import lightgbm

    from ..offline.batch import serving_runtime

    started = time.perf_counter()
    feedback = load_feedback(events, window_s)
    slates = feedback.slates
    if len(slates) < 10:
        raise ValueError(f"{events}: {len(slates)} logged slates; need at least 10"
                         f"{skipped_text(feedback.skipped)}")
    cut = int(round(len(slates) * (1.0 - valid_share)))
    train, valid = slates[:cut], slates[cut:]
    # shuffled slates only when there are any: their shown order is independent of both
    # orders compared, so the position bias in the clicks favours neither
    shuffled = [s for s in valid if (s.base_positions != np.arange(len(s.items))).any()]
    judged = shuffled or valid
    if not any(s.clicks.any() for s in train):
        raise ValueError(f"{events}: no click in the {len(train)} training slates: nothing to "
                         "learn from")
    if not any(s.clicks.any() for s in judged):
        # a ranker that cannot be validated is not written over the model's version
        raise ValueError(
            f"{events}: no click in the {len(judged)} {'shuffled ' if shuffled else ''}"
            f"validation slates (the latest {valid_share:.0%} of {len(slates)}): too little "
            "traffic to validate a ranker; log more, or raise --valid-share")
    model = load_model(artifacts, mmap=False)
    rt = serving_runtime(model, settings)
    plan = pool_plan(rt)
    catalog = model.catalog
    n_items = len(catalog)
    # cross-fitted item statistics for the training rows: a slate's own clicks never feed
    # its item_ctr feature; the validation rows and serving use all the training slates
    fold = np.array([zlib.crc32(s.request_id.encode()) & 1 for s in train])
    by_fold = [item_stats([s for s, f in zip(train, fold, strict=True) if f != g], n_items,
                          catalog.index) for g in (0, 1)]
    full = item_stats(train, n_items, catalog.index)
    xs, ys, groups = [], [], []
    for s, f in zip(train, fold, strict=True):
        x = slate_rows(model, rt, plan, feedback, s, depth, by_fold[f])
        xs.append(x)
        ys.append(labels(s))
        groups.append(len(s.items))
    if bias not in BIAS_CORRECTIONS:
        raise ValueError(f"bias must be one of {', '.join(BIAS_CORRECTIONS)}, got {bias!r}")
    x_train = np.concatenate(xs)
    y_train = np.concatenate(ys)
    weights = None
    theta = examination(train)
    if bias != "position":
        if bias == "ipw":
            pos = x_train[:, 0].astype(np.int64)
            weights = np.where(y_train > 0, 1.0 / theta[np.minimum(pos, theta.size - 1)], 1.0)
        x_train[:, 0] = 0.0
    features_done = time.perf_counter()
    p = {**DEFAULT_PARAMS, **(params or {}),
         "eval_at": [max(groups) if groups else 10]}
    booster = lightgbm.train(p, lightgbm.Dataset(x_train, y_train, weight=weights,
                                                 group=groups, feature_name=list(FEATURES)),
                             num_boost_round=rounds)
    trained = time.perf_counter()
    # validation on the later slice: NDCG of the shown items, model order vs current order
    nd_model, nd_current, nd_shown = [], [], []
    for s in judged:
        y = labels(s)
        if not y.any():
            continue
        x = slate_rows(model, rt, plan, feedback, s, depth, full)
        x[:, 0] = 0.0
        k = len(s.items)
        score = booster.predict(x, num_threads=1)
        nd_model.append(ndcg(y[np.argsort(-score, kind="stable")].astype(float), k))
        nd_current.append(ndcg(y[np.argsort(s.base_positions, kind="stable")].astype(float), k))
        nd_shown.append(ndcg(y.astype(float), k))
    importance = dict(zip(FEATURES, booster.feature_importance("gain").round(3).tolist(),
                          strict=True))
    report: dict[str, Any] = {
        "slates": len(slates), "skipped_slates": dict(feedback.skipped),
        "train_slates": len(train), "valid_slates": len(valid),
        "logged_feature_slates": sum(has_logged_features(s) for s in slates),
        "train_rows": int(x_train.shape[0]), "train_clicks": int((y_train > 0).sum()),
        "bias": bias, "examination": [round(float(t), 4) for t in theta],
        "depth": depth, "rounds": rounds,
        "seconds": {"features": round(features_done - started, 2),
                    "fit": round(trained - features_done, 2)},
        "valid_ndcg": {"ranker": _mean(nd_model), "current": _mean(nd_current),
                       "as_shown": _mean(nd_shown), "slates_with_clicks": len(nd_model),
                       "shuffled_slates_only": bool(shuffled)},
        "feature_gain": importance,
    }
    if write:
        text = booster.model_to_string().encode("utf-8")
        arrays = {"model": np.frombuffer(text, dtype=np.uint8),
                  "item_ctr": full[0], "item_impressions": full[1]}
        params_out = {"features": list(FEATURES), "depth": depth, "rounds": rounds,
                      "bias": bias, "lightgbm": lightgbm.__version__,
                      "trained_on_model": model.version.split("+ltr-")[0]}
        report["model_version"] = write_part(artifacts, arrays, params_out,
                                             {"valid_ndcg": report["valid_ndcg"]})
        if valid:
            report["valid_offpolicy"] = validate_offpolicy(feedback, valid, artifacts,
                                                           settings)
    return report


def validate_offpolicy(feedback: Feedback, valid: list[Slate], artifacts: str | Path,
                       settings: Any) -> dict[str, Any]:
    """Off-policy CTR of the pipeline with the ranker first among the rerankers, against the
    configured pipeline, on the validation slates."""
    from . import offpolicy

    sub = Feedback(valid, feedback.history, 0)
    logged = offpolicy.Logged.of(valid)
    rerankers = settings.pipeline.rerankers
    with_ltr = ("ltr", *[r for r in rerankers if r != "ltr"])
    current = tuple(r for r in rerankers if r != "ltr")
    rankings = {
        "base": offpolicy.model_rankings(
            sub, logged, artifacts, settings.replace(
                pipeline=_replace_rerankers(settings.pipeline, current))),
        "ranker": offpolicy.model_rankings(
            sub, logged, artifacts, settings.replace(
                pipeline=_replace_rerankers(settings.pipeline, with_ltr))),
    }
    report = offpolicy.evaluate(sub, rankings)
    out: dict[str, Any] = {"explored_slates": report["explored_requests"]}
    for name, key in (("current", "base"), ("ranker", "ranker")):
        pol = report["policies"][key]
        out[name] = {"ctr": {k: pol["ctr"][k]["estimate"] for k in ("ips", "snips", "dr")},
                     "ctr_ci95_dr": pol["ctr"]["dr"]["ci95"], "support": pol["support"]}
    lift = report["policies"]["ranker"]["ctr"]["lift_vs_base"]
    out["ranker"]["ctr_lift"] = {k: {"estimate": v["estimate"], "ci95": v["ci95"]}
                                 for k, v in lift.items()}
    out["logging_ctr"] = report["policies"]["logging"]["ctr"]["ips"]["estimate"]
    return out


def _replace_rerankers(pipeline_settings: Any, rerankers: tuple[str, ...]) -> Any:
    import dataclasses

    return dataclasses.replace(pipeline_settings, rerankers=rerankers)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", required=True,
                        help="event log as JSON lines (events.jsonl, or rankly export-events "
                             "--format jsonl --include-impressions)")
    parser.add_argument("--artifacts", required=True,
                        help="model directory: its scorer's pool is what the ranker reorders, "
                             "and the `ltr` part is written into it")
    parser.add_argument("--config", default=None, help="settings file (the serving pipeline)")
    parser.add_argument("--window", type=positive_float, default=DEFAULT_WINDOW_S,
                        help="attribution window in seconds for outcomes without request_id")
    parser.add_argument("--depth", type=positive_int, default=100,
                        help="candidates the ranker reorders (default 100)")
    parser.add_argument("--valid-share", type=open_fraction, default=0.2,
                        help="latest share of the slates held out for validation (default 0.2)")
    parser.add_argument("--rounds", type=positive_int, default=100,
                        help="boosting rounds (default 100)")
    parser.add_argument("--bias", choices=BIAS_CORRECTIONS, default="position",
                        help="position-bias correction: the shown position as a feature held "
                             "at 0 when serving (default), inverse examination weights of "
                             "the clicks, or none")
    parser.add_argument("--dry-run", action="store_true",
                        help="train and validate, write nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from ..config import load_settings
    from ..model import ArtifactError

    out = out or sys.stdout
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        print("rankly train-ranker needs LightGBM: pip install 'rankly[ltr]'", file=sys.stderr)
        return 2
    try:
        report = train_ranker(args.events, args.artifacts, load_settings(args.config),
                              window_s=args.window, depth=args.depth,
                              valid_share=args.valid_share, rounds=args.rounds,
                              bias=args.bias, write=not args.dry_run)
    except (ValueError, ArtifactError) as exc:  # a damaged line (slates.LogError), a log
        # too small, a directory without a model
        print(f"rankly train-ranker: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_ready(report), indent=1, allow_nan=False), file=out)
        return 0
    v = report["valid_ndcg"]
    print(f"trained on {report['train_slates']} slates ({report['train_rows']} impressions, "
          f"{report['train_clicks']} clicked) in {sum(report['seconds'].values()):.1f} s; "
          f"validated on the latest {report['valid_slates']}", file=out)
    print(f"features as logged at serve time for {report['logged_feature_slates']} of "
          f"{report['slates']} slates, recomputed for the rest"
          f"{skipped_text(report['skipped_slates'])}", file=out)
    print(f"validation NDCG of the shown items: ranker {v['ranker']}, current ranking "
          f"{v['current']} ({v['slates_with_clicks']} slates with clicks)", file=out)
    op = report.get("valid_offpolicy")
    if op:
        for name in ("current", "ranker"):
            c = op[name]["ctr"]
            print(f"off-policy CTR, {name:<8} ips {estimate_text(c['ips'], '.4f')} snips "
                  f"{estimate_text(c['snips'], '.4f')} dr {estimate_text(c['dr'], '.4f')} "
                  f"(support {op[name]['support']:.0%})", file=out)
        print("off-policy CTR lift of the ranker (DR): "
              f"{interval_text(op['ranker']['ctr_lift']['dr'], '+.1%')}", file=out)
    if "model_version" in report:
        print(f"wrote part {PART!r} into {args.artifacts}: model version "
              f"{report['model_version']}; serve with pipeline.rerankers = "
              f'["ltr", "diversity"]', file=out)
    return 0
