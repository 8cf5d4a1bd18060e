"""ASGI entry point for uvicorn workers: settings from the environment, read once."""

from __future__ import annotations

import logging

from starlette.applications import Starlette

from rankly.engine.app import create_app
from rankly.engine.config import load_settings


def create_app_from_env() -> Starlette:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)
