"""The plugin contract: every hook is tested here, documented, and every built-in is declared."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import re
from pathlib import Path

import pytest

from rankly.engine import hookimpl, hookspecs
from rankly.engine.plugins import PluginError, collect, make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n, f in vars(hookspecs).items()
               if inspect.isfunction(f) and hasattr(f, "rankly_spec"))


def test_every_hookspec_has_a_test_here():
    names = set(globals())
    assert HOOKS, "no hookspecs found"
    assert [h for h in HOOKS if f"test_{h}" not in names] == []


def test_every_hookspec_is_documented_with_arguments_returns_and_example():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for hook in HOOKS:
        section = re.search(rf"## `{hook}\(register\)`(.*?)(?=\n## |\Z)", doc, re.S)
        assert section, f"docs/plugins.md has no section for {hook}"
        body = section.group(1)
        for part in ("**Arguments:**", "**Returns:**", "**Example:**", "```python"):
            assert part in body, f"{hook}: missing {part}"


def test_every_builtin_plugin_module_is_declared_as_an_entry_point():
    """Every module under plugins/ with hook implementations is an entry point; library
    modules (shared modelling code, no hooks: models/linear.py, models/factors.py) are not."""
    declared = {ep.value for ep in md.entry_points(group="rankly")}
    modules = {
        "rankly.plugins." + ".".join(p.relative_to(ROOT / "plugins").with_suffix("").parts):
            "@hookimpl" in p.read_text()
        for p in (ROOT / "plugins").rglob("*.py") if p.name != "__init__.py"
    }
    plugins = {m for m, hooks in modules.items() if hooks}
    libraries = set(modules) - plugins
    assert plugins - declared == set()
    assert libraries & declared == set()
    assert {"rankly.plugins.models.linear", "rankly.plugins.models.factors"} <= libraries


def test_all_builtins_load_and_pass_check_pending():
    pm = make_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"popularity", "itemknn", "diversity", "local_cache"} <= names


def _components(kind, plugin):
    return collect(make_plugin_manager(load_entrypoints=False, extra=[plugin]), kind)



def test_register_trainers():
    class P:
        @hookimpl
        def register_trainers(self, register):
            register("t", "trainer-object")

    assert _components("trainers", P()).get("t") == "trainer-object"


def test_register_caches():
    class P:
        @hookimpl
        def register_caches(self, register):
            register("tier", "factory")

    assert "tier" in _components("caches", P())


def test_register_candidate_generators():
    class P:
        @hookimpl
        def register_candidate_generators(self, register):
            register("g", "factory")

    assert _components("candidate_generators", P()).owners["g"]


def test_register_scorers():
    class P:
        @hookimpl
        def register_scorers(self, register):
            register("s", "factory")

    registry = _components("scorers", P())
    assert registry.get("s") == "factory"
    with pytest.raises(PluginError, match="no scorers named 'missing'"):
        registry.get("missing")


def test_register_rerankers():
    class P:
        @hookimpl
        def register_rerankers(self, register):
            register("r", "factory")

    assert "r" in _components("rerankers", P())


def test_duplicate_component_names_fail_at_startup():
    class A:
        @hookimpl
        def register_scorers(self, register):
            register("same", 1)

    class B:
        @hookimpl
        def register_scorers(self, register):
            register("same", 2)

    pm = make_plugin_manager(load_entrypoints=False, extra=[A(), B()])
    with pytest.raises(PluginError, match="registered twice"):
        collect(pm, "scorers")


def test_misspelt_hook_fails_at_startup():
    class Typo:
        @hookimpl
        def register_scorer(self, register):  # missing "s"
            pass

    with pytest.raises(Exception, match="register_scorer"):
        make_plugin_manager(load_entrypoints=False, extra=[Typo()])


def test_blocked_plugin_is_not_loaded():
    pm = make_plugin_manager(blocked=["diversity"])
    assert "diversity" not in collect(pm, "rerankers")
