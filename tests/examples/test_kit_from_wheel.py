"""The plugin kit as a plugin team gets it: rankly installed from a wheel, not the source tree.

Builds rankly's wheel (its Cython kernels included) and the example plugin's, installs both
into a fresh directory, and runs the example's own test suite and `rankly plugins check`
against that installation alone: the `rankly` pytest plugin (entry point group pytest11),
its fixtures and its latency fixture must come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "rankly-category-affinity"
#: pip output that means PyPI (for the build requirements) is out of reach
OFFLINE = ("Could not find a version", "No matching distribution", "Failed to establish",
           "Temporary failure in name resolution", "Network is unreachable")


def _pip(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def from_wheels(tmp_path_factory):
    """(environment whose PYTHONPATH holds only the wheels' install, that directory)."""
    tmp = tmp_path_factory.mktemp("wheels")
    built = _pip("wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(REPO), str(EXAMPLE))
    if built.returncode and any(s in built.stdout + built.stderr for s in OFFLINE):
        pytest.skip("building the wheel needs its build requirements from PyPI, which is "
                    "unreachable here")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = sorted(str(p) for p in (tmp / "dist").glob("*.whl"))
    assert len(wheels) == 2, wheels
    site = tmp / "site"
    installed = _pip("install", "--no-deps", "-q", "--target", str(site), *wheels)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "RANKLY_LOG_LEVEL": "WARNING"}
    return env, site


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def test_the_kit_loads_from_the_wheel_not_the_source_tree(from_wheels, tmp_path):
    env, site = from_wheels
    out = _run(["-c", "import rankly.engine.testing.pytest_plugin as k, rankly._fast as f; "
                      "print(k.__file__); print(f.__file__)"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), line


def test_a_plugin_suite_passes_with_the_wheels_fixtures_and_latency_fixture(from_wheels,
                                                                             tmp_path):
    env, _ = from_wheels
    suite = tmp_path / "example"
    shutil.copytree(EXAMPLE, suite, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider"], env, suite)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_plugins_check_passes_the_example_from_the_wheel(from_wheels, tmp_path):
    env, _ = from_wheels
    out = _run(["-m", "rankly.engine.cli", "plugins", "check", "category-affinity"], env,
               tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
