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

