"""Build the plugin manager (load, block, validate) and the component registries, and what
a component factory receives (``ComponentContext``, and the ``LiveCounters`` it reaches).

Light to load (commands that only build the plugin manager start sooner): the model, the
store and the event projections are named for annotations only, or imported when called.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Protocol

import pluggy
from pluggy import HookImpl

from . import PROJECT_NAME, hookspecs
from .config import ConfigError, Settings

if TYPE_CHECKING:
    from .config import CacheSettings
    from .model import Catalog, Model
    from .storage.store import Store
    from .types import FloatArray

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
        _load_entrypoints(pm)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise _unknown_hook(pm, exc) from None
    return pm


def _unknown_hook(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> PluginError:
    """A misspelt hook, named with its plugin, a close match and the hooks there are."""
    hooks = sorted(n for n in vars(hookspecs) if n.startswith("register_"))
    name = pm.get_name(exc.plugin) or ""
    if not name or name.isdigit():  # registered without a name: pluggy numbers it
        name = getattr(exc.plugin, "__name__", type(exc.plugin).__name__)
    found = [h for h in pm.hook.__dict__ if h not in hooks
             and any(impl.plugin is exc.plugin
                     for impl in getattr(pm.hook, h).get_hookimpls())]
    if not found:
        return PluginError(f"plugin {name}: {exc}")
    close = difflib.get_close_matches(found[0], hooks, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return PluginError(f"plugin {name} implements {found[0]!r}, which is no rankly hook{hint} "
                       f"(hooks: {', '.join(hooks)})")


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    """Load and register the ``rankly`` entry points (as pluggy's
    ``load_setuptools_entrypoints`` does: blocked and already registered names skipped), so
    that one that fails to import is named, with its distribution and how to block it,
    instead of ending every command in a traceback."""
    for dist in list(md.distributions()):
        for ep in dist.entry_points:
            if ep.group != PROJECT_NAME or pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                text = str(exc).splitlines()[0] if str(exc) else ""
                raise PluginError(
                    f"plugin {ep.name} ({dist.metadata['Name']} {dist.version}: {ep.value}) "
                    f"failed to load: {type(exc).__name__}" + (f": {text}" if text else "")
                    + "; fix or uninstall it, or block it with RANKLY_BLOCKED_PLUGINS="
                    f"{ep.name}") from exc
            pm.register(plugin, name=ep.name)


class LiveCounters(Protocol):
    """Event counters kept live while serving (decayed popularity, trending categories); the
    events' projections (``rankly.engine.events.projections.Projections``) are one."""

    def item_scores(self, catalog: Catalog) -> FloatArray:
        """Live decayed popularity per item index of ``catalog`` (0 for items without events)."""

    def category_scores(self, catalog: Catalog) -> FloatArray:
        """Live trending score per category index of ``catalog``."""


@dataclass(frozen=True, slots=True)
class ComponentContext:
    """What a component factory receives: its name, the loaded model, its options, the store.

    Read ``options`` (this component's ``[plugins.<name>]`` table, with what training chose
    for serving underneath) and ``cache`` (the cache defaults a tier falls back on);
    ``settings`` is the host's and is kept for older plugins only: new ones must not read it.
    """

    name: str
    model: Model
    options: Mapping[str, Any]
    settings: Settings
    store: Store | None = None

    @property
    def cache(self) -> CacheSettings:
        """The ``cache.*`` settings (TTL, jitter, invalidation mode) a cache tier defaults to."""
        return self.settings.cache

    def live_counters(self) -> LiveCounters | None:
        """The live event counters of this process, or None before events start (or none).

        Call it when serving, not once in the factory: the counters attach after start-up.
        """
        # NOTE: imported when called: the projections load the datasets module and SciPy,
        # which a command that only builds the plugin manager must not wait for
        from .events.projections import projections_of

        return projections_of(self.store)


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
            close = difflib.get_close_matches(name, sorted(self.entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluginError(f"no {self.kind} named {name!r}{hint} (known: {known})") from None

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
    """One row per registered plugin: name, hooks it implements, distribution, components,
    and the option keys each component declared (None: not declared, so not checked)."""
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
                "options": {n: None if (d := declared_options(n, registries)) is None
                            else sorted(d)
                            for names in components.values() for n in names},
            }
        )
    return rows


# --- strict configuration: every name and option key the settings give must exist ----------

#: ``[plugins.<name>]`` sections the host reads itself (not components).
HOST_SECTIONS = frozenset({"redis", "events"})
#: What each kind of component is called in messages.
KIND_NOUNS = {"trainers": "trainer", "caches": "cache tier",
              "candidate_generators": "candidate generator", "scorers": "scorer",
              "rerankers": "reranker"}


