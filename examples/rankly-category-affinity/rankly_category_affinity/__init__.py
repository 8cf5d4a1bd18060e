"""Example rankly scorer plugin: prefer items from the categories a user interacts with most."""

import numpy as np

from rankly.engine.api import hookimpl


class CategoryAffinityScorer:
    """Score = the share of the user's history that falls in the item's primary category."""

    def __init__(self, categories):
        self.categories = np.asarray(categories)  # primary category per item, -1 = none

    def score(self, user, items):
        known = self.categories[user.history]
        known = known[known >= 0]
        share = np.bincount(known, minlength=self.categories.max() + 1) / max(known.size, 1)
        cats = self.categories[items]
        return np.where(cats >= 0, share[cats], 0.0).astype(np.float32)


@hookimpl
def register_scorers(register):
    # options=(): it takes none, so a [plugins.category-affinity] key stops `rankly serve`
    register("category-affinity", lambda ctx: CategoryAffinityScorer(ctx.model.catalog.categories),
             options=())
