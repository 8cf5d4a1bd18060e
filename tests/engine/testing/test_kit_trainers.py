"""The kit and a plugin's own trainer: its options reach fit, and the part it fits can be in
the kit's model for the components that serve it (`--train`, the rankly_trainers fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rankly.engine.api import ModelPart, hookimpl
from rankly.engine.testing import check_component, make_workload


class Recency:
    """A trainer, a scorer serving the part it fits, and a trainer that needs its option."""

    @hookimpl
    def register_trainers(self, register):
        register("recency", RecencyTrainer(), options={"scale": 1.0})
        register("scaled", ScaledTrainer(), options=("scale",))

    @hookimpl
    def register_scorers(self, register):
        def factory(ctx):
            part = ctx.model.part("recency")
            return None if part is None else RecencyScorer(part["scores"])

        register("recency", factory, options={"scale": 1.0})


class RecencyTrainer:
    def fit(self, data, options):
        scale = float(options.get("scale", 1.0))
        scores = np.bincount(data.item_idx, minlength=data.n_items) * scale
        return ModelPart("recency", {"scale": scale}, {"scores": scores.astype(np.float32)})


class ScaledTrainer(RecencyTrainer):
    def fit(self, data, options):
        return super().fit(data, {"scale": options["scale"]})  # no default: it must be set


class RecencyScorer:
    def __init__(self, scores):
        self.scores = scores

    def score(self, user, items):
        return self.scores[items]


@pytest.fixture(scope="module")
def workload():
    return make_workload(plugins=[Recency()])


def test_a_trainer_is_checked_with_the_options_it_is_given(workload):
    (report,) = check_component("scaled", "trainer", workload=workload,
                                options={"scale": "2"})
    assert report.passed, report.failures()
    assert report.latency is not None and report.latency.calls > 0


def test_a_trainer_option_key_it_did_not_declare_fails_the_build_check(workload):
    (report,) = check_component("scaled", "trainer", workload=workload, latency=False,
                                options={"scael": 2})
    (line,) = report.failures()
    assert line.startswith("scaled (trainer): factory raises ConfigError: ")
    assert "'scael'" in line and "did you mean 'scale'" in line


def test_a_component_whose_trainer_the_kit_did_not_fit_names_how_to_fit_it(workload):
    (report,) = check_component("recency", "scorer", workload=workload, latency=False)
    (line,) = report.failures()
    assert line.endswith("(its trainer is not fitted for the kit: rankly plugins check "
                         "--train recency, or list it in the rankly_trainers fixture)")


PLUGIN_TESTS = '''
    import pytest

    from test_kit_trainers import Recency


    @pytest.fixture(scope="session")
    def rankly_plugins():
        return [Recency()]


    @pytest.fixture(scope="session")
    def rankly_trainers():
        return ["recency"]


    def test_the_scorer_of_my_part_conforms(rankly_check, rankly_model):
        assert "recency" in rankly_model.parts
        rankly_check("recency", kind="scorer")
'''


@pytest.mark.slow
def test_the_rankly_trainers_fixture_fits_a_plugins_trainer_for_the_kit(tmp_path):
    (tmp_path / "test_kit_trainers.py").write_text(open(__file__).read())
    (tmp_path / "test_plugin.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:rankly", "-p",
                          "rankly.engine.testing.pytest_plugin", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_plugin.py")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert "1 passed" in out.stdout, out.stdout + out.stderr
