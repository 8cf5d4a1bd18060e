"""A small synthetic trained model, its standard users and a runtime, built in about a second."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pluggy

from ..config import CacheSettings, PipelineSettings, Settings, load_settings
from ..model import Model
from ..offline.interactions import TrainingData
from ..plugins import ComponentContext, Registry, collect_all, make_plugin_manager
from ..types import Ranking, Reason, UserFeatures

#: The kinds of component the kit checks, as the user names them, with their registry.
KINDS = {"candidate_generator": "candidate_generators", "scorer": "scorers",
         "reranker": "rerankers", "cache": "caches", "trainer": "trainers"}
#: The built-in each kind is timed next to.
BASELINES = {"candidate_generator": "popular", "scorer": "popular", "reranker": "diversity",
             "cache": "l1", "trainer": "pop"}
#: Trainers fitted for the kit's model (fast on its size; ALS and the blend are left out).
TRAINERS = ("pop", "itemknn", "ease")


@dataclass(frozen=True)
class Case:
    """One input of the standard workload: a labelled user (and what the kind needs)."""

    label: str
    user: UserFeatures
    known: bool  # a user the model was trained on


@dataclass(frozen=True)
class Workload:
    """The kit's model and inputs. Users: known ones (with history), a session, a cold
    user, an anonymous one (``user_id`` None) and an id the model never saw; item sets:
    300 candidates, the whole catalog, 10, 1 and none."""

    data: TrainingData
    model: Model
    settings: Settings
    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    cases: tuple[Case, ...]
    item_sets: tuple[np.ndarray, ...]
    seed: int = 11
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def bare(self) -> tuple[Model, TrainingData]:
        """The same model and data with a catalog without categories (as trained from a
        ratings file with no item table): categories all -1, no category names."""
        if "bare" not in self.extras:
            self.extras["bare"] = without_categories(self.model, self.data)
        return self.extras["bare"]

    @property
    def known_cases(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.known)

    def ranking(self, case: Case, size: int = 50) -> Ranking:
        """A slate of ``size`` items in descending score order, as rerankers receive it."""
        rng = np.random.default_rng(self.seed + case.user.row + 7)
        n = len(self.model.catalog)
        items = np.sort(rng.choice(n, size=min(size, n), replace=False)).astype(np.int64)
        scores = np.sort(rng.random(items.size).astype(np.float32))[::-1].copy()
        reasons = np.full(items.size, int(Reason.POPULAR), dtype=np.int8)
        return Ranking(items, scores, reasons, np.full(items.size, -1, dtype=np.int64))


def _user(model: Model, user_id: str | None, history: np.ndarray, session: bool = False
          ) -> UserFeatures:
    history = np.array(history, dtype=np.int64)  # a writable copy: mutations are seen
    return UserFeatures(user_id, model.users.row(user_id) if not session else -1, history,
                        np.unique(history), session=session)


def standard_cases(model: Model, seed: int = 11, n_known: int = 20) -> tuple[Case, ...]:
    """Known users (by their training history), a session, cold, anonymous, unknown id."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(model.users), size=min(n_known, len(model.users)), replace=False)
    cases = []
    for row in sorted(rows.tolist()):
        uid = str(model.users.user_ids[row])
        cases.append(Case(f"user {uid}", _user(model, uid, model.users.history(row)), True))
    session = rng.choice(len(model.catalog), size=3, replace=False)
    cases.append(Case("an anonymous session", _user(model, None, session, session=True), True))
    empty = np.empty(0, np.int64)
    cases.append(Case("a cold user", _user(model, "cold-user-without-history", empty), False))
    cases.append(Case("an anonymous user (user_id None)", _user(model, None, empty), False))
    return tuple(cases)


def standard_item_sets(model: Model, seed: int = 11) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed + 1)
    n = len(model.catalog)
    some = rng.choice(n, size=min(300, n), replace=False).astype(np.int64)
    return (some, np.arange(n, dtype=np.int64), some[:10].copy(), some[:1].copy(),
            np.empty(0, np.int64))


def without_categories(model: Model, data: TrainingData) -> tuple[Model, TrainingData]:
    """``model`` and ``data`` over a copy of their catalog that has no categories."""
    c = model.catalog
    catalog = dataclasses.replace(
        c, categories=np.full_like(c.categories, -1), category_names=(),
        cat_indptr=np.zeros_like(c.cat_indptr), cat_indices=c.cat_indices[:0].copy(),
        index=dict(c.index), category_index={}, memo={})
    bare = Model(f"{model.version}-without-categories", model.manifest, catalog, model.users,
                 dict(model.parts))
    return bare, dataclasses.replace(data, catalog=catalog)


