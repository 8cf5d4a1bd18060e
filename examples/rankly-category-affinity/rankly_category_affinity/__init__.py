"""Example rankly scorer plugin: prefer items from the categories a user interacts with most."""

import numpy as np

from rankly.engine.api import hookimpl


class CategoryAffinityScorer:
    """Score = the share of the user's history that falls in the item's primary category."""

    def __init__(self, categories):
        self.categories = np.asarray(categories)  # primary category per item, -1 = none
        self.n_categories = int(self.categories.max(initial=-1)) + 1  # 0: none in the catalog

    def score(self, user, items):
        known = self.categories[user.history]
        known = known[known >= 0]
        share = np.bincount(known, minlength=self.n_categories) / max(known.size, 1)
        # a trailing 0 is the share of "no category": index -1 reads it
        return np.append(share, 0.0)[self.categories[items]].astype(np.float32)


@hookimpl
def register_scorers(register):
    # options=(): it takes none, so a [plugins.category-affinity] key stops `rankly serve`
    register("category-affinity", lambda ctx: CategoryAffinityScorer(ctx.model.catalog.categories),
             options=())
