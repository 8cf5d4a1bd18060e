"""``rankly off-policy``: what a ranking would have scored on logged traffic, estimated.

The unit is the impression: every estimate is a click-through (or conversion) rate per shown
position, sum of clicks over sum of impressions, the rate the dashboard's impressions count.

Slates are handled with the position-based ("independent item") estimator of Li et al.
(2018) and Open Bandit Pipeline's ``SlateIndependentIPS``: a click at position ``k`` depends
only on the item there and ``k``, so each (request, position) is a one-step bandit round with
weight ``w = pi_e(item at k) / pi_b(item at k)``. The evaluated ranking is deterministic, so
``w`` is ``1 / propensity`` where it puts the logged item at ``k`` and 0 elsewhere. The
propensity is the one logged with the impression (engine/feedback/exploration.py). The estimator is
unbiased when clicks follow a position-based model and every item the evaluated ranking puts
at ``k`` had a positive logged probability there (``support``); the standard IPS alternative
over whole slates would need the evaluated slate to equal the logged one, which almost never
happens at ten positions. For ``n`` requests with ``K_i`` positions each:

- ``ips``: ``sum_ik w_ik r_ik / sum_i K_i``
- ``snips``: ``sum_ik w_ik r_ik / sum_ik w_ik`` (self-normalized; consistent, lower variance)
- ``dr``: ``sum_ik [q(e_ik, k) + w_ik (r_ik - q(a_ik, k))] / sum_i K_i`` with a reward model
  ``q(item, k) = theta_k * g_item`` (position click rate times a shrunk item multiplier),
  cross-fitted on two halves of the requests so no request is scored by a model it trained.

95% intervals are normal (the estimates are means over independent requests): IPS and DR
from the per-request terms, SNIPS by the delta method of a ratio. ``ess`` is the effective
sample size ``(sum w)^2 / sum w^2`` over positions.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..config import positive_float
from .slates import (
    DEFAULT_WINDOW_S,
    SEEN_TYPES,
    Feedback,
    LogError,
    Slate,
    load_feedback,
)

Z95 = 1.959963984540054
#: Prior strength of an item's click multiplier, in expected clicks at its positions.
ITEM_PRIOR = 2.0


@dataclass(frozen=True)
class Logged:
    """Logged slots as (requests, max positions) arrays; ``mask`` marks real positions."""

    items: np.ndarray  # object: item ids ("" for padding)
    propensity: np.ndarray  # float64
    clicks: np.ndarray  # float64
    conversions: np.ndarray  # float64
    mask: np.ndarray  # bool
    head: np.ndarray  # int64 per request: positions exploration could shuffle
    fold: np.ndarray  # int64 per request: 0/1 (cross-fitting)

    @classmethod
    def of(cls, slates: Sequence[Slate]) -> Logged:
        n = len(slates)
        k = max((len(s.items) for s in slates), default=0)
        items = np.full((n, k), "", dtype=object)
        prop = np.ones((n, k))
        clicks = np.zeros((n, k))
        conv = np.zeros((n, k))
        mask = np.zeros((n, k), dtype=bool)
        head = np.zeros(n, dtype=np.int64)
        fold = np.zeros(n, dtype=np.int64)
        for i, s in enumerate(slates):
            m = len(s.items)
            items[i, :m] = s.items
            prop[i, :m] = s.propensities
            clicks[i, :m] = s.clicks
            conv[i, :m] = s.conversions
            mask[i, :m] = True
            head[i] = s.head()
            fold[i] = zlib.crc32(s.request_id.encode()) & 1
        return cls(items, prop, clicks, conv, mask, head, fold)

    def match(self, ranked: np.ndarray) -> np.ndarray:
        """Where ``ranked`` (same shape, item ids) puts the logged item at its position."""
        return (ranked == self.items) & self.mask

    def support(self, ranked: np.ndarray) -> np.ndarray:
        """Where the logging policy could have shown ``ranked``'s item at that position: the
        logged item itself, or an item of the explored head at a head position."""
        ok = self.match(ranked)
        for i in np.flatnonzero(self.head >= 2):
            m = int(self.head[i])
            head = set(self.items[i, :m].tolist())
            for k in range(m):
                ok[i, k] |= ranked[i, k] in head
        return ok


class PositionModel:
    """``q(item, k) = theta_k * g_item``: the logged click rate of position ``k`` times the
    item's multiplier ``(clicks + s) / (expected clicks + s)`` (``s`` = :data:`ITEM_PRIOR`)."""

    def __init__(self, theta: np.ndarray, mult: Mapping[str, float]) -> None:
        self.theta = theta
        self.mult = mult

    @classmethod
    def fit(cls, logged: Logged, rewards: np.ndarray, rows: np.ndarray) -> PositionModel:
        mask = logged.mask[rows]
        r = rewards[rows]
        shown = mask.sum(axis=0)
        theta = np.where(shown > 0, r.sum(axis=0) / np.maximum(shown, 1), 0.0)
        expected: dict[str, float] = {}
        got: dict[str, float] = {}
        items = logged.items[rows]
        for (i, k) in zip(*np.nonzero(mask), strict=True):
            a = items[i, k]
            expected[a] = expected.get(a, 0.0) + theta[k]
            got[a] = got.get(a, 0.0) + r[i, k]
        mult = {a: (got[a] + ITEM_PRIOR) / (e + ITEM_PRIOR) for a, e in expected.items()}
        return cls(theta, mult)

    def predict(self, items: np.ndarray) -> np.ndarray:
        get = self.mult.get
        g = np.vectorize(lambda a: get(a, 1.0), otypes=[float])(items) if items.size else \
            np.zeros(items.shape)
        return np.clip(self.theta[None, : items.shape[1]] * g, 0.0, 1.0)


