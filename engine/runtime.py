"""What a serving process holds: settings, plugins, store, caches and the live components.

``Runtime`` only *holds* things; the request path is the plain functions of ``pipeline/``.
Components are rebuilt as a unit for each model version and swapped with one assignment, so a
request that already took a reference to the old ``Components`` finishes on the old model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pluggy

from rankly import _fast

from .breaker import Breakers
from .config import ConfigError, Settings
from .experiments import Experiment, ExperimentError, Experiments, load_experiments
from .experiments.tracking import ExperimentTracker, make_tracker
from .model import Model
from .plugins import (
    KIND_NOUNS,
    ComponentContext,
    PluginError,
    Registry,
    check_experiment,
    check_settings,
    collect_all,
    component_options,
    make_plugin_manager,
    option_defaults,
)
from .singleflight import SingleFlight
from .storage.opening import open_store
from .storage.store import Store
from .types import (
    Cache,
    CandidateGenerator,
    Reranker,
    Scorer,
    UserFeatures,
)

log = logging.getLogger("rankly")


@dataclass
class Components:
    """The components built for one model version, by registered name."""

    model: Model
    generators: dict[str, CandidateGenerator]
    scorers: dict[str, Scorer]
    rerankers: dict[str, Reranker]
    fallback_scores: np.ndarray  # float32 over the catalog, from the fallback scorer
    #: components whose factory raised, by name: "<kind> from <plugin>: <error>" (/ready)
    missing: dict[str, str] = field(default_factory=dict)
    _category_masks: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    _builtin_plans: dict[tuple[tuple[str, ...], ...], bool] = field(default_factory=dict)

    def builtin_only(self, *names: tuple[str, ...]) -> bool:
        """Whether every component named (and built) is one of rankly's own: its class is
        defined under ``rankly.plugins`` (cached per distinct name lists)."""
        found = self._builtin_plans.get(names)
        if found is None:
            comps = [c for group in names for n in group
                     for c in (self.generators.get(n), self.scorers.get(n),
                               self.rerankers.get(n)) if c is not None]
            found = all(type(c).__module__.startswith("rankly.plugins.") for c in comps)
            if len(self._builtin_plans) > 1024:
                self._builtin_plans.clear()
            self._builtin_plans[names] = found
        return found

    def category_mask(self, names: tuple[str, ...]) -> np.ndarray:
        """Boolean mask of items in any of ``names`` (cached per distinct tuple, bounded)."""
        mask = self._category_masks.get(names)
        if mask is None:
            if len(self._category_masks) > 1024:
                self._category_masks.clear()
            mask = self._category_masks[names] = self.model.catalog.items_in_categories(names)
        return mask


@dataclass
class Runtime:
    settings: Settings
    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    store: Store
    caches: list[tuple[str, Cache]]
    components: Components
    experiments: Experiments = field(default_factory=Experiments)
    tracker: ExperimentTracker = field(default_factory=ExperimentTracker)
    breakers: Breakers = field(default_factory=Breakers)
    flights: SingleFlight = field(default_factory=SingleFlight)
    extras: dict[str, Any] = field(default_factory=dict)
    _variant_components: dict[str, Components] = field(default_factory=dict)

    @property
    def model(self) -> Model:
        return self.components.model

    def swap_model(self, model: Model) -> None:
        """Build components for ``model`` and make them live (in-flight requests finish first)."""
        self.components = build_components(self.settings, model, self.registries, self.store)
        self._variant_components = {}

    def check_experiment(self, experiment: Experiment) -> None:
        """Raise ``ExperimentError`` when a variant names a component or an option key no
        plugin registered (``PUT /experiments/{key}`` answers it with a 422)."""
        try:
            check_experiment(experiment, self.registries)
        except ConfigError as exc:
            raise ExperimentError(str(exc)) from None

    def components_for(self, options: Mapping[str, Mapping[str, Any]] | None) -> Components:
        """Components built with an experiment variant's plugin ``options`` merged in (cached)."""
        if not options:
            return self.components
        key = json.dumps(options, sort_keys=True, default=str)
        comps = self._variant_components.get(key)
        if comps is None or comps.model is not self.components.model:
            merged = {name: dict(self.settings.plugin_options(name)) for name in options}
            for name, opts in options.items():
                merged[name].update(opts)
            settings = self.settings.replace(plugins={**self.settings.plugins, **merged})
            comps = build_components(settings, self.model, self.registries, self.store)
            self._variant_components[key] = comps
        return comps


