"""Experiments fed odd but valid input: extreme weights."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from rankly.engine.experiments import analyze, assign_one, parse_experiment
from rankly.engine.experiments.stats import ArmCounts
from rankly.engine.serving.app import create_app

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HUGE = 1e308  # two of them sum to infinity


@pytest.fixture
def admin_client(artifacts, settings_for):
    settings = settings_for(artifacts, admin_token=TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


def _two(weight_a: float, weight_b: float, **extra) -> dict:
    return {"key": "w", "status": "running", **extra,
            "variants": [{"name": "a", "weight": weight_a}, {"name": "b", "weight": weight_b}]}


def test_weights_whose_sum_overflows_still_normalise_to_their_shares():
    exp = parse_experiment(_two(HUGE, HUGE))
    assert exp.weights == (0.5, 0.5)
    assert assign_one(exp, "1").probability == 0.5
    assert exp.with_weights([HUGE, HUGE / 3]).weights == pytest.approx((0.75, 0.25))


def test_analyze_reads_overflowing_weights_as_their_shares():
    doc = analyze([ArmCounts("a", 100, 10, 10), ArmCounts("b", 300, 10, 10)],
                  weights=[HUGE, HUGE])
    assert [a["weight"] for a in doc["arms"]] == [0.5, 0.5]
    assert doc["srm"]["expected"] == [200.0, 200.0] and doc["srm"]["alert"]


def test_results_of_an_experiment_put_with_overflowing_weights(admin_client):
    body = _two(HUGE, HUGE)
    assert admin_client.put("/experiments/w", json=body, headers=AUTH).status_code == 201
    for u in range(1, 21):
        admin_client.get("/recommendations", params={"user_id": str(u), "n": 3})
    r = admin_client.get("/experiments/w/results", headers=AUTH)
    assert r.status_code == 200
    doc = r.json()
    assert [a["weight"] for a in doc["arms"]] == [0.5, 0.5]
    assert sum(a["exposures"] for a in doc["arms"]) == 20
    assert doc["srm"]["status"] == "ok"
