"""Build the plugin manager (load, block, validate) and the component registries."""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

import pluggy
from pluggy import HookImpl

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
    """Named components of one kind, as contributed through one ``register_*`` hook.

    ``options`` holds what each component declared it accepts (``register(name, factory,
    options=...)``): a mapping of option key to default (``None``: no default), or ``None``
    for a component that declared nothing (its options are not checked).
    """

    kind: str
    entries: dict[str, Any]
    owners: dict[str, str]
    options: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries


def _declared(owner: str, kind: str, name: str, options: Any) -> Mapping[str, Any] | None:
    """Normalise what ``register(..., options=)`` declared: keys -> defaults, or None."""
    if options is None:
        return None
    if isinstance(options, Mapping):
        declared = dict(options)
    elif isinstance(options, str) or not isinstance(options, Iterable):
        raise PluginError(f"plugin {owner}: {kind} {name!r}: options= must be a mapping of "
                          "option key to default, or an iterable of option keys")
    else:
        declared = dict.fromkeys(options)
    if not all(isinstance(k, str) and k for k in declared):
        raise PluginError(f"plugin {owner}: {kind} {name!r}: option keys must be non-empty "
                          "strings")
    return declared


def _owner_of(frame: FrameType | None, impls: Mapping[CodeType, list[HookImpl]]) -> str:
    """The plugin whose hook implementation is on the stack above ``frame``."""
    while frame is not None:
        candidates = impls.get(frame.f_code)
        if candidates:
            if len(candidates) == 1:
                return candidates[0].plugin_name
            this = frame.f_locals.get("self")  # several instances of one plugin class
            for impl in candidates:
                if impl.plugin is this:
                    return impl.plugin_name
            return candidates[0].plugin_name
        frame = frame.f_back
    return "?"


def collect(pm: pluggy.PluginManager, kind: str) -> Registry:
    """Call ``register_<kind>`` through the hook caller; return what was registered by name.

    The hook is called as ``pm.hook.register_<kind>(register=...)`` so hook wrappers and
    tracing see it; each ``register`` call is attributed to the implementation it came from.
    """
    entries: dict[str, Any] = {}
    owners: dict[str, str] = {}
    declared: dict[str, Mapping[str, Any] | None] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    impls: dict[CodeType, list[HookImpl]] = {}
    for impl in hook.get_hookimpls():
        code = getattr(impl.function, "__code__", None)
        if code is not None:
            impls.setdefault(code, []).append(impl)

    def register(name: str, component: Any, options: Any = None) -> None:
        owner = _owner_of(sys._getframe(1), impls)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner}: {kind} names must be non-empty strings")
        if name in entries:
            raise PluginError(f"{kind} {name!r} registered twice (by {owners[name]} and {owner})")
        entries[name] = component
        owners[name] = owner
        declared[name] = _declared(owner, kind, name, options)

    hook(register=register)
    return Registry(kind=kind, entries=entries, owners=owners, options=declared)


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

