"""`rankly serve` without --artifacts: a Redis store serves the version `rankly publish` made
active (docs/scaling.md); the embedded store, which has no published versions, refuses."""

from __future__ import annotations

import asyncio

import pytest

from rankly.engine import cli
from rankly.engine.config import load_settings
from rankly.engine.storage.publish import publish_version


@pytest.fixture
def served(monkeypatch):
    started = []
    monkeypatch.setattr(cli, "_serve", lambda settings, env, http="auto": started.append(
        settings))
    return started


@pytest.mark.redis
def test_a_published_version_lets_a_server_start_without_artifacts(
        redis_url, redis_namespace, tmp_path, monkeypatch, served, artifact_builder):
    monkeypatch.setenv("RANKLY_STORE_URL", redis_url)
    monkeypatch.setenv("RANKLY_NAMESPACE", redis_namespace)
    monkeypatch.setenv("RANKLY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RANKLY_ARTIFACTS", raising=False)
    assert cli.main(["serve"]) == 2  # nothing published yet: one line, no server
    assert not served
    settings = load_settings(environ={}, store_url=redis_url, namespace=redis_namespace)
    asyncio.run(publish_version(settings, artifact_builder(tmp_path / "v1", version="v1")))
    assert cli.main(["serve"]) == 0
    assert served and served[0].artifacts is None


def test_the_embedded_store_still_needs_artifacts(monkeypatch, served, capsys):
    monkeypatch.delenv("RANKLY_STORE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("RANKLY_ARTIFACTS", raising=False)
    assert cli.main(["serve"]) == 2 and not served
    assert "--artifacts DIR is required with the embedded store" in capsys.readouterr().err
