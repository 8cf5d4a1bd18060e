"""Fixtures for engine tests: a small trained model and a Starlette app over it."""

from __future__ import annotations

import tempfile

import pytest
from starlette.testclient import TestClient

from rankly.engine.app import create_app
from rankly.engine.config import load_settings
from rankly.engine.demo import synthesize
from rankly.engine.interactions import build_training_data
from rankly.engine.model import fingerprint, load_model, save_model
from rankly.engine.plugins import collect, make_plugin_manager

TRAINERS = ("pop", "itemknn", "als")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A model trained on a small synthetic shop (users/items numbered from 1)."""
    interactions, items = synthesize(n_users=300, n_items=400, seed=3)
    data = build_training_data(interactions, items)
    trainers = collect(make_plugin_manager(), "trainers")
    parts = [trainers.get(name).fit(data, {"factors": 16, "iterations": 5}) for name in TRAINERS]
    out = tmp_path_factory.mktemp("artifacts")
    save_model(out, data.catalog, data.users, parts,
               data_fingerprint=fingerprint(data.user_idx, data.item_idx))
    return out


@pytest.fixture(scope="session")
def model(artifacts):
    return load_model(artifacts)


def make_settings(artifacts, **overrides):
    """Settings ignoring the environment; runtime data (event log) goes to a temp dir."""
    overrides.setdefault("data_dir", tempfile.mkdtemp(prefix="rankly-test-"))
    return load_settings(environ={}, artifacts=artifacts, **overrides)


@pytest.fixture
def settings_for():
    """``settings_for(artifacts, **overrides)``: settings ignoring the process environment."""
    return make_settings


@pytest.fixture
def client(artifacts):
    with TestClient(create_app(make_settings(artifacts))) as c:
        yield c