def serving_defaults(model: Model) -> dict[str, dict[str, Any]]:
    """Component options that training chose for serving (a part's
    ``params["serving_options"]``, e.g. the diversity cap the blend validated), by component."""
    out: dict[str, dict[str, Any]] = {}
    for part in model.manifest.get("parts", {}).values():
        for name, opts in dict(part.get("params", {}).get("serving_options") or {}).items():
            out.setdefault(str(name), {}).update(opts)
    return out


class ComponentError(PluginError):
    """A configured, non-optional component's factory raised at start."""


def configured_names(settings: Settings, experiments: Experiments | None = None) -> set[str]:
    """Every component name the settings (and the experiments' variants) select."""
    p = settings.pipeline
    names = {*p.candidates, *p.scorers, *p.rerankers, *p.similar, p.fallback,
             *settings.cache.tiers}
    for exp in experiments or ():
        for v in exp.variants:
            o = v.overrides
            names.update(o.candidates or (), o.scorers or (), o.rerankers or ())
    return names


def _build(kind: str, registry: Registry, settings: Settings, model: Model,
           store: Store | None, defaults: Mapping[str, Mapping[str, Any]],
           registries: Mapping[str, Registry], missing: dict[str, str],
           required: set[str]) -> dict[str, Any]:
    built: dict[str, Any] = {}
    for name, factory in registry.entries.items():
        # NOTE: declared defaults < what training chose < explicit settings
        options = {**option_defaults(name, registries), **defaults.get(name, {}),
                   **component_options(name, settings.plugin_options(name), registries)}
        ctx = ComponentContext(name, model, options, settings, store)
        try:
            component = factory(ctx) if callable(factory) else factory
        except Exception as exc:
            owner = registry.owners[name]
            error = f"{type(exc).__name__}: {exc}"
            if name in required:
                raise ComponentError(
                    f"{KIND_NOUNS[registry.kind]} {name!r} (plugin {owner}) failed to build: "
                    f"{error}; list it in pipeline.optional to serve without it") from exc
            # NOTE: an optional or unused component must not take serving down; it is
            # reported (/ready) and its name is simply unavailable (the fallback chain
            # covers it). A configured optional one logs its traceback; one nothing
            # configures (any installed plugin's) logs one line: a broken package the
            # pipeline does not use is not an error of this server.
            if name in settings.pipeline.optional:
                log.exception("could not build %s %r (from %s)", kind, name, owner)
            else:
                log.warning("could not build unused %s %r (from %s): %s; the pipeline does "
                            "not use it (GET /ready lists it)", kind, name, owner, error)
            missing[name] = f"{KIND_NOUNS[registry.kind]} from {owner}: {error}"
            continue
        if component is not None:
            built[name] = component
    return built


