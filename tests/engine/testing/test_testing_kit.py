"""rankly.engine.testing: the kit passes a correct plugin and names each defect of a broken one,
in process, through `rankly plugins check` and through the pytest plugin."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rankly.engine import cli
from rankly.engine.testing import check_component, make_runtime, make_workload, serve

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("kit_variants", HERE / "kit_variants.py")
variants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variants)


@pytest.fixture(scope="module")
def workload():
    return make_workload(plugins=[variants])


def failures(workload, name, **kwargs):
    kwargs.setdefault("latency", False)
    return [line for r in check_component(name, workload=workload, **kwargs)
            for line in r.failures()]


def test_the_workload_is_a_small_trained_model_with_standard_users(workload):
    assert len(workload.model.catalog) == 300 and len(workload.model.users) == 200
    assert {"pop", "itemknn", "ease"} <= set(workload.model.parts)
    labels = [c.label for c in workload.cases]
    assert "an anonymous user (user_id None)" in labels and "a cold user" in labels
    assert any(c.user.session for c in workload.cases)


def test_a_runtime_over_the_kit_model_serves_a_request(workload):
    rt = make_runtime(workload, scorers=("seeded-random", "popular"),
                      options={"seeded-random": {"seed": 3}})
    resp = serve(rt, "1", n=5)
    assert resp["fallback"] is None and len(resp["items"]) == 5
    assert rt.components.scorers["seeded-random"].table.dtype.name == "float32"


def test_a_correct_scorer_passes_every_check_with_its_latency_next_to_popular(workload):
    (report,) = check_component("seeded-random", workload=workload, budget_ms=1000.0)
    assert report.passed, report.failures()
    names = {c.name for c in report.checks}
    assert {"length", "dtype", "finite", "unknown ids", "determinism", "mutation",
            "thread safety", "pipeline", "latency"} <= names
    assert report.latency.calls >= 20 and report.baseline.name == "popular"
    assert 0 < report.latency.p50_ms <= report.latency.p95_ms <= report.latency.p99_ms


@pytest.mark.parametrize(("name", "defect"), [
    ("wrong-length", "wrong-length (scorer): returns 299 scores for 300 items"),
    ("returns-nan", "returns-nan (scorer): returns NaN"),
    ("mutates-input", "mutates-input (scorer): mutates its input (items)"),
    ("raises", "raises (scorer): raises ValueError: no table for this user"),
    ("float64", "float64 (scorer): returns float64 scores, not float32"),
    ("forgetful", "forgetful (scorer): raises KeyError: 'cold-user-without-history' for a "
                  "cold user"),
    ("racy", "racy (scorer): returns other results when called from 4 threads at once"),
    ("duplicates", "duplicates (candidate_generator): returns item 3 twice"),
    ("outside", "outside (candidate_generator): returns item index 10000 outside the "
                "catalog (300 items)"),
    ("inventing", r"inventing \(reranker\): returns item \d+ that was not in its input$"),
    ("leaky", "leaky (cache): serves a clean entry after invalidate_user"),
    ("nan-trainer", "nan-trainer (trainer): array 'scores' holds NaN or inf"),
])
def test_a_broken_component_fails_with_a_line_naming_its_defect(workload, name, defect):
    lines = failures(workload, name)
    if defect.endswith("$"):
        assert any(re.match(defect, line) for line in lines), lines
    else:
        assert defect in lines


def test_broken_scorers_are_caught_by_the_pipeline_check_too(workload):
    lines = failures(workload, "raises")
    assert "raises (scorer): the pipeline fell back (plugin_error) for user 1" in lines or any(
        "the pipeline fell back (plugin_error)" in line for line in lines)


def test_a_scorer_over_its_p95_budget_fails_naming_p95_and_the_budget(workload):
    lines = failures(workload, "too-slow", latency=True, budget_ms=1.0, baseline=False)
    (line,) = [x for x in lines if "budget" in x]
    assert line.startswith("too-slow (scorer): P95 ") and line.endswith(
        " ms over the 1 ms budget")


def test_a_factory_that_raises_fails_the_build_check(workload):
    (report,) = check_component("seeded-random", workload=workload, latency=False,
                                options={"seed": "x"})
    assert report.failures() == [
        "seeded-random (scorer): factory raises ConfigError: plugins.seeded-random.seed: "
        "expected int, got 'x'"]


def test_an_instance_is_checked_with_its_kind_inferred(workload):
    (report,) = check_component(variants.WrongLength(300), workload=workload, latency=False)
    assert report.kind == "scorer"
    assert "WrongLength (scorer): returns 299 scores for 300 items" in report.failures()


def test_the_built_ins_pass(workload):
    for name in ("popular", "itemknn", "ease", "diversity", "l1", "trending", "pop"):
        for report in check_component(name, workload=workload, latency=False):
            assert report.passed, report.failures()


def test_rankly_plugins_check_in_process_exit_codes_and_json(workload, monkeypatch, capsys,
                                                             tmp_path):
    install_fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["plugins", "check", "seeded-random", "--budget-ms", "1000"]) == 0
    assert "seeded-random (scorer): 12 of 12 checks passed" in capsys.readouterr().out
    assert cli.main(["plugins", "check", "returns-nan", "--json"]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    assert {"check": "finite", "passed": False, "message": "returns NaN"} in report["checks"]
    assert report["latency"]["p95_ms"] > 0 and report["baseline"]["name"] == "popular"
    assert cli.main(["plugins", "check", "no-such-thing"]) == 2
    with pytest.raises(SystemExit) as exc:  # a budget every call would miss is refused
        cli.main(["plugins", "check", "seeded-random", "--budget-ms", "0"])
    assert exc.value.code == 2 and "argument --budget-ms" in capsys.readouterr().err


def install_fake_distribution(root: Path) -> None:
    """kit_variants as an installed distribution: a module and its dist-info (entry point)."""
    (root / "kit_variants.py").write_text((HERE / "kit_variants.py").read_text())
    info = root / "rankly_kit_variants-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rankly-kit-variants\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[rankly]\nkit_variants = kit_variants\n")


@pytest.mark.slow
def test_rankly_plugins_check_on_an_installed_package_names_each_defect(tmp_path):
    install_fake_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def check(*args):
        return subprocess.run([sys.executable, "-m", "rankly.engine.cli", "plugins", "check",
                               *args], capture_output=True, text=True, env=env, timeout=300)

    ok = check("kit_variants", "--kind", "scorer", "--budget-ms", "1000")
    lines = ok.stdout.splitlines()
    assert ok.returncode == 1  # the plugin name checks every variant it registers
    assert any(x.startswith("seeded-random (scorer): 12 of 12 checks passed") for x in lines)
    assert "wrong-length (scorer): returns 299 scores for 300 items" in lines
    assert "returns-nan (scorer): returns NaN" in lines
    assert "mutates-input (scorer): mutates its input (items)" in lines
    assert "raises (scorer): raises ValueError: no table for this user" in lines
    slow = check("too-slow", "--budget-ms", "1")
    assert slow.returncode == 1
    assert any(x.startswith("too-slow (scorer): P95 ") and x.endswith("over the 1 ms budget")
               for x in slow.stdout.splitlines())
    good = check("seeded-random", "--budget-ms", "1000")
    assert good.returncode == 0, good.stdout + good.stderr


PLUGIN_TESTS = '''
    import pytest

    @pytest.fixture(scope="session")
    def rankly_plugins():
        import kit_variants
        return [kit_variants]

    def test_conforms(rankly_check):
        rankly_check("seeded-random")

    def test_broken(rankly_check):
        rankly_check("returns-nan")

    def test_latency(rankly_latency):
        mine, base = rankly_latency("seeded-random")
        assert base.name == "popular" and mine.calls > 0

    def test_runtime(rankly_runtime):
        from rankly.engine.testing import serve
        rt = rankly_runtime(scorers=("seeded-random", "popular"))
        assert serve(rt, "1", 3)["fallback"] is None
'''


@pytest.mark.slow
def test_the_pytest_plugin_gives_the_fixtures_and_a_latency_summary(tmp_path):
    (tmp_path / "kit_variants.py").write_text((HERE / "kit_variants.py").read_text())
    (tmp_path / "test_plugin.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    # -p no:rankly: the same module may also be installed as the `rankly` entry point
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:rankly", "-p",
                          "rankly.engine.testing.pytest_plugin", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_plugin.py")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert "1 failed, 3 passed" in out.stdout, out.stdout + out.stderr
    assert "returns-nan (scorer): returns NaN" in out.stdout
    assert "rankly latency" in out.stdout and "built-in popular" in out.stdout


def test_the_kit_is_declared_as_the_rankly_pytest_plugin():
    import tomllib

    meta = tomllib.loads((HERE.parents[2] / "pyproject.toml").read_text())
    target = meta["project"]["entry-points"]["pytest11"]["rankly"]
    assert target == "rankly.engine.testing.pytest_plugin"
    assert "pytest-benchmark>=4" in meta["project"]["optional-dependencies"]["test"]
    module = importlib.import_module(target)
    assert {"rankly_check", "rankly_latency", "rankly_runtime", "rankly_model"} <= set(
        vars(module))


def test_a_component_with_nothing_to_serve_says_so_and_its_options_make_it_serve(workload):
    (idle,) = check_component("boost", workload=workload, latency=False)
    assert idle.failures() == [
        "boost (reranker): factory returns None for the kit's model (trained: pop, itemknn, "
        "ease) and options {}: nothing to check (fit the part it serves: rankly plugins "
        "check boost --train TRAINER, or give it options: --options JSON)"]
    (boosted,) = check_component("boost", workload=workload, latency=False,
                                 options={"items": {"1": 2.0}})
    assert boosted.passed, boosted.failures()
