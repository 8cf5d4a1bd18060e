"""Linear blend of model scorers: a weighted sum of per-request z-normalized scores.

Weights come from ``ctx.options["weights"]`` (e.g. ``{"ease": 0.6, "itemknn": 0.4}``), else from
the model's ``blend`` part (tuned by the ``blend`` trainer on a validation split of the training
data only), else equal weights over the parts the model has. Components are built straight from
the model's parts with the sibling plugins' scorer classes (a plugin cannot reach the registry).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from rankly.engine import hookimpl
from rankly.engine.interactions import TrainingData
from rankly.engine.model import Model, UserTable
from rankly.engine.types import ComponentContext, ModelPart, UserFeatures
from rankly.plugins.models import als, ease, itemknn, popularity

NAME = "blend"
#: Component name -> (model part it needs, scorer builder).
COMPONENTS: Mapping[str, tuple[str, Callable[[Model], Any]]] = {
    "ease": (ease.NAME, ease.EaseScorer.from_model),
    "itemknn": (itemknn.NAME, lambda m: itemknn.scorer(m)),
    "als": (als.NAME, als.ALSScorer.from_model),
    "popular": (popularity.NAME, lambda m: popularity.PopularityScorer(m.part("pop")["scores"])),
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


def simplex_grid(n: int, step: float) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1."""
    units = round(1 / step)
    rows = [c for c in itertools.product(range(units + 1), repeat=n) if sum(c) == units]
    return np.asarray(rows, dtype=np.float64) / units


def _validation_users(model: Model, val_items: Mapping[int, np.ndarray], max_users: int,
                      seed: int) -> list[int]:
    rows = sorted(val_items)
    if len(rows) > max_users:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_users, replace=False).tolist())
    return rows


def grid_ndcg(model: Model, val_items: Mapping[int, np.ndarray], components: Sequence[str],
              grid: np.ndarray, k: int = 10, candidates: int = 300, max_users: int = 2000,
              seed: int = 0) -> tuple[np.ndarray, int]:
    """Return (mean NDCG@k of every weight row of ``grid`` [W, C], number of users).

    Each user's candidates are the union of the top ``candidates`` of every generator the
    served pipeline uses (ease, itemknn, als, popular), minus seen items; scores are
    z-normalized over that set, as :class:`BlendScorer` does at request time.
    """
    scorers = {c: COMPONENTS[c][1](model) for c in components}
    gens = [s for s in scorers.values() if hasattr(s, "generate")]
    pop = model.part(popularity.NAME)
    if pop is not None:
        gens.append(popularity.PopularCandidates(pop["scores"], model.catalog.categories))
    rows = _validation_users(model, val_items, max_users, seed)
    total = np.zeros(grid.shape[0])
    for row in rows:
        hist = model.users.history(row)
        user = UserFeatures(str(model.users.user_ids[row]), row, hist, np.unique(hist))
        pool = [g.generate(user, candidates).items for g in gens]
        cand = np.unique(np.concatenate(pool)) if pool else np.empty(0, np.int64)
        if cand.size == 0:
            continue
        s = np.stack([znorm(scorers[c].score(user, cand)) for c in components])
        rel = np.isin(cand, val_items[row]).astype(np.float64)
        blended = grid @ s
        kk = min(k, cand.size)
        top = np.argpartition(-blended, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(blended, top, 1), 1), 1)
        total += _ndcg_rows(top, rel, int(val_items[row].size), k)
    return total / max(len(rows), 1), len(rows)


def choose_weights(grid: np.ndarray, scores: Sequence[np.ndarray], min_gain: float,
                   incumbent: int | None = None) -> tuple[int, int]:
    """Pick a row of ``grid`` from its validation NDCG on one or more hold-outs.

    The incumbent is row ``incumbent`` (the prior weights) or, when None, the best single
    component (by the mean over hold-outs of NDCG / the best single's NDCG). A challenger
    replaces it only when it beats it by ``min_gain`` (relative) on *every* hold-out; among
    those, the best mean ratio wins. Returns (chosen row, best single row).
    """
    single = np.flatnonzero(grid.max(axis=1) == 1.0)
    ratio = np.mean([s / max(float(s[single].max()), 1e-12) for s in scores], axis=0)
    best_single = int(single[np.argmax(ratio[single])])
    base = best_single if incumbent is None else incumbent
    margin = np.min([s / max(float(s[base]), 1e-12) for s in scores], axis=0)
    ok = np.flatnonzero(margin >= 1 + min_gain)
    if ok.size == 0:
        return base, best_single
    return int(ok[np.argmax(ratio[ok])]), best_single


