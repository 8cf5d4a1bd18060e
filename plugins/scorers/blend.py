"""Linear blend of model scorers: a weighted sum of per-request z-normalized scores.

Weights come from ``ctx.options["weights"]`` (e.g. ``{"ease": 0.6, "itemknn": 0.4}``), else from
the model's ``blend`` part (selected by the ``blend`` trainer on hold-outs of the training data
only), else equal weights over the parts the model has. The "recent" component is a
time-decayed popularity stored in the blend part with the half-life validation chose.
Components are built straight from the model's parts with the sibling plugins' scorer classes
(a plugin cannot reach the registry).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from rankly.engine import hookimpl
from rankly.engine.interactions import TrainingData
from rankly.engine.model import Model, UserTable
from rankly.engine.types import ComponentContext, ModelPart, UserFeatures
from rankly.plugins.models import als, ease, itemknn, popularity

NAME = "blend"
#: The time-decayed popularity component; its scores live in the blend part itself, computed
#: with the half-life that validation chose.
RECENT = "recent"
#: EASE scored from a recency-weighted history (see ``ease.EaseScorer.history_half_life``).
EASE_RECENT = "ease-recent"
#: Its half-life in history positions (from hold-outs of the ML-100K train part only: 5
#: beat 20 and 80 on the user-last hold-out; on the temporal hold-out it loses to plain EASE,
#: and validation then gives it no weight).
HISTORY_HALF_LIFE = 5.0
DEFAULT_COMPONENTS = ("ease", "itemknn", "als", RECENT, EASE_RECENT)


def _recent_scorer(model: Model) -> popularity.PopularityScorer | None:
    part = model.part(NAME)
    return None if part is None or RECENT not in part else popularity.PopularityScorer(
        part[RECENT])


#: Component name -> (model part it needs, scorer builder).
COMPONENTS: Mapping[str, tuple[str, Callable[[Model], Any]]] = {
    "ease": (ease.NAME, ease.EaseScorer.from_model),
    "itemknn": (itemknn.NAME, lambda m: itemknn.scorer(m)),
    "als": (als.NAME, als.ALSScorer.from_model),
    "popular": (popularity.NAME, lambda m: popularity.PopularityScorer(m.part("pop")["scores"])),
    RECENT: (NAME, _recent_scorer),
    EASE_RECENT: (ease.NAME, lambda m: ease.EaseScorer.from_model(m, float(
        m.params(NAME).get("history_half_life", HISTORY_HALF_LIFE)))),
}
TRAINERS: Mapping[str, Any] = {
    "ease": ease.EaseTrainer(), "itemknn": itemknn.ItemKNNTrainer(), "als": als.ALSTrainer(),
    "popular": popularity.PopularityTrainer(),
}


def znorm(x: np.ndarray) -> np.ndarray:
    """Return ``(x - mean) / std`` as float32 (zeros when ``x`` is constant or empty)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    sd = x.std()
    return np.zeros(x.size, np.float32) if sd < 1e-12 else ((x - x.mean()) / sd).astype(
        np.float32)


class BlendScorer:
    """``score = sum_c w_c * znorm(scorer_c.score(user, items))`` over the request's items."""

    def __init__(self, components: Mapping[str, Any], weights: Mapping[str, float]) -> None:
        self.components = dict(components)
        self.weights = {c: float(w) for c, w in weights.items() if c in components and w}

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        out = np.zeros(np.asarray(items).size, dtype=np.float32)
        for name, w in self.weights.items():
            out += w * znorm(self.components[name].score(user, items))
        return out


