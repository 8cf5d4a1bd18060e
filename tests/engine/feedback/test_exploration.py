"""Exploration: shuffled slates log the exact probability of each item at its position."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import ConfigError, ExplorationSettings, load_settings
from rankly.engine.events.log import ImpressionSlate, _encode, _encode_impressions
from rankly.engine.feedback.exploration import explore
from rankly.engine.serving.app import create_app


def test_exploration_off_keeps_the_slate_and_logs_no_positions():
    items = list("abcdef")
    shown, positions = explore(items, ExplorationSettings(rate=0.0))
    assert shown == items and positions is None


def test_logged_propensities_are_the_empirical_frequencies():
    settings = ExplorationSettings(rate=0.4, top_m=4)
    items = list("abcdef")
    rng = random.Random(0)
    counts: Counter[tuple[int, str]] = Counter()
    logged: dict[tuple[int, str], float] = {}
    rounds = 40_000
    for _ in range(rounds):
        shown, positions = explore(items, settings, rng)
        for k, (item, p) in enumerate(zip(shown, positions, strict=True)):
            counts[k, item] += 1
            logged[k, item] = p["propensity"]
            assert items[p["base_position"]] == item
    for key, p in logged.items():
        assert counts[key] / rounds == pytest.approx(p, abs=0.01)
    # the tail never moves; each head position sums to 1 over the head items
    assert logged[4, "e"] == logged[5, "f"] == 1.0
    assert sum(logged[0, x] for x in "abcd") == pytest.approx(1.0)


def test_explored_impressions_encode_like_their_events():
    slate = ImpressionSlate(1.5, "r1", "u1", ("a", "b"), {"model_version": "v"},
                            ({"propensity": 0.3, "base_position": 1},
                             {"propensity": 0.7, "base_position": 0}))
    assert _encode_impressions(slate, 2.0) == [_encode(e, 2.0, False) for e in slate.events()]


def test_exploration_settings_are_validated():
    with pytest.raises(ConfigError, match="exploration"):
        load_settings(environ={"RANKLY_EXPLORATION__RATE": "1.5"})


def _impressions(settings) -> list[dict]:
    path = settings.data_dir / "events" / "events.jsonl"
    return [d for d in map(json.loads, path.read_text().splitlines()) if d["t"] == "impression"]


def test_served_slates_log_propensity_one_without_exploration(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        client.get("/recommendations", params={"user_id": "8", "n": 4})
    imps = _impressions(settings)
    assert len(imps) == 4 and all(d["c"]["propensity"] == 1.0 for d in imps)


def test_served_slates_log_their_exploration(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path,
                            exploration={"rate": 1.0, "top_m": 3})
    with TestClient(create_app(settings)) as client:
        served = [it["item_id"] for it in
                  client.get("/recommendations", params={"user_id": "8", "n": 5}).json()["items"]]
    imps = _impressions(settings)
    assert [d["i"] for d in imps] == served
    assert [d["c"]["propensity"] for d in imps] == pytest.approx([1 / 3] * 3 + [1.0, 1.0])
    assert sorted(d["c"]["base_position"] for d in imps) == [0, 1, 2, 3, 4]


def test_impressions_log_the_requests_context(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        client.post("/recommendations", json={"user_id": "8", "n": 3,
                                               "context": {"device": "ios", "page": 2}})
        client.get("/recommendations", params={"user_id": "9", "n": 2})
    imps = _impressions(settings)
    assert [d["c"].get("request_context") for d in imps] == [
        {"device": "ios", "page": 2}] * 3 + [None] * 2
