"""The kit runs each component on a catalog without categories too (a ratings file with no
item table), where a category array is all -1 and there are no category names."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.api import ModelPart, Ranking, hookimpl
from rankly.engine.testing import check_component, make_workload

from .test_testing_kit import failures


class CategoryShare:
    """Indexes a per-category table by each item's category: -1 reads past an empty one."""

    def __init__(self, categories):
        self.categories = np.asarray(categories)

    def score(self, user, items):
        share = np.bincount(self.categories[user.history][self.categories[user.history] >= 0],
                            minlength=self.categories.max() + 1).astype(np.float32)
        return share[self.categories[items]]


class FirstOfEachCategory:
    """Looks up each item's category name (every item of the kit's shop has one)."""

    def __init__(self, categories, names):
        self.categories, self.names = np.asarray(categories), names

    def rerank(self, user, ranking, n):
        seen, keep = set(), []
        for i, c in enumerate(self.categories[ranking.items].tolist()):
            if len(keep) < n and self.names[c] not in seen:
                seen.add(self.names[c])
                keep.append(i)
        keep = np.asarray(keep, dtype=np.int64)
        return Ranking(ranking.items[keep], ranking.scores[keep], ranking.reasons[keep],
                       ranking.anchors[keep])


class CategoryTrainer:
    def fit(self, data, options):
        names = np.array(data.catalog.category_names)
        return ModelPart("category-sizes", {"largest": str(names[0])},
                         {"sizes": np.bincount(data.catalog.categories[
                             data.catalog.categories >= 0]).astype(np.float32)})


class Plugin:
    @hookimpl
    def register_scorers(self, register):
        register("category-share", lambda ctx: CategoryShare(ctx.model.catalog.categories),
                 options=())

    @hookimpl
    def register_rerankers(self, register):
        register("first-of-each", lambda ctx: FirstOfEachCategory(
            ctx.model.catalog.categories, ctx.model.catalog.category_names), options=())

    @hookimpl
    def register_trainers(self, register):
        register("category-sizes", CategoryTrainer())


@pytest.fixture(scope="module")
def workload():
    return make_workload(plugins=[Plugin()])


@pytest.mark.parametrize(("name", "line"), [
    ("category-share", "category-share (scorer): raises IndexError: index -1 is out of bounds "
                       "for axis 0 with size 0 on a catalog without categories"),
    ("first-of-each", "first-of-each (reranker): raises IndexError: tuple index out of range "
                      "on a catalog without categories"),
    ("category-sizes", "category-sizes (trainer): raises IndexError: index 0 is out of "
                       "bounds for axis 0 with size 0 on a catalog without categories"),
])
def test_a_component_that_needs_categories_fails_naming_the_catalog(workload, name, line):
    assert failures(workload, name) == [line]


def test_the_built_ins_work_without_categories(workload):
    for name in ("popular", "itemknn", "ease", "diversity", "trending", "pop"):
        for report in check_component(name, workload=workload, latency=False):
            assert any(c.name == "no categories" for c in report.checks)
            assert report.passed, report.failures()
