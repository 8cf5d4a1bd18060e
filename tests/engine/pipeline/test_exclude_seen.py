"""``pipeline.exclude_seen = false`` serves the items a user has already seen."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from rankly.engine.model import load_model
from rankly.engine.serving.app import create_app

from ..conftest import make_settings


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_exclude_seen_decides_whether_seen_items_are_served(artifacts, exclude_seen):
    model = load_model(artifacts)
    n_items = len(model.catalog)
    user = "1"
    trained = {str(model.catalog.item_ids[i])
               for i in model.users.history(model.users.row(user))}
    assert trained
    settings = make_settings(artifacts, pipeline={"exclude_seen": exclude_seen},
                             limits={"n_max": n_items})
    with TestClient(create_app(settings)) as client:
        # an online event adds to what the user has seen
        online = next(str(i) for i in model.catalog.item_ids if str(i) not in trained)
        r = client.post("/events", json={"event_id": "e1", "user_id": user, "item_id": online,
                                          "type": "purchase"})
        assert r.status_code == 202
        served = client.get("/recommendations",
                            params={"user_id": user, "n": n_items}).json()
    items = {it["item_id"] for it in served["items"]}
    seen = trained | {online}
    if exclude_seen:
        assert not items & seen
    else:
        assert seen <= items, sorted(seen - items)[:5]
    assert "fallback" not in served or served["fallback"] is None
