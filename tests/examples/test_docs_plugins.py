"""Every plugin example of docs/plugins.md runs as written: copied into a module, it loads next
to the installed plugins and each component it registers passes the kit's conformance suite."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from rankly.engine.plugins import KINDS, collect_all, make_plugin_manager
from rankly.engine.testing import check_component, make_workload
from rankly.engine.testing.workload import TRAINERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
#: The example package registers the whole loop's scorer too: the doc's copy replaces it.
EXAMPLE_PLUGIN = "category_affinity"


def plugin_blocks() -> list[str]:
    """The ```python blocks of the doc that implement a hook (whole modules, not fragments)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [b for b in blocks if "@hookimpl" in b]


def as_module(i: int, source: str) -> types.ModuleType:
    module = types.ModuleType(f"docs_plugins_example_{i}")
    exec(compile(source, f"docs/plugins.md example {i}", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def examples() -> list[types.ModuleType]:
    return [as_module(i, b) for i, b in enumerate(plugin_blocks())]


@pytest.fixture(scope="module")
def registered(examples):
    """(name, kind) of every component the doc's examples register."""
    pm = make_plugin_manager(load_entrypoints=False, extra=examples)
    return [(name, kind[:-1]) for kind, reg in collect_all(pm).items() for name in reg.entries]


def test_the_doc_has_an_example_for_every_kind_of_component(registered):
    assert {kind for _, kind in registered} == {k[:-1] for k in KINDS}


def test_every_example_loads_next_to_the_installed_plugins(examples):
    pm = make_plugin_manager(blocked=(EXAMPLE_PLUGIN,), extra=examples)
    collect_all(pm)  # a name taken by a built-in or another example raises PluginError


def test_every_component_of_the_examples_passes_the_kit(examples, registered):
    pm = make_plugin_manager(blocked=(EXAMPLE_PLUGIN,), extra=examples)
    trainers = [name for name, kind in registered if kind == "trainer"]
    workload = make_workload(pm=pm, trainers=(*TRAINERS, *trainers))
    for name, kind in registered:
        for report in check_component(name, kind, workload=workload, latency=False):
            assert report.passed, report.failures()