def build(model: Model, weights: Mapping[str, float] | None = None) -> BlendScorer | None:
    """Return the blend over ``model``'s parts (None when no weighted component is present)."""
    if weights is None:
        part = model.part(NAME)
        if part is not None:
            weights = dict(zip(model.params(NAME).get("components", []),
                               np.asarray(part["weights"]).tolist(), strict=False))
    present = {c: build_c(model) for c, (p, build_c) in COMPONENTS.items()
               if model.part(p) is not None and (weights is None or weights.get(c))}
    present = {c: s for c, s in present.items() if s is not None}
    if not present:
        return None
    if weights is None:
        weights = {c: 1.0 for c in present if c != "popular"}  # popularity alone is no blend
    blend = BlendScorer(present, weights)
    return blend if blend.weights else None


# --- training: tune the weights on a validation split of the training data ----------------


def subset(data: TrainingData, keep: np.ndarray) -> TrainingData:
    """Return ``data`` restricted to the events ``keep`` (same catalog and user rows)."""
    u, i = data.user_idx[keep], data.item_idx[keep]
    w, ts = data.weights[keep], data.timestamps[keep]
    m = sp.csr_matrix((w, (u, i)), shape=data.matrix.shape, dtype=np.float32)
    m.sum_duplicates()
    rev = np.lexsort((-i, -ts, u))
    ru, ri = u[rev], i[rev]
    _, first = np.unique(ru * max(data.n_items, 1) + ri, return_index=True)
    pick = np.sort(first)
    counts = np.bincount(ru[pick], minlength=data.n_users)
    users = UserTable(data.users.user_ids,
                      np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      ri[pick].astype(np.int64), index=data.users.index)
    return TrainingData(data.catalog, users, m, u, i, w, ts)


