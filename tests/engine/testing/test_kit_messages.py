"""The kit's defect lines say which input showed the defect and what was returned."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.api import hookimpl
from rankly.engine.testing import make_workload

from .test_testing_kit import failures


class NeedsUserId:
    def score(self, user, items):
        if user.user_id is None:
            raise KeyError("no user id")
        return np.zeros(items.size, np.float32)


class ReturnsList:
    def score(self, user, items):
        return [0.5] * items.size


class Plugin:
    @hookimpl
    def register_scorers(self, register):
        register("needs-user-id", lambda ctx: NeedsUserId(), options=())
        register("returns-list", lambda ctx: ReturnsList(), options=())


@pytest.fixture(scope="module")
def workload():
    return make_workload(plugins=[Plugin()])


def test_a_defect_on_the_anonymous_session_names_the_session(workload):
    assert ("needs-user-id (scorer): raises KeyError: 'no user id' for an anonymous session"
            in failures(workload, "needs-user-id"))


def test_scores_returned_as_a_list_are_named_a_list(workload):
    assert failures(workload, "returns-list")[0] == (
        "returns-list (scorer): returns list, not a NumPy array of float32")
