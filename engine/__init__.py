"""The rankly host: plugin contract, pipeline, store, HTTP app and CLI.

Plugins import from ``rankly.engine.api`` or from here: every name of the API is re-exported,
loaded on first use so that importing a small host module stays cheap.
"""

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "rankly"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


#: The names of :mod:`rankly.engine.api`, re-exported here (a test keeps the lists equal).
API_NAMES = frozenset({
    "hookimpl", "Register", "CandidateGenerator", "Scorer", "CatalogScorer", "Reranker",
    "Cache", "Trainer", "DataRefused", "LiveCounters", "ComponentContext", "IntArray",
    "FloatArray", "EMPTY_INDEX", "Reason", "UserFeatures", "Candidates", "Ranking",
    "anchored_reasons", "ModelPart", "CacheEntry", "Model", "Catalog", "UserTable", "Factors",
    "Neighbours", "TrainingData", "Store", "StoreUnavailable", "AsyncRedis", "CircuitOpen",
    "INVALIDATION_MODES", "check_invalidation", "RANKER_FEATURES", "ranker_features",
})


def __getattr__(name: str) -> Any:
    # NOTE: lazy, because api imports model, store and the Redis client, and every module of
    # the engine imports this package first; the static name list matters: `from
    # rankly.engine import submodule` asks this function first, and must not load api.
    if name in API_NAMES:
        return getattr(importlib.import_module("rankly.engine.api"), name)
    raise AttributeError(f"module 'rankly.engine' has no attribute {name!r}")


__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
