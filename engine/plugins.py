"""Build the plugin manager (load, block, validate) and the component registries."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from rankly.engine import PROJECT_NAME, hookspecs

KINDS = ("trainers", "caches", "candidate_generators", "scorers", "rerankers")


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


def make_plugin_manager(
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Return a manager with the specs added, entry points loaded, ``blocked`` names blocked.

    ``extra`` plugins (objects or modules) are registered after the entry points; tests use it
    with ``load_entrypoints=False``. ``check_pending()`` runs last, so a misspelt hook fails here.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(PROJECT_NAME)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass(frozen=True)
class Registry:
    """Named components of one kind, as contributed through one ``register_*`` hook."""

    kind: str
    entries: dict[str, Any]
    owners: dict[str, str]

    def get(self, name: str) -> Any:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries


def collect(pm: pluggy.PluginManager, kind: str) -> Registry:
    """Call ``register_<kind>`` on every plugin and return what they registered by name."""
    entries: dict[str, Any] = {}
    owners: dict[str, str] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    for impl in hook.get_hookimpls():
        owner = impl.plugin_name

        def register(name: str, component: Any, _owner: str = owner) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_owner}: {kind} names must be non-empty strings")
            if name in entries:
                raise PluginError(
                    f"{kind} {name!r} registered twice (by {owners[name]} and {_owner})"
                )
            entries[name] = component
            owners[name] = _owner

        impl.function(register=register)
    return Registry(kind=kind, entries=entries, owners=owners)


def collect_all(pm: pluggy.PluginManager) -> dict[str, Registry]:
    return {kind: collect(pm, kind) for kind in KINDS}


def _distribution_of(plugin_name: str) -> str:
    for dist in md.distributions():
        for ep in dist.entry_points:
            if ep.group == PROJECT_NAME and ep.name == plugin_name:
                return f"{dist.metadata['Name']} {dist.version}"
    return "-"


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One row per registered plugin: name, hooks it implements, distribution, components."""
    registries = collect_all(pm)
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: kv[0]):
        if plugin is None:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        components = {
            kind: sorted(n for n, owner in reg.owners.items() if owner == name)
            for kind, reg in registries.items()
        }
        rows.append(
            {
                "name": name,
                "hooks": hooks,
                "distribution": _distribution_of(name),
                "components": {k: v for k, v in components.items() if v},
            }
        )
    return rows