def cross_fitted(logged: Logged, rewards: np.ndarray, ranked: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(q of the logged items, q of ``ranked``'s items), each request predicted by the
    model fitted on the other fold."""
    q_logged = np.zeros(rewards.shape)
    q_eval = np.zeros(rewards.shape)
    for f in (0, 1):
        rows = np.flatnonzero(logged.fold == f)
        other = np.flatnonzero(logged.fold != f)
        if rows.size == 0:
            continue
        model = PositionModel.fit(logged, rewards, other if other.size else rows)
        q_logged[rows] = model.predict(logged.items[rows])
        q_eval[rows] = model.predict(ranked[rows])
    return q_logged * logged.mask, q_eval * logged.mask


def _interval(value: float, se: float) -> dict[str, Any]:
    return {"estimate": value, "ci95": [value - Z95 * se, value + Z95 * se], "se": se}


def estimate(rewards: np.ndarray, propensity: np.ndarray, match: np.ndarray, mask: np.ndarray,
             q_logged: np.ndarray | None = None, q_eval: np.ndarray | None = None
             ) -> dict[str, Any]:
    """IPS, SNIPS and (with the reward model's predictions) DR estimates of the per-impression
    rate of a deterministic ranking; arrays are (requests, positions), see the module doc."""
    n = rewards.shape[0]
    w = np.where(match & mask, 1.0 / np.where(mask, propensity, 1.0), 0.0)
    slots = mask.sum(axis=1).astype(float)
    kbar = slots.mean() if n else 1.0
    a = (w * rewards).sum(axis=1)
    b = w.sum(axis=1)
    out: dict[str, Any] = {}
    ips_terms = a / kbar
    out["ips"] = _interval(float(ips_terms.mean()), _se(ips_terms))
    total_w = b.sum()
    snips = float(a.sum() / total_w) if total_w > 0 else float("nan")
    lin = (a - snips * b) / (b.mean() if total_w > 0 else 1.0)
    out["snips"] = _interval(snips, _se(lin) if total_w > 0 else float("nan"))
    if q_logged is not None and q_eval is not None:
        dr_terms = ((q_eval + w * (rewards - q_logged)) * mask).sum(axis=1) / kbar
        out["dr"] = _interval(float(dr_terms.mean()), _se(dr_terms))
    ww = (w * w).sum()
    out["ess"] = float(total_w ** 2 / ww) if ww > 0 else 0.0
    out["matched"] = float((match & mask).sum() / max(mask.sum(), 1))
    return out


def per_request(rewards: np.ndarray, propensity: np.ndarray, match: np.ndarray,
                mask: np.ndarray, q_logged: np.ndarray, q_eval: np.ndarray
                ) -> dict[str, np.ndarray]:
    """Per-request terms whose means are the IPS and DR estimates (for paired lifts)."""
    w = np.where(match & mask, 1.0 / np.where(mask, propensity, 1.0), 0.0)
    kbar = mask.sum(axis=1).mean() if rewards.shape[0] else 1.0
    return {"ips": (w * rewards).sum(axis=1) / kbar,
            "dr": ((q_eval + w * (rewards - q_logged)) * mask).sum(axis=1) / kbar}


def relative_lift(new: np.ndarray, old: np.ndarray) -> dict[str, Any]:
    """``mean(new) / mean(old) - 1`` over paired per-request terms, delta-method 95% CI."""
    mo = old.mean()
    if mo <= 0:
        return {"estimate": float("nan"), "ci95": [float("nan")] * 2, "se": float("nan")}
    ratio = new.mean() / mo
    return _interval(float(ratio - 1.0), _se((new - ratio * old) / mo))


def _se(terms: np.ndarray) -> float:
    n = terms.size
    return float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


# --- policies ---------------------------------------------------------------------------------


def base_rankings(feedback: Feedback, logged: Logged) -> np.ndarray:
    """The serving ranking's own slates before exploration (from ``base_position``)."""
    out = np.full(logged.items.shape, "", dtype=object)
    for i, s in enumerate(feedback.slates):
        out[i, : len(s.items)] = s.base_items()
    return out


def user_at(model: Any, feedback: Feedback, slate: Slate, exclude_seen: bool = True) -> Any:
    """The user's features as the server saw them when it served ``slate``: the trained
    history plus their logged history events before it, newest first (as the store
    projects them; purchases and ratings also in ``seen``). ``exclude_seen`` is the
    serving pipeline's setting: off, ``seen`` is empty, as the server leaves it."""
    from ..types import UserFeatures

    catalog = model.catalog
    row = model.users.row(slate.user_id)
    before = feedback.history_before(slate.user_id, slate.timestamp)
    online = catalog.lookup([item for _, item, _ in reversed(before)])
    seen_online = catalog.lookup([item for _, item, t in before if t in SEEN_TYPES])
    history = np.concatenate([online, model.users.history(row)])
    history = history[history >= 0]
    _, first = np.unique(history, return_index=True)
    history = history[np.sort(first)]
    seen = np.unique(np.concatenate([history, seen_online[seen_online >= 0]]))
    return UserFeatures(slate.user_id, row, history, seen if exclude_seen else seen[:0])


def model_rankings(feedback: Feedback, logged: Logged, artifacts: str | Path,
                   settings: Any, plan: Any = None) -> np.ndarray:
    """The slates the pipeline of ``settings`` over the model in ``artifacts`` would serve
    each logged request: the user's trained history plus their logged history events before
    the request, as the store held it (exploration not applied)."""
    from .. import pipeline
    from ..model import load_model
    from ..offline.batch import rank_user, serving_runtime

    model = load_model(artifacts)
    rt = serving_runtime(model, settings)
    plan = plan or pipeline.default_plan(rt)
    ids = model.catalog.id_list()
    out = np.full(logged.items.shape, "", dtype=object)
    for i, s in enumerate(feedback.slates):
        user = user_at(model, feedback, s, settings.pipeline.exclude_seen)
        ranking = rank_user(rt, plan, user, len(s.items))
        got = [ids[j] for j in ranking.items.tolist()][: len(s.items)]
        out[i, : len(got)] = got
    return out


def evaluate(feedback: Feedback, rankings: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Estimates for the logging policy and each named ranking (item ids per logged slot),
    with each ranking's lift over the logging policy and, when a ranking is named "base",
    over it (paired by request)."""
    logged = Logged.of(feedback.slates)
    report: dict[str, Any] = {
        "requests": len(feedback.slates), "impressions": int(logged.mask.sum()),
        "clicks": int(logged.clicks.sum()), "conversions": int(logged.conversions.sum()),
        "explored_requests": int((logged.head >= 2).sum()),
        "cached_requests": sum(bool(s.context.get("cached")) for s in feedback.slates),
        "unattributed_outcomes": feedback.unattributed,
        "skipped_slates": dict(feedback.skipped), "policies": {},
    }
    everything = logged.mask
    terms: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for metric, rewards in (("ctr", logged.clicks), ("conversion", logged.conversions)):
        # the logging policy on its own traffic: every weight is 1, all estimators agree
        onp = estimate(rewards, np.ones(rewards.shape), everything, logged.mask,
                       rewards * 0, rewards * 0)
        report["policies"].setdefault("logging", {})[metric] = onp
        terms.setdefault("logging", {})[metric] = {
            "ips": rewards.sum(axis=1) / max(logged.mask.sum(axis=1).mean(), 1e-12),
            "dr": rewards.sum(axis=1) / max(logged.mask.sum(axis=1).mean(), 1e-12)}
        for name, ranked in rankings.items():
            match = logged.match(ranked)
            q_logged, q_eval = cross_fitted(logged, rewards, ranked)
            est = estimate(rewards, logged.propensity, match, logged.mask, q_logged, q_eval)
            terms.setdefault(name, {})[metric] = per_request(
                rewards, logged.propensity, match, logged.mask, q_logged, q_eval)
            est["lift_vs_logging"] = {
                k: relative_lift(terms[name][metric][k], terms["logging"][metric][k])
                for k in ("ips", "dr")}
            report["policies"].setdefault(name, {})[metric] = est
        if "base" in rankings:  # the serving ranking without exploration: an A/B's control
            for name in rankings:
                if name != "base":
                    report["policies"][name][metric]["lift_vs_base"] = {
                        k: relative_lift(terms[name][metric][k], terms["base"][metric][k])
                        for k in ("ips", "dr")}
    for name, ranked in rankings.items():
        report["policies"][name]["support"] = float(
            logged.support(ranked).sum() / max(logged.mask.sum(), 1))
    return report


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", required=True,
                        help="event log as JSON lines (the file log's events.jsonl, or "
                             "rankly export-events --format jsonl --include-impressions)")
    parser.add_argument("--artifacts", required=True, help="model whose ranking to evaluate")
    parser.add_argument("--config", default=None,
                        help="settings file: the pipeline that serves the model")
    parser.add_argument("--window", type=positive_float, default=DEFAULT_WINDOW_S,
                        help="seconds an outcome without request_id is credited to the "
                             "user's latest slate showing the item (default 1800)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from ..model import ArtifactError

    out = out or sys.stdout
    try:
        return _run(args, out)
    except (LogError, ArtifactError) as exc:
        print(f"rankly off-policy: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, out: IO[str]) -> int:
    from ..config import load_settings

    feedback = load_feedback(args.events, args.window)  # a missing file: cli.main names it
    if not feedback.slates:
        print(f"rankly off-policy: {args.events}: no slates (impressions with a request_id)"
              f"{skipped_text(feedback.skipped)}", file=sys.stderr)
        return 2
    logged = Logged.of(feedback.slates)
    settings = load_settings(args.config)
    rankings = {"base": base_rankings(feedback, logged),
                "evaluated": model_rankings(feedback, logged, args.artifacts, settings)}
    report = evaluate(feedback, rankings)
    report["artifacts"] = str(args.artifacts)
    if args.json:
        print(json.dumps(json_ready(report), indent=1, allow_nan=False), file=out)
    else:
        print(render(report), file=out)
    return 0


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None (JSON has no NaN: an estimate that
    does not exist, such as a lift over a rate of 0, is null)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def skipped_text(skipped: Mapping[str, int]) -> str:
    """``; left out: ...`` naming the requests :func:`slates.join` left out, or ""."""
    if not any(skipped.values()):
        return ""
    return "; left out: " + ", ".join(f"{n} {SKIP_REASONS.get(k, k)}"
                                      for k, n in sorted(skipped.items()) if n)


#: What each reason of ``Feedback.skipped`` means, for a reader.
SKIP_REASONS = {
    "conflicting": "requests whose impressions conflict (two users, or two items at a "
                   "position: a reused request_id)",
    "positions_missing": "slates with a missing position",
    "base_positions_invalid": "slates whose base_position values are not a reordering",
}


def render(report: Mapping[str, Any]) -> str:
    """The report as a table: one row per policy, metric and estimator."""
    lines = [f"{report['requests']} requests, {report['impressions']} impressions, "
             f"{report['clicks']} clicks, {report['conversions']} conversions; "
             f"{report['explored_requests']} explored slates"
             f"{skipped_text(report.get('skipped_slates', {}))}"]
    if report.get("unattributed_outcomes"):
        lines.append(f"note: {report['unattributed_outcomes']} clicks or purchases matched no "
                     "logged slate (no impression of their request_id and item, or none of "
                     "the item within the window)")
    if report.get("cached_requests"):
        lines.append(f"note: {report['cached_requests']} slates were served from a cache: "
                     "rankings recomputed for them use the user's history at the request, "
                     "the cached slate an earlier one")
    if report["clicks"] == 0:
        lines.append("warning: no clicks in the log: every estimate is 0 and its interval "
                     "[0, 0] says nothing about the rate (a normal interval needs events)")
    if report["explored_requests"] == 0:
        lines.append("warning: no explored slates (exploration.rate = 0): only rankings that "
                     "agree with the logged one can be estimated")
    for name, pol in report["policies"].items():
        if pol.get("support", 1.0) < 1.0:
            lines.append(f"warning: {name} is supported on {pol['support']:.1%} of its "
                         "positions: IPS and SNIPS count the others as never clicked (their "
                         "intervals do not cover that bias); DR fills them from its reward "
                         "model")
    lines.append(f"{'policy':<10} {'metric':<11} {'est.':<6} {'value':>9} {'95% CI':>21} "
                 f"{'lift vs base, else logging (95% CI)':>36} {'ESS':>9}")
    for name, pol in report["policies"].items():
        for metric in ("ctr", "conversion"):
            est = pol[metric]
            for kind in ("ips", "snips", "dr"):
                if kind not in est:
                    continue
                v = est[kind]
                lift = est.get("lift_vs_base", est.get("lift_vs_logging", {})).get(kind)
                lift_txt = "" if lift is None else interval_text(lift, "+.1%")
                lo, hi = (estimate_text(x, ".5f") for x in v["ci95"])
                lines.append(f"{name:<10} {metric:<11} {kind:<6} "
                             f"{estimate_text(v['estimate'], '.5f'):>9} [{lo}, {hi}] "
                             f"{lift_txt:>36} "
                             f"{est['ess']:>9.0f}")
        if "support" in pol:
            lines.append(f"{name:<10} support {pol['support']:.1%} of its positions, "
                         f"{pol['ctr']['matched']:.1%} identical to the logged item")
    return "\n".join(lines)


def estimate_text(value: float, spec: str) -> str:
    """``value`` formatted, or ``n/a`` where the estimate does not exist (NaN)."""
    return format(value, spec) if np.isfinite(value) else "n/a"


def interval_text(est: Mapping[str, Any], spec: str) -> str:
    """``estimate [low, high]`` of an :func:`estimate` entry, each by :func:`estimate_text`."""
    lo, hi = est["ci95"]
    return (f"{estimate_text(est['estimate'], spec)} [{estimate_text(lo, spec)}, "
            f"{estimate_text(hi, spec)}]")
