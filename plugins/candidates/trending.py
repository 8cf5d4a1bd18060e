"""Live trending candidates: the hottest items of the hottest categories, from event counters."""

from __future__ import annotations

import numpy as np

from rankly import _fast
from rankly.engine.api import Candidates, ComponentContext, Reason, UserFeatures, hookimpl


class TrendingCandidates:
    """Items with the highest live popularity in the categories trending right now.

    For a user with history, the categories are those of their ``history_depth`` most recent
    items; for a cold user, every category. Of those, the ``categories`` with the highest
    trending score are kept, and their items ranked by live (decayed) popularity; items
    without any event are never proposed. Anchor: the item's category (``TRENDING_IN``).
    Counters are read through ``ctx.live_counters()`` at every call, so they follow events
    without a retrain; before events start (or with none) it proposes nothing.
    """

    def __init__(self, ctx: ComponentContext, categories: int = 3,
                 history_depth: int = 20) -> None:
        self.live_counters = ctx.live_counters
        self.catalog = ctx.model.catalog
        self.n_categories = categories
        self.history_depth = history_depth

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        proj = self.live_counters()
        if proj is None:
            return Candidates.empty()
        catalog = self.catalog
        scores = proj.item_scores(catalog)
        cat_of = catalog.categories
        cat_scores = proj.category_scores(catalog)
        if user.history.size:
            cats = np.unique(cat_of[user.history[: self.history_depth]])
            cats = cats[cats >= 0]
        else:
            cats = np.arange(cat_scores.size)
        if cats.size and cat_scores.size:
            hot = cats[np.argsort(-cat_scores[cats], kind="stable")[: self.n_categories]]
            hot = hot[cat_scores[hot] > 0]
            # a lookup table, not np.isin (a sort of the whole catalog); its extra last slot
            # is what the -1 of uncategorized items reads: never hot
            is_hot = np.zeros(cat_scores.size + 1, dtype=bool)
            is_hot[hot] = True
            mask = is_hot[cat_of] & (scores > 0)
        else:
            mask = scores > 0
        if not mask.any():
            return Candidates.empty()
        masked = np.where(mask, scores, np.float32(np.nan))
        idx, _ = _fast.topk(masked, n, exclude=user.seen)
        return Candidates.of(idx, Reason.TRENDING_IN, cat_of[idx].astype(np.int64))


@hookimpl
def register_candidate_generators(register):
    def trending(ctx: ComponentContext) -> TrendingCandidates:
        opts = ctx.options
        return TrendingCandidates(ctx, categories=int(opts.get("categories", 3)),
                                  history_depth=int(opts.get("history_depth", 20)))

    register("trending", trending, options={"categories": 3, "history_depth": 20})