def _normal(name: str) -> str:
    """A name as bash can spell it in a variable (``seeded-random`` -> ``seeded_random``)."""
    return name.lower().replace("-", "_")


def _unknown(what: str, name: str, known: Iterable[str]) -> ConfigError:
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{what}: no such name {name!r}{hint} (available: "
                       f"{', '.join(known) or 'none'})")


def check_names(where: str, names: Iterable[str], registries: Mapping[str, Registry],
                *kinds: str) -> None:
    """Raise :class:`ConfigError` for the first of ``names`` no plugin registered as one of
    ``kinds``; the message names it, ``where`` it was given and the available names."""
    known = {n for kind in kinds for n in registries[kind].entries}
    for name in names:
        if name not in known:
            nouns = " or ".join(KIND_NOUNS[k] for k in kinds)
            raise _unknown(f"{where} ({nouns})", name, known)


def declared_options(name: str, registries: Mapping[str, Registry]) -> Mapping[str, Any] | None:
    """The option keys (with defaults) every component called ``name`` declared, merged over
    its kinds; None when one of them declared nothing (then nothing is checked)."""
    merged: dict[str, Any] = {}
    for reg in registries.values():
        if name in reg.entries:
            declared = reg.options.get(name)
            if declared is None:
                return None
            merged.update({k: v for k, v in declared.items() if k not in merged
                           or merged[k] is None})
    return merged


def _type_noun(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value),
                                                                       type(value).__name__)


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of the scalar ``default`` (an int fits a float)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _element_type(default: list | tuple) -> type | None:
    """The one scalar type of a list or tuple default's elements; None for mixed or none."""
    kinds = {type(v) for v in default}
    return kinds.pop() if len(kinds) == 1 and kinds <= set(_LIST_NOUNS) else None


def _coerce_option(where: str, value: Any, default: Any) -> Any:
    """An option given as a string (from the environment) parsed as its default's type (for
    a list or tuple default, the string split at commas, see :func:`_parse_list`); a
    value of another type (from a file or an experiment) checked against it: a bool, int,
    float or str default takes only its own type (an int for a float too), a list or tuple
    default a list or tuple of its elements' type, or None (JSON's null: the component's
    "none", e.g. no diversity cap)."""
    if default is None or value is None:
        return value
    if not isinstance(value, str) and isinstance(default, list | tuple):
        kind = _element_type(default)
        if kind is None:
            return value
        if not (isinstance(value, list | tuple) and all(_fits(v, kind()) for v in value)):
            raise ConfigError(f"{where}: expected a list of {_LIST_NOUNS[kind]}, got "
                              f"{_type_noun(value)} {value!r}")
        return value
    if not isinstance(value, str) or isinstance(default, str):
        if not isinstance(default, bool | int | float | str):
            return value
        if not _fits(value, default):
            raise ConfigError(f"{where}: expected {_type_noun(default)}, got "
                              f"{_type_noun(value)} {value!r}")
        return value
    if isinstance(default, list | tuple):
        return _parse_list(where, value, default)
    try:
        return _parse_scalar(value, default)
    except ValueError:
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}") from None


def _parse_scalar(text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (bool, int or float; anything else as given)."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low not in {"1", "0", "true", "false", "yes", "no"}:
            raise ValueError(text)
        return low in {"1", "true", "yes"}
    if isinstance(default, int | float):
        return type(default)(text)
    return text


_LIST_NOUNS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _parse_list(where: str, text: str, default: list | tuple) -> Any:
    """``"0.3,0.6"`` or ``"[0.3, 0.6]"`` (an environment variable) as a list or tuple like
    ``default``, each element parsed as its elements' type. A default whose elements are of no
    single scalar type (or none) leaves the string to the component."""
    kind = _element_type(default)
    if kind is None:
        return text
    body = text.strip().removeprefix("[").removesuffix("]")
    try:
        items = [_parse_scalar(t.strip(), kind()) for t in body.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{where} must be a list of {_LIST_NOUNS[kind]} separated by "
                          f"commas, got {text!r}") from None
    return type(default)(items)


def component_options(name: str, given: Mapping[str, Any], registries: Mapping[str, Registry],
                      where: str | None = None) -> dict[str, Any]:
    """``given`` checked against what ``name`` declared: an unknown key raises
    :class:`ConfigError` naming it and the accepted keys; string values (the environment's)
    are parsed as their default's type. Declared defaults are not filled in."""
    where = where or f"plugins.{name}"
    declared = declared_options(name, registries)
    if declared is None:
        return dict(given)
    out = {}
    for key, value in given.items():
        if key not in declared:
            raise _unknown(f"{where}: option key", key, declared)
        out[key] = _coerce_option(f"{where}.{key}", value, declared[key])
    return out


def option_defaults(name: str, registries: Mapping[str, Registry]) -> dict[str, Any]:
    """The declared defaults of ``name``'s options (keys declared without one left out)."""
    declared = declared_options(name, registries) or {}
    return {k: v for k, v in declared.items() if v is not None}


def _canonical_section(section: str, names: set[str]) -> str | None:
    if section in names or section in HOST_SECTIONS:
        return section
    matches = [n for n in names | HOST_SECTIONS if _normal(n) == _normal(section)]
    return matches[0] if len(matches) == 1 else None


def check_plugin_sections(where: str, sections: Mapping[str, Mapping[str, Any]],
                          registries: Mapping[str, Registry]) -> dict[str, dict[str, Any]]:
    """Options by component, each section checked: its name must be a registered component
    (or a host section), spelt exactly or as bash exports it (``SEEDED_RANDOM`` for
    ``seeded-random``), and its keys must be ones the component declared."""
    names = {n for reg in registries.values() for n in reg.entries}
    out: dict[str, dict[str, Any]] = {}
    for section, options in sections.items():
        name = _canonical_section(section, names)
        if name is None:
            raise _unknown(f"{where}: section", section, names | HOST_SECTIONS)
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}.{section}: expected a table of options")
        opts = dict(options) if name in HOST_SECTIONS else component_options(
            name, options, registries, f"{where}.{section}")
        out.setdefault(name, {}).update(opts)
    return out


