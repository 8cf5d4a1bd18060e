"""Diversity reranker: at most ``cap`` items per category in the slate (compiled kernel)."""

from __future__ import annotations

import numpy as np

from rankly import _fast
from rankly.engine.api import ComponentContext, Ranking, UserFeatures, hookimpl


class DiversityReranker:
    """Keep at most ``cap`` items per primary category, filling with the best skipped items.

    Options: ``cap`` (int, or null for no cap; default: what training validated for the model
    (the blend's ``serving_options``), else 3), ``fill`` (bool, default True: never return
    fewer items than available just to honour the cap).
    """

    def __init__(self, categories: np.ndarray, cap: int | None = 3, fill: bool = True) -> None:
        if cap is not None and cap < 0:
            raise ValueError("diversity cap must be >= 0")
        self.categories = np.ascontiguousarray(categories, dtype=np.int32)
        self.cap = None if cap is None else int(cap)
        self.fill = bool(fill)

    def rerank(self, user: UserFeatures, ranking: Ranking, n: int) -> Ranking:
        if self.cap is None:
            return ranking.take(np.arange(min(n, len(ranking.items))))
        cats = self.categories[ranking.items]
        pos, _, _ = _fast.diverse_topk(ranking.scores, cats, n, self.cap, fill=self.fill)
        return ranking.take(pos)


@hookimpl
def register_rerankers(register):
    def diversity(ctx: ComponentContext) -> DiversityReranker:
        opts = dict(ctx.options)
        cap = opts.get("cap", 3)
        return DiversityReranker(
            ctx.model.catalog.categories, cap=None if cap is None else int(cap),
            fill=bool(opts.get("fill", True)),
        )

    register("diversity", diversity, options={"cap": 3, "fill": True})