def build_components(settings: Settings, model: Model, registries: dict[str, Registry],
                     store: Store | None = None, required: set[str] = frozenset()) -> Components:
    """Build every registered generator, scorer and reranker for ``model``.

    A factory that raises leaves its component out (``Components.missing``), unless its name
    is in ``required``: then :class:`ComponentError` names it. A configured component whose
    factory returned None (no part of the model for it) is listed there too.
    """
    defaults = serving_defaults(model)
    missing: dict[str, str] = {}
    args = (settings, model, store, defaults, registries, missing, required)
    generators = _build("candidate generator", registries["candidate_generators"], *args)
    scorers = _build("scorer", registries["scorers"], *args)
    rerankers = _build("reranker", registries["rerankers"], *args)
    n = len(model.catalog)
    fallback_scores = np.zeros(n, dtype=np.float32)
    fb = scorers.get(settings.pipeline.fallback)
    if fb is None:
        log.warning("fallback scorer %r unavailable: fallback answers use catalog order",
                    settings.pipeline.fallback)
    else:
        cold = UserFeatures(None, -1, np.empty(0, np.int64), np.empty(0, np.int64))
        try:
            s = np.asarray(fb.score(cold, np.arange(n, dtype=np.int64)), dtype=np.float32)
        except Exception as exc:  # a plugin's scorer: the fallback must never be what fails
            error = f"{type(exc).__name__}: {exc}"
            if settings.pipeline.fallback in required:
                raise ComponentError(
                    f"fallback scorer {settings.pipeline.fallback!r} (plugin "
                    f"{registries['scorers'].owners[settings.pipeline.fallback]}) raised "
                    f"scoring a cold user: {error}; list it in pipeline.optional to serve "
                    "catalog order instead") from exc
            s = None
            log.warning("fallback scorer %r raised %s; fallback answers use catalog order",
                        settings.pipeline.fallback, error)
        if s is not None and s.shape == (n,) and np.isfinite(s).all():
            fallback_scores = np.ascontiguousarray(s)
        elif s is not None:
            log.warning("fallback scorer %r gave %s scores for %d items (non-finite or "
                        "misshapen): fallback answers use catalog order",
                        settings.pipeline.fallback, s.shape, n)
    for name in (*settings.pipeline.candidates, *settings.pipeline.scorers,
                 *settings.pipeline.rerankers):
        if name not in generators and name not in scorers and name not in rerankers:
            log.warning("configured component %r is not available for model %s", name,
                        model.version)
            # reported by /ready next to those whose factory raised
            missing.setdefault(name, f"not available for model {model.version}: its factory "
                                     f"returned None (the model has no part it serves)")
    return Components(model, generators, scorers, rerankers, fallback_scores, missing)


def build_runtime(settings: Settings, model: Model, pm: pluggy.PluginManager | None = None,
                  store: Store | None = None) -> Runtime:
    """Assemble a runtime: plugin manager, registries, store, cache tiers, components.

    Strict: a component name or option key the plugins do not know raises ``ConfigError``
    (:func:`check_settings`), and so does a configured component whose factory raises,
    unless it is listed in ``pipeline.optional`` (``ComponentError``).
    """
    pm = pm or make_plugin_manager(settings.load_entrypoints, settings.blocked_plugins)
    registries = collect_all(pm)
    settings = check_settings(settings, registries)
    experiments = load_experiments(settings.experiments)
    for exp in experiments:
        check_experiment(exp, registries)
    required = configured_names(settings, experiments) - set(settings.pipeline.optional)
    store = store or open_store(settings)
    components = build_components(settings, model, registries, store, required)
    caches: list[tuple[str, Cache]] = []
    for tier in settings.cache.tiers:
        factory = registries["caches"].get(tier)
        options = {**option_defaults(tier, registries), **settings.plugin_options(tier)}
        ctx = ComponentContext(tier, model, options, settings, store)
        try:
            caches.append((tier, factory(ctx)))
        except Exception as exc:
            if tier in required:
                raise ComponentError(
                    f"cache tier {tier!r} (plugin {registries['caches'].owners[tier]}) failed "
                    f"to build: {type(exc).__name__}: {exc}; list it in pipeline.optional to "
                    "serve without it") from exc
            log.exception("could not build cache tier %r", tier)
            components.missing[tier] = f"cache tier: {type(exc).__name__}: {exc}"
    log.info("rankly kernels: %s; model %s (%d items, %d users)", _fast.IMPLEMENTATION,
             model.version, len(model.catalog), len(model.users))
    return Runtime(settings, pm, registries, store, caches, components, experiments,
                   make_tracker(store, settings.experiment_retention_days * 86400.0))
