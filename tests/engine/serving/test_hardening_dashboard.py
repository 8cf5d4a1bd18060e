"""Dashboard and metrics that tell the truth (#18): arms labelled by experiment and variant,
stopped experiments off the live charts, a history the server samples itself, and the CTR of
recommendations without any experiment."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from rankly.engine.serving import dashboard
from rankly.engine.serving.app import create_app

from ..conftest import make_settings
from .test_multiworker_metrics import sample

TOKEN = "dashboard-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(artifacts):
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        yield c


def two_arms(**extra):
    return {"status": "running", "variants": [{"name": "control"},
                                              {"name": "pop", "scorers": ["popular"]}], **extra}


def test_two_experiments_control_arms_are_separate_series(api):
    assert api.put("/experiments/half", json=two_arms(coverage=0.5),
                   headers=ADMIN).status_code == 201
    assert api.put("/experiments/rest", json=two_arms(), headers=ADMIN).status_code == 201
    for user in range(1, 80):
        assert api.get("/recommendations", params={"user_id": str(user)}).status_code == 200
    text = api.get("/metrics").text
    for exp in ("half", "rest"):
        found = sample(text, "rankly_exposures_total", experiment=exp, variant="control")
        assert found and found[0][1] > 0, exp
    series = api.get("/dashboard/data").json()["series"]["ctr"]
    assert {"half/control", "half/pop", "rest/control", "rest/pop",
            "all recommendations"} <= set(series)


def test_a_stopped_experiment_leaves_the_live_charts_but_keeps_its_results(api):
    api.put("/experiments/short", json=two_arms(), headers=ADMIN)
    for user in range(1, 20):
        api.get("/recommendations", params={"user_id": str(user)})
    data = api.get("/dashboard/data").json()
    assert {"short/control", "short/pop"} <= set(data["series"]["ctr"])
    assert api.post("/experiments/short/stop", headers=ADMIN).status_code == 200
    data = api.get("/dashboard/data").json()
    assert not any(k.startswith("short/") for k in data["series"]["ctr"])
    assert not any(v["variant"].startswith("short/") for v in data["variants"])
    assert "all recommendations" in data["series"]["ctr"]
    assert api.get("/experiments/short/results", headers=ADMIN).status_code == 200


@pytest.mark.slow
def test_the_server_samples_its_history_without_anyone_polling(artifacts, monkeypatch):
    monkeypatch.setattr(dashboard, "SAMPLE_SECONDS", 1.1)  # over MIN_SAMPLE_GAP_SECONDS
    monkeypatch.setattr(dashboard, "HISTORY_SAMPLES", 3)
    with TestClient(create_app(make_settings(artifacts))) as api:
        history = dashboard.history_of(api.app_state["runtime"])
        for user in range(1, 10):
            api.get("/recommendations", params={"user_id": str(user)})
        deadline = time.monotonic() + 20
        while len(history.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(history.samples) == 3  # no GET /dashboard/data was made
        assert history.samples[-1].requests  # the samples carry the requests made
        first = history.samples[0].t
        while history.samples[0].t == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(history.samples) == 3  # a ring buffer: the oldest sample went


def test_recommendation_ctr_counts_each_clicked_answer_once(api):
    served = api.get("/recommendations", params={"user_id": "3", "n": 4}).json()
    before = sample(api.get("/metrics").text, "rankly_recommendation_slates_with_outcome_total",
                    type="click")
    before = before[0][1] if before else 0.0
    for i, item in enumerate(served["items"][:3]):  # three clicks on one answer
        r = api.post("/events", json={"event_id": f"c{i}", "user_id": "3", "type": "click",
                                      "item_id": item["item_id"],
                                      "request_id": served["request_id"]})
        assert r.status_code == 202
    api.post("/events", json={"event_id": "no-rid", "user_id": "3", "type": "click",
                              "item_id": served["items"][0]["item_id"]})  # not attributed
    # a request id this server never served is no answer of its: not counted either
    api.post("/events", json={"event_id": "made-up", "user_id": "3", "type": "click",
                              "item_id": served["items"][0]["item_id"],
                              "request_id": "never-served"})
    after = sample(api.get("/metrics").text, "rankly_recommendation_slates_with_outcome_total",
                   type="click")
    assert after[0][1] == before + 1


def test_memoized_points_equal_points_computed_afresh():
    def sample(t: float, n: float) -> dashboard.Sample:
        return dashboard.Sample(t, requests={"200": n}, latency={"request": {0.001: n, 1.0: n}},
                                exposures={"all recommendations": n},
                                clicks={"all recommendations": n / 10})

    history = dashboard.History()
    for i in range(50):
        history.add(sample(5.0 * i, 10.0 * i))
        for extra in (1.0, 2.0):  # polls between samples: a fresh, unstored sample each
            latest = sample(5.0 * i + extra, 10.0 * i + extra)
            fresh = dashboard.History()
            fresh.samples.extend(history.samples)
            assert history.points(latest) == fresh.points(latest)
