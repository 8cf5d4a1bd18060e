"""The rankly host: plugin contract, pipeline, store, HTTP app and CLI."""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "rankly"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
