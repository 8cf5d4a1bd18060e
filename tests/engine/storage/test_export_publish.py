"""Export -> train -> publish end to end on Redis (issue 5): events ingested by the app are
exported by ``rankly export-events``, trained on by ``rankly train``, published by ``rankly
publish``, and a server started with no artifacts serves the published version, in which an
item first seen through the events is recommendable."""

from __future__ import annotations

import csv
import os
import re

import pytest
from starlette.testclient import TestClient

from rankly.engine.cli import main
from rankly.engine.serving.app import create_app

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NEW_ITEM = "fresh-item"  # not in the served model: it arrives only through events
BUYERS = 40


def ingested_events() -> list[dict]:
    """Buyers of NEW_ITEM who also view items 1-7 and rate 10-14 (its future neighbours)."""
    events = []
    for u in range(BUYERS):
        events.append({"event_id": f"x{u}", "user_id": f"n{u}", "item_id": NEW_ITEM,
                       "type": "purchase"})
        events.append({"event_id": f"y{u}", "user_id": f"n{u}", "item_id": str(u % 7 + 1),
                       "type": "view"})
        events.append({"event_id": f"z{u}", "user_id": f"n{u}", "item_id": str(u % 5 + 10),
                       "type": "rating", "value": 4})
    return events


def ids(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [i["item_id"] for i in resp.json()["items"]]


@pytest.fixture
def cli_env(monkeypatch, redis_server, redis_namespace, tmp_path):
    """The CLI's settings (read from RANKLY_* by ``load_settings``) point at the test's Redis
    namespace; nothing from the outer environment leaks in."""
    for key in list(os.environ):
        if key.startswith("RANKLY_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("RANKLY_STORE_URL", redis_server.url)
    monkeypatch.setenv("RANKLY_NAMESPACE", redis_namespace)
    monkeypatch.setenv("RANKLY_DATA_DIR", str(tmp_path / "cli-data"))
    return redis_server.url, redis_namespace


def test_export_train_publish_serves_an_item_first_seen_through_events(
        artifacts, settings_for, cli_env, tmp_path, capsys):
    url, ns = cli_env
    ingest = settings_for(artifacts, data_dir=tmp_path / "ingest", store_url=url, namespace=ns)
    with TestClient(create_app(ingest)) as client:
        assert client.get("/items/" + NEW_ITEM + "/similar").status_code == 404  # unknown yet
        r = client.post("/events", json=ingested_events())
        assert r.status_code == 202 and r.json()["accepted"] == 3 * BUYERS

    out = tmp_path / "events.csv"
    assert main(["export-events", "--out", str(out), "--artifacts", str(artifacts)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["user_id", "item_id", "category_id", "event_type", "value", "timestamp"]
    assert len(rows) == 1 + 3 * BUYERS
    assert sum(1 for r in rows[1:] if r[1] == NEW_ITEM and r[3] == "purchase") == BUYERS

    retrained = tmp_path / "retrained"
    assert main(["train", "--interactions", str(out), "--format", "events-csv",
                 "--out", str(retrained), "--trainers", "pop,itemknn"]) == 0
    capsys.readouterr()

    assert main(["publish", "--artifacts", str(retrained), "--redis", url,
                 "--namespace", ns]) == 0
    published = re.search(r"published and activated model version (\S+)",
                          capsys.readouterr().out)
    assert published, "publish did not report a version"
    version = published.group(1)
    assert main(["publish", "--list", "--redis", url, "--namespace", ns]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["*", version] in [line[:2] for line in listed]  # the active one

    serve = settings_for(None, data_dir=tmp_path / "serve", store_url=url, namespace=ns)
    assert serve.artifacts is None
    with TestClient(create_app(serve)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model_version"] == version
        similar = client.get("/items/" + NEW_ITEM + "/similar", params={"n": 5})
        assert similar.json()["model_version"] == version
        assert set(ids(similar)) & {str(i) for i in (*range(1, 8), *range(10, 15))}
        # a neighbour of the new item now leads to it, and a new visitor is offered it
        assert NEW_ITEM in ids(client.get("/items/1/similar", params={"n": 10}))
        assert NEW_ITEM in ids(client.get("/recommendations",
                                          params={"user_id": "someone-new", "n": 3}))
