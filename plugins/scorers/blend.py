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


def tune_weights(model: Model, val_items: Mapping[int, np.ndarray], components: Sequence[str],
                 k: int = 10, candidates: int = 100, step: float = 0.1,
                 max_users: int = 2000, seed: int = 0, min_gain: float = 0.02
                 ) -> tuple[np.ndarray, float]:
    """Grid-search blend weights maximising mean NDCG@k on validation users.

    A mixture must beat the best single component by ``min_gain`` (relative), else that
    component alone is returned: small validation sets otherwise overfit the weights. Each
    user's candidates are the union of every component generator's top ``candidates``
    (as served); scores are z-normalized per user, like :class:`BlendScorer` does.
    """
    scorers = {c: COMPONENTS[c][1](model) for c in components}
    grid = simplex_grid(len(components), step)
    rows = sorted(val_items)
    if len(rows) > max_users:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    total = np.zeros(grid.shape[0])
    for row in rows:
        hist = model.users.history(row)
        user = UserFeatures(str(model.users.user_ids[row]), row, hist, np.unique(hist))
        pool = [s.generate(user, candidates).items for c, s in scorers.items()
                if hasattr(s, "generate")]
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
    best = int(np.argmax(total))
    single = np.flatnonzero(grid.max(axis=1) == 1.0)
    best_single = int(single[np.argmax(total[single])])
    if total[best] < total[best_single] * (1 + min_gain):
        best = best_single
    return grid[best], float(total[best] / max(len(rows), 1))


class BlendTrainer:
    """Tune blend weights on a held-out ``validation_fraction`` of the training events.

    ``validation`` is "temporal" (default: the last 20% of all events by time, the way a
    deployed model meets the future) or "user-last" (each user's last 20%). Options:
    ``components`` (default ease, itemknn, als, popular), ``step`` (grid step, 0.1), ``k`` (10), ``candidates`` (100 per generator), and
    ``<component>`` option tables for the sub-trainers. The sub-models are refit on the
    validation-train part only; the served parts are trained separately on all of the data.
    """

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        started = time.perf_counter()
        comps = [c for c in options.get("components", ("ease", "itemknn", "als", "popular"))]
        if "ease" in comps and np.unique(data.item_idx).size > ease.MAX_ITEMS:
            comps.remove("ease")
        how = str(options.get("validation", "temporal"))
        fraction = float(options.get("validation_fraction", 0.2))
        if how == "temporal":
            keep, val = holdout_temporal(data, 1.0 - fraction)
        else:
            keep, val = holdout_last(data, fraction)
        sub = subset(data, keep)
        parts = {}
        for c in comps:
            part = TRAINERS[c].fit(sub, dict(options.get(c, {})))
            parts[part.name] = part
        model = Model("validation", {"parts": {p.name: {"params": dict(p.params)}
                                               for p in parts.values()}},
                      data.catalog, sub.users, {n: p.arrays for n, p in parts.items()})
        vu, vi = data.user_idx[val], data.item_idx[val]
        seen_pairs = set(zip(sub.user_idx.tolist(), sub.item_idx.tolist()))
        val_items: dict[int, list[int]] = {}
        for u, i in zip(vu.tolist(), vi.tolist(), strict=True):
            if (u, i) not in seen_pairs and sub.users.history(u).size:
                val_items.setdefault(u, []).append(i)
        targets = {u: np.unique(v) for u, v in val_items.items()}
        weights, score = tune_weights(
            model, targets, comps, k=int(options.get("k", 10)),
            candidates=int(options.get("candidates", 100)),
            step=float(options.get("step", 0.1)), min_gain=float(options.get("min_gain", 0.02)))
        return ModelPart(
            name=NAME,
            params={"components": comps, "weights": dict(zip(comps, weights.tolist(),
                                                                strict=True)),
                    "validation": how, "validation_fraction": fraction},
            arrays={"weights": weights.astype(np.float32)},
            metrics={"validation_ndcg": score, "validation_users": len(targets),
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
