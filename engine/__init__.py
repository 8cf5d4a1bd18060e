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


def __getattr__(name: str) -> Any:
    # NOTE: lazy, because api imports model, store and the Redis client, and every module of
    # the engine imports this package first
    if name != "api" and not name.startswith("_"):
        api = importlib.import_module("rankly.engine.api")
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module 'rankly.engine' has no attribute {name!r}")


__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