def kit_settings(**pipeline: Any) -> Settings:
    """Settings ignoring the environment: a pipeline of built-ins, no cache tiers."""
    base = PipelineSettings(candidates=("popular",), scorers=("popular",), rerankers=(),
                            similar=("itemknn", "popular"), fallback="popular")
    return load_settings(environ={}).replace(pipeline=dataclasses.replace(base, **pipeline),
                                             cache=CacheSettings(tiers=()))


def make_workload(seed: int = 11, n_users: int = 200, n_items: int = 300,
                  trainers: Sequence[str] = TRAINERS, plugins: Iterable[object] = (),
                  pm: pluggy.PluginManager | None = None) -> Workload:
    """Train the kit's model on a synthetic shop (users and items numbered from 1).

    ``plugins`` are registered next to the installed ones (entry points); ``pm`` replaces
    both. Takes about a second with the default trainers.
    """
    from ..offline.demo import synthesize
    from ..offline.interactions import build_training_data
    from ..offline.training import train

    pm = pm or make_plugin_manager(extra=tuple(plugins))
    interactions, items = synthesize(n_users=n_users, n_items=n_items, seed=seed)
    data = build_training_data(interactions, items)
    settings = kit_settings()
    parts = train(data, tuple(trainers), settings, pm=pm)
    manifest = {"parts": {p.name: {"params": dict(p.params), "metrics": dict(p.metrics)}
                          for p in parts}}
    model = Model(f"kit-{seed}", manifest, data.catalog, data.users,
                  {p.name: dict(p.arrays) for p in parts})
    return Workload(data, model, settings, pm, collect_all(pm), standard_cases(model, seed),
                    standard_item_sets(model, seed), seed)


def build_component(workload: Workload, name: str, kind: str,
                    options: Mapping[str, Any] | None = None, store: Any = None,
                    model: Model | None = None) -> Any:
    """Build component ``name`` of ``kind`` for the kit's model (or ``model``) through its
    factory, with its declared defaults under ``options`` (what ``rankly serve`` would
    build)."""
    from ..plugins import component_options, option_defaults

    registry = workload.registries[KINDS[kind]]
    factory = registry.get(name)
    if kind == "trainer":
        return factory
    opts = {**option_defaults(name, workload.registries),
            **component_options(name, dict(options or {}), workload.registries)}
    ctx = ComponentContext(name, model or workload.model, opts, workload.settings, store)
    return factory(ctx) if callable(factory) else factory


def kinds_of(workload: Workload, name: str) -> list[str]:
    """The kinds ``name`` is registered as (a name can be, e.g., a generator and a scorer)."""
    return [kind for kind, reg in KINDS.items() if name in workload.registries[reg]]


def make_runtime(workload: Workload, options: Mapping[str, Mapping[str, Any]] | None = None,
                 **pipeline: Any) -> Any:
    """A serving runtime over the kit's model (memory store, no cache tiers, no events).

    ``pipeline`` overrides the kit's pipeline (``scorers=("mine", "popular")``);
    ``options`` gives components their ``[plugins.<name>]`` options. As strict as
    ``rankly serve``: unknown names or option keys raise ``ConfigError``.
    """
    from ..runtime import build_runtime
    from ..storage.memory_store import MemoryStore

    settings = kit_settings(**pipeline).replace(plugins={k: dict(v) for k, v in
                                                         (options or {}).items()})
    return build_runtime(settings, workload.model, workload.pm, store=MemoryStore())


def serve(rt: Any, user_id: str | None = None, n: int = 10,
          session_items: Sequence[str] = (), **request: Any) -> dict[str, Any]:
    """Answer one recommendation request through the pipeline, as ``POST /recommendations``
    would (the JSON-ready response: items with scores and reasons, fallback, ...)."""
    import asyncio

    from .. import pipeline
    from ..types import RecommendationRequest

    req = RecommendationRequest(user_id, n, session_items=tuple(session_items),
                                request_id="kit", **request)

    async def run() -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 30.0  # tests are not timed
        return await pipeline.rank(rt, req, pipeline.default_plan(rt), deadline=deadline)

    return asyncio.run(run())
