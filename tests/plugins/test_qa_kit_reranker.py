"""The kit's reranker checks hold a returned Ranking to what the pipeline reads: NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.api import Ranking
from rankly.engine.testing import check_component, make_workload


class Truncates:
    """Correct: the first n items of its input."""

    def rerank(self, user, ranking, n):
        return ranking.take(np.arange(min(n, len(ranking))))


class ListsFor(Truncates):
    def __init__(self, field: str) -> None:
        self.field = field

    def rerank(self, user, ranking, n):
        out = super().rerank(user, ranking, n)
        fields = {"items": out.items, "scores": out.scores, "reasons": out.reasons,
                  "anchors": out.anchors}
        fields[self.field] = fields[self.field].tolist()
        return Ranking(**fields)


@pytest.fixture(scope="module")
def workload():
    return make_workload()


def _failures(workload, component):
    return [line for r in check_component(component, workload=workload, latency=False)
            for line in r.failures()]


def test_a_correct_reranker_instance_passes(workload):
    assert _failures(workload, Truncates()) == []


@pytest.mark.parametrize("field", ["items", "scores", "reasons", "anchors"])
def test_a_ranking_of_python_lists_fails_the_type_check(workload, field):
    assert _failures(workload, ListsFor(field))[0] == (
        f"ListsFor (reranker): returns a Ranking whose {field} is a list, not a NumPy array")
