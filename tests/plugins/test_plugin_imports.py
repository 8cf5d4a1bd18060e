"""Plugins, built-in ones too, import only the public API of the engine (STYLE.md section 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rankly.engine import api
from rankly.engine import types as engine_types

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

#: What a plugin module may import of rankly.
ALLOWED = ("rankly.engine.api", "rankly._fast")
#: Names a plugin may import from ``rankly.engine`` itself (re-exports of the API).
ENGINE_NAMES = frozenset(api.__all__)

#: Modules under plugins/ may also import a *library* module of plugins/: one that registers no
#: hooks (linear.py, factors.py: the modelling code several plugins share), so no plugin
#: depends on another plugin.


def forbidden_imports(path: Path) -> list[str]:
    """The imports of ``path`` that reach into rankly outside the public API."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [(node.module, tuple(a.name for a in node.names))]
        elif isinstance(node, ast.ImportFrom):
            bad.append(f"line {node.lineno}: relative import")
            continue
        else:
            continue
        for module, names in modules:
            if module != "rankly" and not module.startswith("rankly."):
                continue
            if any(module == a or module.startswith(a + ".") for a in ALLOWED):
                continue
            if module == "rankly.engine" and names and set(names) <= ENGINE_NAMES | {"api"}:
                continue
            if module == "rankly" and names == ("_fast",):
                continue
            if module.startswith("rankly.plugins.") and _is_library(module, names):
                continue
            bad.append(f"line {node.lineno}: {module}"
                       + (f" ({', '.join(names)})" if names else ""))
    return bad


def _module_path(dotted: str) -> Path | None:
    rel = dotted.removeprefix("rankly.plugins.").replace(".", "/")
    for candidate in (PLUGINS / f"{rel}.py", PLUGINS / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def registers_hooks(path: Path) -> bool:
    """Whether the module at ``path`` defines a ``@hookimpl`` function (so it is a plugin)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                name = target.attr if isinstance(target, ast.Attribute) else getattr(
                    target, "id", "")
                if name == "hookimpl":
                    return True
    return False


def _is_library(module: str, names: tuple[str, ...]) -> bool:
    """``from rankly.plugins.x import a, b`` / ``import rankly.plugins.x.y``: every module it
    names is a library module (no hooks); an imported name that is not a module counts as
    its package's."""
    targets = [f"{module}.{n}" for n in names if _module_path(f"{module}.{n}")] or [module]
    paths = [_module_path(t) for t in targets]
    return all(p is not None and p.name != "__init__.py" and not registers_hooks(p)
               for p in paths)


def plugin_modules() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", plugin_modules(), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugin_imports_only_the_public_api(path: Path):
    rel = str(path.relative_to(PLUGINS))
    bad = forbidden_imports(path)
    assert not bad, f"{rel} imports engine internals or other plugins: {bad}"


@pytest.mark.parametrize("path", sorted((PLUGINS.parent / "examples").glob("*/*/__init__.py")),
                         ids=lambda p: p.parent.name)
def test_the_example_plugins_import_only_the_public_api(path: Path):
    assert not forbidden_imports(path)


def test_the_checker_catches_internal_and_cross_plugin_imports(tmp_path: Path):
    mod = tmp_path / "m.py"
    mod.write_text("import numpy\nfrom rankly import _fast\nfrom rankly.engine import hookimpl\n"
                   "from rankly.engine.api import Model\nfrom rankly.engine.pipeline import x\n"
                   "import rankly.engine.storage.store\nfrom rankly.plugins.models import ease\n"
                   "from rankly.engine import pipeline\n"
                   "from rankly.plugins.models import linear\n"
                   "from rankly.plugins.models.linear import EaseScorer\n"
                   "from rankly.plugins.models.ease import EaseTrainer\n")
    assert forbidden_imports(mod) == [
        "line 5: rankly.engine.pipeline (x)", "line 6: rankly.engine.storage.store",
        "line 7: rankly.plugins.models (ease)", "line 8: rankly.engine (pipeline)",
        "line 11: rankly.plugins.models.ease (EaseTrainer)"]


def test_library_modules_register_no_hooks_and_plugins_do():
    assert not registers_hooks(PLUGINS / "models" / "linear.py")
    assert not registers_hooks(PLUGINS / "models" / "factors.py")
    assert registers_hooks(PLUGINS / "models" / "ease.py")


def test_every_api_name_is_reexported_by_the_engine_package():
    import rankly.engine as engine

    assert engine.API_NAMES == set(api.__all__)
    assert all(getattr(engine, name) is getattr(api, name) for name in api.__all__)


def test_cache_entry_marks_are_the_pipelines_fields():
    from rankly.engine.pipeline import cache

    assert (engine_types._REFRESH, engine_types._DIRTY, engine_types._STARTED) == (
        cache.REFRESH_FIELD, cache.DIRTY_FIELD, cache.STARTED_FIELD)


def test_cache_entry_round_trips_a_value_and_its_marks():
    value = {"items": [1], "_spare": [2], "_started": 5.0, "_dirty": True}
    entry = api.CacheEntry.of(value)
    assert entry.payload == {"items": [1], "_spare": [2]}
    assert (entry.started, entry.dirty, entry.refresh) == (5.0, True, False)
    assert entry.value() == value
    assert api.CacheEntry.marked({"a": 1}, refresh=True) == {"a": 1, "_refresh": True}


def test_loading_every_plugin_does_not_load_the_fitting_libraries():
    """A process that only serves (a server worker, a Ray batch worker) loads every plugin but
    fits nothing: scipy.linalg (LAPACK and BLAS for the EASE inverse and Gram matrices) is
    imported by the first fit, not by the plugins."""
    import subprocess
    import sys

    script = """
import sys
from rankly.engine.plugins import make_plugin_manager
make_plugin_manager(True, ())
print("before", "scipy.linalg" in sys.modules)
import numpy as np, scipy.sparse as sp
from rankly.plugins.models import linear
linear.item_weights(linear.gram(sp.csr_matrix(np.eye(3, dtype=np.float32))), 1.0)
print("after", "scipy.linalg" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.split() == ["before", "False", "after", "True"], proc.stdout
