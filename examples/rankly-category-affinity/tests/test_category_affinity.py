"""category-affinity on rankly's kit: the scorer contract, its latency, what it ranks."""

import numpy as np

from rankly.engine.testing import serve


def test_it_conforms_to_the_scorer_contract(rankly_check):
    # shape, dtype, NaN/inf, cold and anonymous users, determinism, input mutation, threads,
    # the pipeline's fallbacks: one line per defect if any
    rankly_check("category-affinity")


def test_its_latency_next_to_the_built_in_popular_scorer(rankly_latency):
    mine, popular = rankly_latency("category-affinity", budget_ms=5.0)
    assert mine.calls > 0 and popular.name == "popular"


def test_it_ranks_the_users_favourite_category_first(rankly_runtime, rankly_model):
    rt = rankly_runtime(scorers=("category-affinity", "popular"), rerankers=())
    answer = serve(rt, "1", n=10)
    assert answer["fallback"] is None
    catalog, users = rankly_model.catalog, rankly_model.users
    history = users.history(users.row("1"))
    share = np.bincount(catalog.categories[history], minlength=len(catalog.category_names))
    got = [share[catalog.categories[i]] for i in catalog.lookup(
        [item["item_id"] for item in answer["items"]])]
    assert got == sorted(got, reverse=True)