def tune_weights(model: Model, val_items: Mapping[int, np.ndarray], components: Sequence[str],
                 k: int = 10, candidates: int = 300, step: float = 0.1,
                 max_users: int = 2000, seed: int = 0, min_gain: float = 0.02
                 ) -> tuple[np.ndarray, float]:
    """Grid-search blend weights maximising mean NDCG@k on one validation hold-out.

    A mixture must beat the best single component by ``min_gain`` (relative), else that
    component alone is returned: small validation sets otherwise overfit the weights.
    """
    grid = simplex_grid(len(components), step)
    total, _ = grid_ndcg(model, val_items, components, grid, k, candidates, max_users, seed)
    best, _ = choose_weights(grid, [total], min_gain)
    return grid[best], float(total[best])


#: The incumbent weights validation must beat (see docs/evaluation.md: on ML-100K, weights
#: tuned on hold-outs of the train part did not carry over to the test part, while this
#: EASE-led mix beat EASE alone on both splits).
PRIOR: Mapping[str, float] = {"ease": 0.7, "itemknn": 0.1, "als": 0.2, "popular": 0.0}


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
    """Validate blend weights on held-out ``validation_fraction`` (0.2) of the training events.

    ``validation`` picks the hold-outs: "user-last" (each user's last 20% by time: every
    user contributes, ~900 validation users on ML-100K), "temporal" (the last 20% of all
    events by time: only the users active at the end, ~100 on ML-100K), "both" (default) or
    "none" (serve ``prior``). Conservative rule (:func:`choose_weights`): the ``prior``
    weights (default :data:`PRIOR`) stay unless a grid mix beats them by ``min_gain`` (10%)
    on every hold-out with at least ``min_users`` (200) validation users; hold-outs with fewer
    users are reported but cannot overturn the prior. ``prior = {}`` makes the best single
    component the incumbent instead. Options also:
    ``components`` (default ease, itemknn, als, popular), ``step`` (grid step, 0.1), ``k``
    (10), ``candidates`` (300 per generator, as served), and ``<component>`` option tables
    for the sub-trainers. The sub-models are refit on each validation-train part only; the
    served parts are trained separately on all of the data.
    """

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        started = time.perf_counter()
        comps = [c for c in options.get("components", ("ease", "itemknn", "als", "popular"))]
        if "ease" in comps and np.unique(data.item_idx).size > ease.MAX_ITEMS:
            comps.remove("ease")
        how = str(options.get("validation", "both"))
        fraction = float(options.get("validation_fraction", 0.2))
        grid = simplex_grid(len(comps), float(options.get("step", 0.1)))
        incumbent = prior_row(grid, comps, options.get("prior", PRIOR))
        scores, users = [], {}
        holdouts = {"both": ("user-last", "temporal"), "none": ()}.get(how, (how,))
        for holdout in holdouts:
            sub, targets = validation_set(data, holdout, fraction)
            parts = {}
            for c in comps:
                part = TRAINERS[c].fit(sub, dict(options.get(c, {})))
                parts[part.name] = part
            if popularity.NAME not in parts:
                parts[popularity.NAME] = TRAINERS["popular"].fit(sub, {})
            model = Model("validation", {"parts": {p.name: {"params": dict(p.params)}
                                                   for p in parts.values()}},
                          data.catalog, sub.users, {n: p.arrays for n, p in parts.items()})
            total, n_users = grid_ndcg(model, targets, comps, grid, k=int(options.get("k", 10)),
                                       candidates=int(options.get("candidates", 300)))
            scores.append(total)
            users[holdout] = n_users
        min_users = int(options.get("min_users", 200))
        trusted = [s for s, n in zip(scores, users.values(), strict=True) if n >= min_users]
        if trusted:
            best, single = choose_weights(grid, trusted, float(options.get("min_gain", 0.10)),
                                          incumbent)
        elif incumbent is not None:
            best = single = incumbent
        else:
            raise ValueError("blend: no prior weights and no hold-out with enough users")
        weights = grid[best]
        holdouts = list(users)
        return ModelPart(
            name=NAME,
            params={"components": comps, "weights": dict(zip(comps, weights.tolist(),
                                                                strict=True)),
                    "validation": how, "validation_fraction": fraction},
            arrays={"weights": weights.astype(np.float32)},
            metrics={"validation_ndcg": {h: round(float(s[best]), 5)
                                         for h, s in zip(holdouts, scores, strict=True)},
                     "best_single": comps[int(np.argmax(grid[single]))],
                     "best_single_ndcg": {h: round(float(s[single]), 5)
                                          for h, s in zip(holdouts, scores, strict=True)},
                     "validation_users": users,
                     "kept_prior": bool(best == incumbent),
                     "tune_seconds": round(time.perf_counter() - started, 2)},
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
