"""Experiments through the HTTP API: admin auth, assignment in /recommendations, results."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine.experiments import assign_user, load_experiments
from rankly.engine.serving.app import create_app

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

AB = {
    "status": "running",
    "primary_metric": "ctr",
    "variants": [
        {"name": "control", "weight": 50},
        {"name": "popular-only", "weight": 50, "scorers": ["popular"], "rerankers": []},
    ],
}


@pytest.fixture
def admin_client(artifacts, settings_for):
    settings = settings_for(artifacts, admin_token=TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 403), ({"X-API-Key": "nope"}, 403),
     ({"Authorization": "Basic abc"}, 401)],
)
def test_admin_routes_reject_missing_or_wrong_credentials(admin_client, headers, status):
    for method, path in (("PUT", "/experiments/x"), ("GET", "/experiments/x"),
                         ("POST", "/experiments/x/stop"), ("GET", "/experiments/x/results")):
        r = admin_client.request(method, path, headers=headers, json=AB)
        assert r.status_code == status, (method, path)
        assert r.json()["error"]["field"] == "authorization"
        assert TOKEN not in r.text


def test_admin_routes_are_disabled_without_a_configured_token(client):
    r = client.get("/experiments/x", headers=AUTH)
    assert r.status_code == 403


def test_put_get_and_api_key_header(admin_client):
    r = admin_client.put("/experiments/ab", json=AB, headers=AUTH)
    assert r.status_code == 201
    got = admin_client.get("/experiments/ab", headers={"X-API-Key": TOKEN}).json()
    assert got["status"] == "running" and [v["name"] for v in got["variants"]] == [
        "control", "popular-only"]
    assert got["variants"][1]["scorers"] == ["popular"]


def test_invalid_experiment_is_a_422_naming_the_problem(admin_client):
    bad = {**AB, "variants": [{"name": "only-one"}]}
    r = admin_client.put("/experiments/bad", json=bad, headers=AUTH)
    assert r.status_code == 422
    assert "variants" in r.json()["error"]["message"]


def test_unknown_experiment_is_404(admin_client):
    assert admin_client.get("/experiments/none", headers=AUTH).status_code == 404


def test_a_new_key_with_a_percent_sign_is_refused_naming_the_key(admin_client):
    """A literal "%0A" in a key reads as an escape to clients that re-quote URLs (the
    stateful schemathesis phase found one it could not stop): new keys may not hold "%";
    the schema says so, and other routes still answer 404 for such a key."""
    r = admin_client.put("/experiments/a%25zz", json=AB, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "key"
    assert "'%'" in r.json()["error"]["message"]
    assert admin_client.get("/experiments/a%25zz", headers=AUTH).status_code == 404
    schema = admin_client.get("/openapi.json").json()["paths"]["/experiments/{key}"]
    (put_key,) = schema["put"]["parameters"]
    assert "%" in put_key["schema"]["pattern"] and "%" not in schema["get"]["parameters"][0][
        "schema"]["pattern"]


def test_recommendations_name_the_variant_and_follow_its_overrides(admin_client, model):
    admin_client.put("/experiments/ab", json=AB, headers=AUTH)
    registry = load_experiments([{**AB, "key": "ab"}])
    log_pop = np.log1p(model.part("pop")["scores"])
    seen_variants = set()
    for u in range(1, 41):
        body = admin_client.get("/recommendations", params={"user_id": str(u), "n": 5}).json()
        expected = assign_user(registry, str(u)).variant_name
        assert (body["experiment"], body["variant"]) == ("ab", expected)
        seen_variants.add(body["variant"])
        if expected == "popular-only":  # its scorer is popularity: scores are log1p(pop)
            got = [it["score"] for it in body["items"]]
            want = [float(log_pop[model.catalog.index[it["item_id"]]]) for it in body["items"]]
            assert got == pytest.approx(want, abs=1e-5)
    assert seen_variants == {"control", "popular-only"}


def test_exposures_are_counted_once_per_user(admin_client):
    admin_client.put("/experiments/ab", json=AB, headers=AUTH)
    for _ in range(3):
        for u in range(1, 21):
            admin_client.get("/recommendations", params={"user_id": str(u), "n": 5})
    res = admin_client.get("/experiments/ab/results", headers=AUTH).json()
    assert sum(a["exposures"] for a in res["arms"]) == 20
    assert res["verdict"] == "collecting"


def test_stopped_experiment_assigns_nobody(admin_client):
    admin_client.put("/experiments/ab", json=AB, headers=AUTH)
    assert admin_client.post("/experiments/ab/stop", headers=AUTH).json()["status"] == "stopped"
    body = admin_client.get("/recommendations", params={"user_id": "1"}).json()
    assert body["variant"] is None and body["experiment"] is None


def _weighted(control: float, other: float, **extra) -> dict:
    return {"status": "running", "primary_metric": "ctr", **extra,
            "variants": [{"name": "control", "weight": control}, {"name": "b", "weight": other}]}


def test_a_repeated_put_keeps_the_phase_its_weights_started(admin_client):
    """Sending the current definition again must not send the experiment back to phase 0,
    whose users were split by the old weights (their counts would meet the new weights)."""
    assert admin_client.put("/experiments/w", json=_weighted(1, 1), headers=AUTH).json()[
        "phase"] == 0
    assert admin_client.put("/experiments/w", json=_weighted(3, 1), headers=AUTH).json()[
        "phase"] == 1
    again = admin_client.put("/experiments/w", json=_weighted(3, 1), headers=AUTH).json()
    assert again["phase"] == 1
    assert admin_client.get("/experiments/w", headers=AUTH).json()["phase"] == 1


def test_a_put_with_new_weights_keeps_the_rest_of_its_body(admin_client):
    admin_client.put("/experiments/w2", json=_weighted(1, 1), headers=AUTH)
    body = _weighted(3, 1, coverage=0.5, mde=0.1, guardrails=["conversion"])
    got = admin_client.put("/experiments/w2", json=body, headers=AUTH).json()
    assert (got["phase"], got["coverage"], got["mde"], got["guardrails"]) == (
        1, 0.5, 0.1, ["conversion"])
    assert [v["weight"] for v in got["variants"]] == [0.75, 0.25]


def test_sticky_weights_and_other_settings_keep_the_phase(admin_client):
    admin_client.put("/experiments/w3", json=_weighted(1, 1, sticky=True), headers=AUTH)
    assert admin_client.put("/experiments/w3", json=_weighted(3, 1, sticky=True),
                            headers=AUTH).json()["phase"] == 0
    assert admin_client.put("/experiments/w3", json=_weighted(3, 1, sticky=True, coverage=0.5),
                            headers=AUTH).json()["phase"] == 0
    assert admin_client.put("/experiments/w3", json=_weighted(3, 1, seed="other"),
                            headers=AUTH).json()["phase"] == 1


def _srm_series(client, key: str) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines()
            if line.startswith(f'rankly_experiment_srm_p_value{{experiment="{key}"}}')]


def test_the_srm_gauge_leaves_metrics_when_the_experiment_stops(admin_client):
    assert admin_client.put("/experiments/srm", json=_weighted(1, 1),
                            headers=AUTH).status_code == 201
    for user in range(1, 60):
        admin_client.get("/recommendations", params={"user_id": f"srm-{user}"})
    assert len(_srm_series(admin_client, "srm")) == 1
    assert admin_client.put("/experiments/srm", json=_weighted(3, 1),
                            headers=AUTH).json()["phase"] == 1
    assert _srm_series(admin_client, "srm") == []  # the new split has no exposure yet
    for user in range(1, 60):
        admin_client.get("/recommendations", params={"user_id": f"srm-{user}"})
    assert len(_srm_series(admin_client, "srm")) == 1
    assert admin_client.post("/experiments/srm/stop", headers=AUTH).status_code == 200
    assert _srm_series(admin_client, "srm") == []
    assert admin_client.get("/experiments/srm/results", headers=AUTH).json()["srm"][
        "p_value"] is not None
