"""The kit reports a trainer's malformed ModelPart as a defect instead of crashing on it."""

from __future__ import annotations

import numpy as np
import pytest

from rankly.engine.api import ModelPart
from rankly.engine.testing import check_component, make_workload


class Fits:
    def __init__(self, part: ModelPart) -> None:
        self.part = part

    def fit(self, data, options):
        return self.part


@pytest.fixture(scope="module")
def workload():
    return make_workload()


def _failures(workload, trainer):
    return [line for r in check_component(trainer, "trainer", workload=workload, latency=False)
            for line in r.failures()]


def test_a_correct_part_passes(workload):
    assert _failures(workload, Fits(ModelPart("fits", {}, {"a": np.zeros(3)}))) == []


def test_arrays_given_as_a_list_are_a_defect_not_a_crash(workload):
    assert _failures(workload, Fits(ModelPart("fits", {}, [np.zeros(3)]))) == [
        "Fits (trainer): arrays are a list, not a dict of NumPy arrays by name"]
