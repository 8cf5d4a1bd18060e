"""The dashboard's experiment series: only the arms a running experiment has now are live."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from rankly.engine.serving.app import create_app

from ..conftest import make_settings

TOKEN = "dashboard-arms-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(artifacts):
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        yield c


def arms(*names: str) -> dict:
    return {"status": "running", "variants": [{"name": n} for n in names]}


def serve(api, users: range) -> None:
    for user in users:
        assert api.get("/recommendations", params={"user_id": str(user)}).status_code == 200


def test_an_arm_removed_by_a_put_leaves_the_live_charts(api):
    assert api.put("/experiments/swap", json=arms("control", "old"),
                   headers=ADMIN).status_code == 201
    serve(api, range(1, 40))
    assert "swap/old" in api.get("/dashboard/data").json()["series"]["ctr"]
    assert api.put("/experiments/swap", json=arms("control", "new"),
                   headers=ADMIN).status_code == 200
    serve(api, range(1, 40))
    data = api.get("/dashboard/data").json()
    assert "swap/old" not in data["series"]["ctr"]
    assert "swap/old" not in {v["variant"] for v in data["variants"]}
    assert {"swap/control", "swap/new"} <= set(data["series"]["ctr"])



def test_the_dashboard_counts_the_current_phase_as_the_results_route_does(api):
    """New weights start a new phase, counted apart; the dashboard's totals were the sum of
    every phase since the worker started, which no results document showed."""
    def weighted(control: float, other: float) -> dict:
        return {"status": "running", "variants": [{"name": "control", "weight": control},
                                                  {"name": "other", "weight": other}]}

    assert api.put("/experiments/phased", json=weighted(1, 1),
                   headers=ADMIN).status_code == 201
    serve(api, range(1, 60))
    for user in range(1, 60, 3):
        assert api.post("/events", json={"event_id": f"c{user}", "user_id": str(user),
                                         "item_id": "1", "type": "click"}).status_code == 202
    assert api.put("/experiments/phased", json=weighted(3, 7),
                   headers=ADMIN).status_code == 200
    serve(api, range(1, 25))
    results = api.get("/experiments/phased/results", headers=ADMIN).json()
    assert results["phase"] == 1
    shown = {v["variant"]: v for v in api.get("/dashboard/data").json()["variants"]}
    for arm in results["arms"]:
        row = shown[f"phased/{arm['name']}"]
        assert (row["exposures"], row["clicks"]) == (arm["exposures"], arm["clicks"])
    assert sum(a["exposures"] for a in results["arms"]) == 24
