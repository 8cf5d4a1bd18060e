"""Learned reranker: a LightGBM lambdarank model trained on the log (``rankly train-ranker``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rankly.engine.api import (
    RANKER_FEATURES,
    ComponentContext,
    Model,
    Ranking,
    UserFeatures,
    hookimpl,
    ranker_features,
)

PART = "ltr"


class LtrReranker:
    """Reorder the first ``top`` items of the incoming ranking (the scorer's pool) by the
    ``ltr`` part's model; items after them keep their order below. Reasons and anchors stay
    with their items. Scores become the model's (descending), so a diversity reranker after
    this one selects by them.

    Options: ``top`` (int, default 10: the items exploration's default ``top_m`` shuffles,
    so ``rankly off-policy`` can estimate this ranking from logs; a deeper ``top`` brings
    items the logs never showed there, whose estimates rest on DR's reward model alone;
    docs/feedback-loop.md has the numbers).
    """

    def __init__(self, model: Model, booster: Any, top: int = 10) -> None:
        part = model.part(PART) or {}
        self.booster = booster
        self.top = int(top)
        self.categories = np.asarray(model.catalog.categories)
        pop = model.part("pop")
        self.popularity = None if pop is None else np.asarray(pop["scores"], dtype=np.float64)
        self.item_ctr = np.asarray(part["item_ctr"]) if "item_ctr" in part else None
        self.item_impressions = (np.asarray(part["item_impressions"])
                                 if "item_impressions" in part else None)

    def rerank(self, user: UserFeatures, ranking: Ranking, n: int) -> Ranking:
        m = min(len(ranking), self.top)
        if m < 2:
            return ranking.take(np.arange(min(n, len(ranking))))
        head = ranking.items[:m]
        x = ranker_features(user.history, head, np.arange(m, dtype=np.float32),
                            ranking.scores[:m], self.categories, self.popularity,
                            self.item_ctr, self.item_impressions, 0.0)
        # NOTE: one thread: this runs in the pipeline's worker threads, and OpenMP threads
        # that find the other core busy spin (P95 8 ms against 0.4 ms on one thread)
        s = np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float32)
        order = np.argsort(-s, kind="stable")
        k = min(n, len(ranking))
        if k <= m:
            keep = order[:k]
            return Ranking(head[keep], s[keep], ranking.reasons[keep], ranking.anchors[keep])
        rest = np.arange(m, k)
        below = (s.min() - 1.0 - np.arange(rest.size)).astype(np.float32)
        return Ranking(np.concatenate([head[order], ranking.items[rest]]),
                       np.concatenate([s[order], below]),
                       np.concatenate([ranking.reasons[order], ranking.reasons[rest]]),
                       np.concatenate([ranking.anchors[order], ranking.anchors[rest]]))


def load_booster(model: Model) -> Any:
    """The ``ltr`` part's LightGBM model, or None when the model has no such part."""
    part = model.part(PART)
    if part is None or "model" not in part:
        return None
    import lightgbm  # the `rankly[ltr]` extra

    text = np.asarray(part["model"], dtype=np.uint8).tobytes().decode("utf-8")
    return lightgbm.Booster(model_str=text)


@hookimpl
def register_rerankers(register):
    def ltr(ctx: ComponentContext) -> LtrReranker | None:
        top = int(ctx.options.get("top", 10))
        if top < 2:  # one item or none cannot be reordered: it would serve unchanged
            raise ValueError(f"ltr: top must be at least 2 (the items it reorders), got {top}")
        booster = load_booster(ctx.model)
        if booster is None:
            return None
        if booster.num_feature() != len(RANKER_FEATURES):
            # a part from another rankly: every request would fail in predict; say so at
            # start instead
            raise ValueError(
                f"ltr: the model's ranker takes {booster.num_feature()} features, this rankly "
                f"computes {len(RANKER_FEATURES)}; train it again with rankly train-ranker")
        return LtrReranker(ctx.model, booster, top)

    register("ltr", ltr, options={"top": 10})
