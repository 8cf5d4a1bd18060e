"""The one face for plugins: hookimpl, component protocols, value types, model read API.

A plugin, built-in or third-party, imports from here (or from ``rankly.engine``, which
re-exports these names), from ``rankly._fast`` and from third-party libraries; never from
another module of the engine. ``tests/plugins/test_plugin_imports.py`` enforces it for the
built-ins. What is named here is the contract: it changes only backwards compatibly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookimpl
from .config import INVALIDATION_MODES, check_invalidation
from .feedback.ltr_features import FEATURES as RANKER_FEATURES
from .feedback.ltr_features import ranker_features
from .model import Catalog, Factors, Model, Neighbours, UserTable
from .offline.interactions import TrainingData
from .plugins import ComponentContext, LiveCounters
from .storage.store import Store, StoreUnavailable
from .types import (
    EMPTY_INDEX,
    Cache,
    CacheEntry,
    CandidateGenerator,
    Candidates,
    CatalogScorer,
    DataRefused,
    FloatArray,
    IntArray,
    ModelPart,
    Ranking,
    Reason,
    Register,
    Reranker,
    Scorer,
    Trainer,
    UserFeatures,
    anchored_reasons,
)

if TYPE_CHECKING:
    from .storage.redis_client import AsyncRedis, CircuitOpen

#: Names loaded on first use: the Redis client pulls in redis-py, which trainers, batch
#: workers and the plugin kit never need.
_LAZY = {"AsyncRedis": ".storage.redis_client", "CircuitOpen": ".storage.redis_client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # the hook marker (hooks themselves: rankly.engine.hookspecs)
    "hookimpl",
    "Register",
    # component protocols
    "CandidateGenerator",
    "Scorer",
    "CatalogScorer",
    "Reranker",
    "Cache",
    "Trainer",
    "DataRefused",
    "LiveCounters",
    # what a factory receives
    "ComponentContext",
    # value types
    "IntArray",
    "FloatArray",
    "EMPTY_INDEX",
    "Reason",
    "UserFeatures",
    "Candidates",
    "Ranking",
    "anchored_reasons",
    "ModelPart",
    "CacheEntry",
    # the trained model, read-only
    "Model",
    "Catalog",
    "UserTable",
    "Factors",
    "Neighbours",
    # training input
    "TrainingData",
    # the learned ranker's features (shared by `rankly train-ranker` and the `ltr` reranker)
    "RANKER_FEATURES",
    "ranker_features",
    # for cache tiers: the store, the Redis client type, invalidation modes
    "Store",
    "StoreUnavailable",
    "AsyncRedis",
    "CircuitOpen",
    "INVALIDATION_MODES",
    "check_invalidation",
]
