"""Boost reranker: business rules that multiply the scores of chosen items or categories."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankly.engine.api import Catalog, ComponentContext, Ranking, Reason, UserFeatures, hookimpl


class BoostReranker:
    """Multiply scores by per-item and per-category factors, then re-sort (stable).

    Options: ``items`` {item_id: factor}, ``categories`` {category name: factor}. Factors must
    be finite and > 0. Boosted items (factor > 1) get the reason "Featured" first.
    """

    def __init__(self, catalog: Catalog, items: Mapping[str, float] | None = None,
                 categories: Mapping[str, float] | None = None) -> None:
        factor = np.ones(len(catalog), dtype=np.float32)
        for cid, f in (categories or {}).items():
            if not np.isfinite(f) or f <= 0:
                raise ValueError(f"boost factor for category {cid!r} must be finite and > 0")
            factor[catalog.items_in_categories([cid])] *= np.float32(f)
        for iid, f in (items or {}).items():
            if not np.isfinite(f) or f <= 0:
                raise ValueError(f"boost factor for item {iid!r} must be finite and > 0")
            idx = catalog.index.get(str(iid))
            if idx is not None:
                factor[idx] *= np.float32(f)
        self.factor = factor

    def rerank(self, user: UserFeatures, ranking: Ranking, n: int) -> Ranking:
        f = self.factor[ranking.items]
        # scores may be negative: boosting moves them towards +inf either way
        scores = np.where(ranking.scores >= 0, ranking.scores * f, ranking.scores / f)
        order = np.lexsort((np.arange(len(ranking)), -scores))[:n]
        reasons = np.where(f > 1, np.int8(Reason.BOOSTED), ranking.reasons)
        return Ranking(ranking.items[order], scores[order].astype(np.float32),
                       reasons[order], ranking.anchors[order])


@hookimpl
def register_rerankers(register):
    def boost(ctx: ComponentContext) -> BoostReranker | None:
        opts = ctx.options
        if not opts.get("items") and not opts.get("categories"):
            return None
        return BoostReranker(ctx.model.catalog, opts.get("items"), opts.get("categories"))

    register("boost", boost, options=("items", "categories"))