def check_overrides(where: str, overrides: Any, registries: Mapping[str, Registry]) -> None:
    """Check an experiment variant's overrides (component lists and plugin options).

    A variant's option sections name their components exactly: the variant's components are
    built with the options under the name it gives, so a spelling only the environment's
    variables need (``CATEGORY_CAP``) would be dropped without a word."""
    for stage, kind in (("candidates", "candidate_generators"), ("scorers", "scorers"),
                        ("rerankers", "rerankers")):
        names = getattr(overrides, stage)
        if names is not None:
            check_names(f"{where}.{stage}", names, registries, kind)
    known = {n for reg in registries.values() for n in reg.entries}
    for section in overrides.options:
        spelt = _canonical_section(section, known)
        if spelt is not None and spelt != section:
            raise ConfigError(f"{where}.options: section: no such name {section!r}; did you "
                              f"mean {spelt!r}? (a variant names its component exactly)")
    check_plugin_sections(f"{where}.options", overrides.options, registries)


def check_experiment(experiment: Any, registries: Mapping[str, Registry]) -> None:
    """Raise :class:`ConfigError` when a variant of ``experiment`` names a component or an
    option key no plugin registered (``PUT /experiments/{key}`` answers it with a 422)."""
    for i, variant in enumerate(experiment.variants):
        check_overrides(f"experiment {experiment.key!r}: variants[{i}]", variant.overrides,
                        registries)


def check_settings(settings: Settings, registries: Mapping[str, Registry]) -> Settings:
    """Return ``settings`` with every component name and option key checked against what the
    plugins registered, and plugin sections under their components' names.

    Raises :class:`ConfigError` naming the first bad name, where it was given and the
    available names: ``pipeline.*``, ``cache.tiers``, ``[plugins.*]`` and their keys.
    """
    p = settings.pipeline
    check_names("pipeline.candidates", p.candidates, registries, "candidate_generators")
    check_names("pipeline.scorers", p.scorers, registries, "scorers")
    check_names("pipeline.rerankers", p.rerankers, registries, "rerankers")
    check_names("pipeline.similar", p.similar, registries, "candidate_generators", "scorers")
    check_names("pipeline.fallback", (p.fallback,), registries, "scorers")
    check_names("pipeline.optional", p.optional, registries, *KINDS)
    check_names("cache.tiers", settings.cache.tiers, registries, "caches")
    plugins = check_plugin_sections("plugins", settings.plugins, registries)
    return settings.replace(plugins=plugins)


def check_configuration(settings: Settings, pm: pluggy.PluginManager | None = None) -> Settings:
    """:func:`check_settings` and every configured experiment against the installed plugins
    (what ``rankly serve`` runs before it starts the server); ``ConfigError`` names the fault."""
    from .events.log import window_seconds
    from .experiments import ExperimentError, load_experiments

    pm = pm or make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
    registries = collect_all(pm)
    checked = check_settings(settings, registries)
    try:
        for exp in load_experiments(settings.experiments):
            check_experiment(exp, registries)
    except ExperimentError as exc:
        raise ConfigError(str(exc)) from None
    window_seconds(checked)  # the event log's, checked here too: a server fails before it starts
    return checked
