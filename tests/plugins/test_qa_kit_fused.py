"""The kit serves a component registered as both generator and scorer the way it is served
when first in both stages: through the fused path when it scores the whole catalog."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.api import Candidates, Reason, hookimpl
from rankly.engine.testing import check_component, make_workload


class WholeCatalog:
    """A correct fused component: one fixed random score per item."""

    def __init__(self, n_items: int) -> None:
        self.table = np.random.default_rng(3).random(n_items).astype(np.float32)

    def generate(self, user, n):
        order = np.argsort(-self.table, kind="stable")[:n].astype(np.int64)
        return Candidates.of(order, Reason.FOR_YOU)

    def score(self, user, items):
        return self.table[items]

    def catalog_scores(self, user):
        return self.table

    def explain(self, user, items):
        return (np.full(items.size, int(Reason.FOR_YOU), np.int8),
                np.full(items.size, -1, np.int64))


class ShortCatalog(WholeCatalog):
    def catalog_scores(self, user):
        return self.table[:-1]


class Plugin:
    def __init__(self) -> None:
        self.built: dict[tuple[str, int], WholeCatalog] = {}

    def factory(self, cls):
        def build(ctx):  # one instance for both registrations, as the fused path needs
            key = (ctx.name, id(ctx.model))
            if key not in self.built:
                self.built[key] = cls(len(ctx.model.catalog))
            return self.built[key]
        return build

    @hookimpl
    def register_candidate_generators(self, register):
        register("whole-catalog", self.factory(WholeCatalog), options=())
        register("short-catalog", self.factory(ShortCatalog), options=())

    @hookimpl
    def register_scorers(self, register):
        register("whole-catalog", self.factory(WholeCatalog), options=())
        register("short-catalog", self.factory(ShortCatalog), options=())


@pytest.fixture(scope="module")
def workload():
    return make_workload(plugins=[Plugin()])


def _failures(workload, name):
    return [line for r in check_component(name, workload=workload, latency=False)
            for line in r.failures()]


def test_a_correct_fused_component_passes(workload):
    assert _failures(workload, "whole-catalog") == []


def test_catalog_scores_of_the_wrong_shape_fail_the_pipeline_check(workload):
    lines = _failures(workload, "short-catalog")
    assert lines and all("pipeline fell back (plugin_error)" in line for line in lines), lines
    assert all("first in pipeline.candidates and pipeline.scorers" in line for line in lines)