def holdout_last(data: TrainingData, fraction: float, min_events: int = 5
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mask (train, validation) holding out each user's last ``fraction`` of events by time.

    Events are ordered by (timestamp, item index); users with fewer than ``min_events``
    events keep all of them in train.
    """
    order = np.lexsort((data.item_idx, data.timestamps, data.user_idx))
    u = data.user_idx[order]
    counts = np.bincount(u, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])[u]
    rank = np.arange(u.size) - starts
    n_val = np.where(counts >= min_events, np.ceil(counts * fraction).astype(np.int64), 0)[u]
    val = np.zeros(u.size, dtype=bool)
    val[order] = rank >= counts[u] - n_val
    return ~val, val


def holdout_temporal(data: TrainingData, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask (train, validation) cutting all events at the ``quantile`` of their timestamps."""
    cut = np.quantile(data.timestamps, quantile, method="lower")
    return data.timestamps < cut, data.timestamps >= cut


def _ndcg_rows(top: np.ndarray, rel: np.ndarray, n_rel: int, k: int) -> np.ndarray:
    """NDCG@k of each row of candidate positions ``top`` [W, k] given a relevance mask."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel[top] * disc[: top.shape[1]]).sum(axis=1)
    return dcg / disc[: min(k, n_rel)].sum()


def ranked_top(blended: np.ndarray, depth: int) -> np.ndarray:
    """Return the best ``depth`` positions [W, depth] of each row of ``blended``, best first."""
    kk = min(depth, blended.shape[1])
    top = np.argpartition(-blended, kk - 1, axis=1)[:, :kk]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(blended, top, 1), 1,
                                              kind="stable"), 1)


def apply_cap(top: np.ndarray, categories: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Return ``k`` of the ranked positions ``top`` [W, d] per row under a per-category cap.

    The served diversity reranker's rule (``_fast.diverse_topk``): walk each ranking keeping
    an item while its category (``categories`` indexed by position; < 0 = uncategorized,
    never capped) has fewer than ``cap`` kept; the best skipped items fill the remaining
    slots, and the slate keeps ranking order.
    """
    c = categories[top]
    by_cat = np.argsort(c, axis=1, kind="stable")
    sc = np.take_along_axis(c, by_cat, 1)
    col = np.broadcast_to(np.arange(top.shape[1]), sc.shape)
    start = np.maximum.accumulate(np.where(
        np.concatenate([np.ones((sc.shape[0], 1), bool), sc[:, 1:] != sc[:, :-1]], 1),
        col, 0), axis=1)
    rank = np.empty_like(by_cat)
    np.put_along_axis(rank, by_cat, col - start, 1)
    skipped = (c >= 0) & (rank >= cap)
    # kept items first, then the best skipped ones; the slate is in ranking order
    order = np.sort(np.argsort(skipped, axis=1, kind="stable")[:, :k], axis=1)
    return np.take_along_axis(top, order, 1)


def capped_top(blended: np.ndarray, categories: np.ndarray, k: int, cap: int | None,
               depth: int = 50) -> np.ndarray:
    """The top-``k`` positions [W, k] per row, under ``cap`` (:func:`apply_cap`) on the top
    ``depth`` (what the served reranker sees) unless ``cap`` is None."""
    if cap is None:
        return ranked_top(blended, k)
    return apply_cap(ranked_top(blended, max(depth, k)), categories, k, cap)


def simplex_grid(n: int, step: float) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1."""
    units = round(1 / step)
    rows = [c for c in itertools.product(range(units + 1), repeat=n) if sum(c) == units]
    return np.asarray(rows, dtype=np.float64) / units


def _validation_users(val_items: Mapping[int, np.ndarray], max_users: int,
                      seed: int) -> list[int]:
    rows = sorted(val_items)
    if len(rows) > max_users:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_users, replace=False).tolist())
    return rows


def user_ndcg(model: Model, val_items: Mapping[int, np.ndarray], components: Sequence[str],
              grid: np.ndarray, recent: Sequence[np.ndarray] = (), k: int = 10,
              candidates: int = 300, max_users: int = 2000, seed: int = 0,
              cap: int | None = None, depth: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Return the NDCG@k of every user for every weight row: (capped, uncapped) [H, W, U].

    ``grid`` is [W, C] over ``components``. The "recent" component takes each popularity
    array of ``recent`` in turn (H = len(recent), or 1 without it), so one pass over the users
    scores every (half-life, weights) pair. Each user's candidates are the union of the top
    ``candidates`` of every generator the served pipeline uses (ease, itemknn, als, popular),
    minus seen items; scores are z-normalized over that set, as :class:`BlendScorer` does at
    request time. "capped" applies the served diversity cap ``cap`` to the top ``depth``
    (:func:`apply_cap`) before NDCG is computed; it equals "uncapped" when ``cap`` is None.
    Users without candidates score 0.
    """
    fixed = [c for c in components if c != RECENT]
    scorers = {c: COMPONENTS[c][1](model) for c in fixed}
    # the served pipeline's generators: ease, itemknn, als, popular (ease-recent is a scorer)
    gens = [s for c, s in scorers.items() if hasattr(s, "generate") and c != EASE_RECENT]
    pop = model.part(popularity.NAME)
    if pop is not None:
        gens.append(popularity.PopularCandidates(pop["scores"], model.catalog.categories))
    variants = [popularity.PopularityScorer(r) for r in recent] if RECENT in components else []
    rows = _validation_users(val_items, max_users, seed)
    categories = np.asarray(model.catalog.categories, dtype=np.int64)
    out = np.zeros((max(len(variants), 1), grid.shape[0], len(rows)))
    out_capped = out if cap is None else np.zeros_like(out)
    for col, row in enumerate(rows):
        hist = model.users.history(row)
        user = UserFeatures(str(model.users.user_ids[row]), row, hist, np.unique(hist))
        pool = [g.generate(user, candidates).items for g in gens]
        cand = np.unique(np.concatenate(pool)) if pool else np.empty(0, np.int64)
        if cand.size == 0:
            continue
        base = {c: znorm(scorers[c].score(user, cand)) for c in fixed}
        rel = np.isin(cand, val_items[row]).astype(np.float64)
        for h, variant in enumerate(variants or [None]):
            if variant is not None:
                base[RECENT] = znorm(variant.score(user, cand))
            blended = grid @ np.stack([base[c] for c in components])
            n_rel = int(val_items[row].size)
            top = ranked_top(blended, k if cap is None else max(depth, k))
            out[h, :, col] = _ndcg_rows(top[:, :k], rel, n_rel, k)
            if cap is not None:
                out_capped[h, :, col] = _ndcg_rows(
                    apply_cap(top, categories[cand], k, cap), rel, n_rel, k)
    return out_capped, out


@dataclass(frozen=True)
class Choice:
    """The outcome of :func:`choose_weights` (row indices into the flattened candidates)."""

    best: int
    best_single: int
    gain: float  # mean over hold-outs of the relative per-user NDCG gain of best over single
    p_value: float  # one-sided, H0: gain <= 0 (1.0 when best is the single)


def paired_gain(challenger: Sequence[np.ndarray], incumbent: Sequence[np.ndarray]
                ) -> tuple[float, float]:
    """Return (gain, one-sided p) of paired per-user NDCG differences over hold-outs.

    On each hold-out the per-user differences are divided by the incumbent's mean NDCG (a
    relative gain); the hold-outs' mean gains are averaged with equal weight and tested with
    a normal approximation of the paired t-test (standard error from the per-user variances).
    """
    gains, variances = [], []
    for a, b in zip(challenger, incumbent, strict=True):
        d = (np.asarray(a) - np.asarray(b)) / max(float(np.mean(b)), 1e-12)
        gains.append(float(d.mean()) if d.size else 0.0)
        variances.append(float(d.var(ddof=1)) / d.size if d.size > 1 else 0.0)
    gain = float(np.mean(gains))
    se = math.sqrt(sum(variances)) / len(variances)
    if se <= 0:
        return gain, 0.0 if gain > 0 else 1.0
    return gain, 0.5 * math.erfc(gain / se / math.sqrt(2))


def choose_weights(scores: Sequence[np.ndarray], singles: np.ndarray,
                   alpha: float = 0.05, eligible: np.ndarray | None = None) -> Choice:
    """Pick a candidate row from per-user validation NDCG on one or more hold-outs.

    ``scores`` holds one [R, U_h] array per hold-out (R candidate weightings, U_h users);
    ``singles`` the rows that put all weight on one component. The incumbent is the best
    single (by the mean over hold-outs of mean NDCG / the best single's mean NDCG); the
    challenger is the best row by the same criterion, and it replaces the incumbent only when
    its paired gain (:func:`paired_gain`) is significant at one-sided level ``alpha``.
    Only rows where the boolean mask ``eligible`` [R] holds compete (all rows when None, or
    when no single is eligible).
    """
    means = [s.mean(axis=1) for s in scores]
    ok = np.ones(len(means[0]), bool) if eligible is None else np.asarray(eligible, bool)
    if not ok[singles].any():
        ok = np.ones(len(means[0]), bool)
    singles = singles[ok[singles]]
    ratio = np.mean([m / max(float(m[singles].max()), 1e-12) for m in means], axis=0)
    single = int(singles[np.argmax(ratio[singles])])
    best = int(np.argmax(np.where(ok, ratio, -np.inf)))
    if best == single:
        return Choice(single, single, 0.0, 1.0)
    gain, p = paired_gain([s[best] for s in scores], [s[single] for s in scores])
    return Choice(best if p < alpha and gain > 0 else single, single, gain, p)


#: Weights served with ``validation = "none"`` (an EASE-led mix; see docs/evaluation.md).
PRIOR: Mapping[str, float] = {"ease": 0.7, "itemknn": 0.1, "als": 0.2, "popular": 0.0}
#: Half-lives (days; 0 = no decay) the "recent" component is validated with.
HALF_LIVES = (0.0, 7.0, 30.0, 90.0, 365.0)


def prior_row(grid: np.ndarray, components: Sequence[str],
              prior: Mapping[str, float]) -> int | None:
    """The grid row nearest to ``prior`` restricted to ``components`` (renormalized)."""
    w = np.array([float(prior.get(c, 0.0)) for c in components])
    if w.sum() <= 0:
        return None
    return int(np.argmin(np.abs(grid - w / w.sum()).sum(axis=1)))


def validation_set(data: TrainingData, how: str, fraction: float
                   ) -> tuple[TrainingData, dict[int, np.ndarray]]:
    """Split ``data`` into (validation-train data, validation targets per user row).

    Targets are the held-out items a user had not touched in the validation-train part;
    users without validation-train history (cold) are left out.
    """
    if how == "temporal":
        keep, val = holdout_temporal(data, 1.0 - fraction)
    elif how == "user-last":
        keep, val = holdout_last(data, fraction)
    else:
        raise ValueError(f"blend: unknown validation {how!r}; one of user-last, temporal, both")
    sub = subset(data, keep)
    vu, vi = data.user_idx[val], data.item_idx[val]
    seen_pairs = set(zip(sub.user_idx.tolist(), sub.item_idx.tolist(), strict=True))
    val_items: dict[int, list[int]] = {}
    for u, i in zip(vu.tolist(), vi.tolist(), strict=True):
        if (u, i) not in seen_pairs and sub.users.history(u).size:
            val_items.setdefault(u, []).append(i)
    return sub, {u: np.unique(v) for u, v in val_items.items()}


class BlendTrainer:
    """Select blend weights on hold-outs of the training events, with a significance test.

    ``validation`` picks the hold-outs (each ``validation_fraction``, 0.2, of the events):
    "user-last" (each user's last 20% by time, like the user-last evaluation split),
    "temporal" (the last 20% of all events by time, like the temporal split), "both"
    (default: the weights must be good on both, since training does not know how it will be
    judged) or "none" (serve ``prior``, default :data:`PRIOR`). The sub-models are refit on
    each validation-train part only; the served parts are trained separately on all data.

    Candidates: every weight vector of the ``step`` (0.2) simplex grid over ``components``
    (default ease, itemknn, als, recent, ease-recent), crossed with ``half_lives`` (default
    :data:`HALF_LIVES`) for the "recent" component (time-decayed popularity, age measured from
    the newest training event). Rule (:func:`choose_weights`): the best single component is
    served unless the best candidate beats it with a one-sided paired test on the per-user
    NDCG@``k`` at level ``alpha`` (0.05). NDCG is measured on what is served: after the
    diversity cap ``diversity_cap`` (3, as the default pipeline; -1 = none), and only
    candidates whose validation cap cost (1 - capped / uncapped NDCG) is at most
    ``max_cap_cost`` (0.05) on every hold-out compete. Validation uses
    at most ``max_users`` (2000) users per hold-out and ``candidates`` (300) per generator, as
    served. ``<component>`` option tables go to the sub-trainers.
    """

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        started = time.perf_counter()
        comps = list(options.get("components", DEFAULT_COMPONENTS))
        if np.unique(data.item_idx).size > ease.MAX_ITEMS:
            comps = [c for c in comps if c not in ("ease", EASE_RECENT)]
        how = str(options.get("validation", "both"))
        fraction = float(options.get("validation_fraction", 0.2))
        half_lives = [float(h) for h in options.get("half_lives", HALF_LIVES)]
        if RECENT not in comps:
            half_lives = [0.0]
        # NOTE: step 0.2 (126 mixes of 5 components) rather than 0.1 (1001): 8x less
        # validation time (the demo trains the defaults before serving) and fewer challengers
        # to be optimistic about.
        grid = simplex_grid(len(comps), float(options.get("step", 0.2)))
        cap = int(options.get("diversity_cap", 3))
        cap = None if cap < 0 else cap
        holdouts = {"both": ("user-last", "temporal"), "none": ()}.get(how, (how,))
        scores, cap_costs, users = [], [], {}
        for holdout in holdouts:
            sub, targets = validation_set(data, holdout, fraction)
            parts = {}
            for c in dict.fromkeys("ease" if c == EASE_RECENT else c for c in comps):
                if c in TRAINERS:
                    part = TRAINERS[c].fit(sub, dict(options.get(c, {})))
                    parts[part.name] = part
            if popularity.NAME not in parts:
                parts[popularity.NAME] = TRAINERS["popular"].fit(sub, {})
            model = Model("validation", {"parts": {p.name: {"params": dict(p.params)}
                                                   for p in parts.values()}},
                          data.catalog, sub.users, {n: p.arrays for n, p in parts.items()})
            recent = [popularity.decayed_popularity(sub, h) for h in half_lives]
            per_user, uncapped = user_ndcg(model, targets, comps, grid, recent,
                                 k=int(options.get("k", 10)),
                                 candidates=int(options.get("candidates", 300)),
                                 max_users=int(options.get("max_users", 2000)),
                                 cap=cap)
            scores.append(per_user.reshape(-1, per_user.shape[-1]))
            cap_costs.append(1.0 - scores[-1].mean(axis=1) / np.maximum(
                uncapped.reshape(-1, uncapped.shape[-1]).mean(axis=1), 1e-12))
            users[holdout] = int(per_user.shape[-1])
        # candidate r = (half-life r // W, weights r % W); singles weigh one component only
        n_w = grid.shape[0]
        single_rows = np.flatnonzero(grid.max(axis=1) == 1.0)
        recent_col = comps.index(RECENT) if RECENT in comps else -1
        singles = np.array([h * n_w + r for h in range(len(half_lives)) for r in single_rows
                            if h == 0 or grid[r, recent_col] == 1.0], dtype=np.int64)
        metrics: dict[str, Any] = {}
        if scores and all(s.shape[1] for s in scores):
            max_cost = float(options.get("max_cap_cost", 0.05))
            eligible = np.all([c <= max_cost for c in cap_costs], axis=0)
            choice = choose_weights(scores, singles, float(options.get("alpha", 0.05)),
                                    eligible)
            weights, half_life = grid[choice.best % n_w], half_lives[choice.best // n_w]
            single = grid[choice.best_single % n_w]
            metrics = {
                "validation_ndcg": {h: round(float(s[choice.best].mean()), 5)
                                    for h, s in zip(users, scores, strict=True)},
                "best_single": comps[int(np.argmax(single))],
                "best_single_ndcg": {h: round(float(s[choice.best_single].mean()), 5)
                                     for h, s in zip(users, scores, strict=True)},
                "gain_vs_single": round(choice.gain, 4), "p_value": round(choice.p_value, 4),
                "validation_cap_cost": {h: round(float(c[choice.best]), 4)
                                        for h, c in zip(users, cap_costs, strict=True)},
                "validation_users": users}
        else:
            row = prior_row(grid, comps, options.get("prior", PRIOR))
            if row is None:
                raise ValueError("blend: no prior weights and no validation users")
            weights, half_life = grid[row], half_lives[0]
        arrays = {"weights": weights.astype(np.float32)}
        if RECENT in comps:
            arrays[RECENT] = popularity.decayed_popularity(data, half_life)
        return ModelPart(
            name=NAME,
            params={"components": comps, "weights": dict(zip(comps, weights.tolist(),
                                                                strict=True)),
                    "half_life_days": half_life, "history_half_life": HISTORY_HALF_LIFE,
                    "validation": how,
                    "validation_fraction": fraction, "diversity_cap": cap},
            arrays=arrays,
            metrics={**metrics, "tune_seconds": round(time.perf_counter() - started, 2)},
        )


@hookimpl
def register_trainers(register):
    register(NAME, BlendTrainer())


@hookimpl
def register_scorers(register):
    def blend(ctx: ComponentContext) -> BlendScorer | None:
        weights = ctx.options.get("weights")
        return build(ctx.model, dict(weights) if weights else None)

    register(NAME, blend)
