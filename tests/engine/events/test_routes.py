"""The event routes end to end: purchases reach recommendations, retries, outages, export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import time
import uuid

import pytest
from starlette.testclient import TestClient

from rankly.engine.events import cli as events_cli
from rankly.engine.offline import training
from rankly.engine.serving.app import create_app
from rankly.engine.storage.redis_client import make_redis_sync


def ids(resp) -> list[str]:
    return [i["item_id"] for i in resp.json()["items"]]


def purchase(user: str, item: str, event_id: str | None = None) -> dict:
    return {"event_id": event_id or uuid.uuid4().hex, "user_id": user, "item_id": item,
            "type": "purchase"}


@pytest.fixture
def settings(artifacts, settings_for, tmp_path):
    return settings_for(artifacts, data_dir=tmp_path / "data")


def log_lines(settings) -> list[dict]:
    path = settings.data_dir / "events" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_purchase_excluded_within_a_second(client: TestClient, user: str = "7",
                                            invalidation: str = "revalidate") -> None:
    first = client.get("/recommendations", params={"user_id": user, "n": 10})
    assert client.get("/recommendations", params={"user_id": user, "n": 10}).json()["cached"]
    bought = ids(first)[3]
    start = time.perf_counter()
    r = client.post("/events", json=purchase(user, bought))
    assert r.status_code == 202 and r.json()["accepted"] == 1
    after = client.get("/recommendations", params={"user_id": user, "n": 10})
    elapsed = time.perf_counter() - start
    assert bought not in ids(after)
    assert len(ids(after)) == 10
    if invalidation == "revalidate":
        # the cached slate minus the purchase, topped up with its first spare item, while
        # the key recomputes behind it
        assert after.json()["cached"] is True
        assert ids(after)[:9] == [i for i in ids(first) if i != bought]
        assert ids(after)[9] not in ids(first)
        assert not any(k.startswith("_") for k in after.json())
    else:
        assert after.json()["cached"] is False
    assert elapsed < 1.0
    time.sleep(0.3)  # after the delayed second invalidation it stays excluded
    assert bought not in ids(client.get("/recommendations", params={"user_id": user, "n": 10}))


def test_purchase_is_excluded_from_the_next_recommendation(settings):
    with TestClient(create_app(settings)) as client:
        check_purchase_excluded_within_a_second(client)


def test_purchase_drops_the_cached_answer_with_invalidation_drop(artifacts, settings_for,
                                                                 tmp_path):
    s = settings_for(artifacts, data_dir=tmp_path / "data", cache={"invalidation": "drop"})
    with TestClient(create_app(s)) as client:
        check_purchase_excluded_within_a_second(client, invalidation="drop")


def test_purchase_is_excluded_on_redis_with_l1_and_l2(artifacts, settings_for, tmp_path,
                                                       redis_url, redis_namespace):
    s = settings_for(artifacts, data_dir=tmp_path, store_url=redis_url, namespace=redis_namespace,
                     cache={"tiers": ["l1", "l2"]})
    with TestClient(create_app(s)) as client:
        check_purchase_excluded_within_a_second(client, user="11")
        r = client.post("/events", json=[purchase("11", "1", "dup"), purchase("11", "1", "dup")])
        assert r.json() == {"accepted": 1, "duplicates": 1, "rejected": []}


def test_view_does_not_invalidate_but_enters_history(settings):
    with TestClient(create_app(settings)) as client:
        first = ids(client.get("/recommendations", params={"user_id": "9", "n": 10}))
        r = client.post("/events", json={"event_id": "v1", "user_id": "9", "item_id": first[0],
                                         "type": "view"})
        assert r.status_code == 202
        again = client.get("/recommendations", params={"user_id": "9", "n": 10})
        assert again.json()["cached"] is True


def test_retries_with_the_same_event_id_count_once(settings):
    with TestClient(create_app(settings)) as client:
        body = purchase("3", "5", "retry-me")
        assert client.post("/events", json=body).json()["accepted"] == 1
        assert client.post("/events", json=body).json() == {"accepted": 0, "duplicates": 1,
                                                            "rejected": []}
        assert client.post("/events", json={"events": [body, body]}).json()["duplicates"] == 2
    with TestClient(create_app(settings)) as client:  # after a restart too
        assert client.post("/events", json=body).json()["duplicates"] == 1
    assert sum(1 for d in log_lines(settings) if d["id"] == "retry-me") == 1


def test_mixed_batch_accepts_good_events_and_names_bad_ones(settings):
    with TestClient(create_app(settings)) as client:
        body = [purchase("1", "2", "g1"), {"event_id": "b1", "user_id": "1", "item_id": "2",
                                           "type": "teleport"},
                {"event_id": "b2", "user_id": "1", "type": "view"}, purchase("1", "3", "g2")]
        r = client.post("/events", json=body)
        assert r.status_code == 202
        out = r.json()
        assert (out["accepted"], out["duplicates"]) == (2, 0)
        assert [(x["index"], x["error"]["field"]) for x in out["rejected"]] == [(1, "type"),
                                                                                 (2, "item_id")]


def test_single_bad_event_is_422_naming_the_field(settings):
    with TestClient(create_app(settings)) as client:
        r = client.post("/events", json={"event_id": "x", "user_id": "1", "item_id": "2",
                                          "type": "rating", "value": 9})
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "value"
        assert client.post("/events", content=b"{not json",
                           headers={"content-type": "application/json"}).status_code == 400


def test_limits_batch_size_and_body_size(artifacts, settings_for, tmp_path):
    s = settings_for(artifacts, data_dir=tmp_path, limits={"max_events_batch": 5,
                                                           "max_body_bytes": 4096})
    with TestClient(create_app(s)) as client:
        r = client.post("/events", json=[purchase("1", "2") for _ in range(6)])
        assert r.status_code == 422 and r.json()["error"]["field"] == "events"
        r = client.post("/events", content=b"[" + b" " * 5000 + b"]",
                        headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_unknown_items_are_accepted_but_never_recommended(settings):
    with TestClient(create_app(settings)) as client:
        r = client.post("/events", json=purchase("4", "brand-new-item"))
        assert r.json()["accepted"] == 1
        assert "brand-new-item" not in ids(client.get("/recommendations",
                                                      params={"user_id": "4", "n": 50}))


def test_storage_failure_answers_503_and_nothing_is_lost_after_recovery(settings):
    folder = settings.data_dir / "events"
    sent = [purchase("2", str(i), f"p{i}") for i in range(1, 6)]
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json=sent[:2]).json()["accepted"] == 2
        log = _service(client).log
        log._close_fd()  # NOTE: root ignores file modes: break the path itself instead
        shutil.move(folder, settings.data_dir / "moved")
        folder.write_text("")
        r = client.post("/events", json=sent)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["field"] == "store"
        r = client.post("/track/click", params={"user_id": "2", "item_id": "9"})
        assert r.status_code == 503
        folder.unlink()
        shutil.move(settings.data_dir / "moved", folder)
        r = client.post("/events", json=sent)  # the client retries the whole batch
        assert r.json() == {"accepted": 3, "duplicates": 2, "rejected": []}
    stored = [d["id"] for d in log_lines(settings) if d["t"] == "purchase"]
    assert stored == ["p1", "p2", "p3", "p4", "p5"]
    with TestClient(create_app(settings)) as client:  # projections come back from the log
        recs = ids(client.get("/recommendations", params={"user_id": "2", "n": 100}))
        assert not {"1", "2", "3", "4", "5"} & set(recs)


def _service(client):
    return _RT[0].extras["events"]


_RT: list = []


@pytest.fixture(autouse=True)
def _capture_runtime(monkeypatch):
    from rankly.engine.events import routes as events_api

    real = events_api.start_events

    async def capture(rt):
        _RT.insert(0, rt)
        return await real(rt)

    monkeypatch.setattr(events_api, "start_events", capture)
    yield
    _RT.clear()


def test_redis_down_answers_503_then_accepts_after_restart(artifacts, settings_for, tmp_path,
                                                           spare_redis, redis_namespace):
    s = settings_for(artifacts, data_dir=tmp_path, store_url=spare_redis.url,
                     namespace=redis_namespace)
    with TestClient(create_app(s)) as client:
        r = client.post("/events", json=purchase("5", "1", "r1"))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert client.get("/recommendations", params={"user_id": "5"}).status_code == 200
        spare_redis.start()
        for _ in range(50):
            r = client.post("/events", json=purchase("5", "1", "r1"))
            if r.status_code == 202:
                break
            time.sleep(0.1)
        assert r.json()["accepted"] == 1
        assert client.post("/events", json=purchase("5", "1", "r1")).json()["duplicates"] == 1


def test_a_retry_projects_a_purchase_stored_by_a_call_that_answered_503(
        artifacts, settings_for, tmp_path, redis_server, redis_namespace):
    """A replica that does not confirm makes the append answer 503 after the event was stored;
    the client's retry is a duplicate, and it is the only call left to project the purchase."""
    s = settings_for(artifacts, data_dir=tmp_path, store_url=redis_server.url,
                     namespace=redis_namespace, cache={"tiers": ["l1", "l2"]},
                     plugins={"events": {"wait_replicas": 1, "wait_timeout_ms": 50}})
    with TestClient(create_app(s)) as client:
        user = "12"
        shown = ids(client.get("/recommendations", params={"user_id": user, "n": 10}))
        bought, other = shown[2], shown[4]
        r = client.post("/events", json=purchase(user, bought, "stored-then-503"))
        assert r.status_code == 503  # no replica confirmed: stored, not acknowledged
        _service(client).log.wait_replicas = 0  # the replica is back
        r = client.post("/events", json=purchase(user, bought, "stored-then-503"))
        assert r.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
        # the same event_id with other content is a duplicate that projects nothing
        r = client.post("/events", json=purchase(user, other, "stored-then-503"))
        assert r.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
        after = ids(client.get("/recommendations", params={"user_id": user, "n": 10}))
        assert bought not in after
        assert other in after


def test_track_click_alias(settings):
    with TestClient(create_app(settings)) as client:
        r = client.post("/track/click", params={"user_id": "1", "item_id": "2",
                                                "event_id": "c1"})
        assert r.status_code == 202 and r.json()["accepted"] == 1
        r = client.post("/track/click", params={"user_id": "1", "item_id": "2",
                                                "event_id": "c1"})
        assert r.json()["duplicates"] == 1
        r = client.post("/track/click", params={"user_id": "1"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "item_id"
        r = client.post("/track/click", params={"user_id": "1", "item_id": "2", "x": "1"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "x"


def test_served_slates_are_logged_as_impressions(settings):
    with TestClient(create_app(settings)) as client:
        r = client.get("/recommendations", params={"user_id": "8", "n": 4,
                                                   "request_id": "req-1"})
        served = ids(r)
    imps = [d for d in log_lines(settings) if d["t"] == "impression"]
    assert [d["i"] for d in imps] == served
    assert [d["c"]["position"] for d in imps] == [0, 1, 2, 3]
    assert {d["r"] for d in imps} == {"req-1"} and {d["u"] for d in imps} == {"8"}


def test_impression_buffer_is_bounded_and_counts_drops():
    from rankly.engine.events.routes import ImpressionBuffer

    buf = ImpressionBuffer(max_slates=2)
    slate = {"items": [{"item_id": "a"}, {"item_id": "b"}]}
    for i in range(5):
        buf.offer(f"r{i}", "u", slate, None)
    assert len(buf) == 2 and buf.dropped == 6
    assert [e.event_id for e in buf.take()] == ["imp:r0:0", "imp:r0:1", "imp:r1:0", "imp:r1:1"]


def test_export_train_serve_end_to_end(settings, tmp_path, capsys):
    import argparse

    new_item = "fresh-item"
    with TestClient(create_app(settings)) as client:
        events = []
        for u in range(40):
            events.append({"event_id": f"x{u}", "user_id": f"n{u}", "item_id": new_item,
                           "type": "purchase"})
            events.append({"event_id": f"y{u}", "user_id": f"n{u}", "item_id": str(u % 7 + 1),
                           "type": "view"})
            events.append({"event_id": f"z{u}", "user_id": f"n{u}", "item_id": str(u % 5 + 10),
                           "type": "rating", "value": 4})
        assert client.post("/events", json=events).json()["accepted"] == 120
        client.get("/recommendations", params={"user_id": "1"})
    out = tmp_path / "events.csv"
    args = argparse.Namespace(config=None, artifacts=str(settings.artifacts), out=str(out),
                              include_impressions=False)
    import os
    os.environ["RANKLY_DATA_DIR"] = str(settings.data_dir)
    try:
        assert events_cli.run_export(args) == 0
        replay_args = argparse.Namespace(config=None, artifacts=str(settings.artifacts),
                                         json=True)
        assert events_cli.run_replay(replay_args) == 0
    finally:
        del os.environ["RANKLY_DATA_DIR"]
    replayed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert replayed["by_type"]["purchase"] == 40 and replayed["unknown_items"] == 40
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["user_id", "item_id", "category_id", "event_type", "value", "timestamp"]
    assert len(rows) == 121 and all(r[3] != "impression" for r in rows[1:])
    new_artifacts = tmp_path / "retrained"
    targs = argparse.Namespace(interactions=str(out), items=None, format="events-csv",
                               event_weights=None, out=str(new_artifacts),
                               trainers="pop,itemknn", config=None)
    assert training.run(targs) == 0
    s2 = settings.replace(artifacts=new_artifacts, data_dir=tmp_path / "data2")
    with TestClient(create_app(s2)) as client:
        r = client.get("/recommendations", params={"user_id": "someone-new", "n": 3})
        assert r.status_code == 200
        assert new_item in ids(r)  # the item that arrived through events is now served


def test_export_and_replay_never_cut_the_live_log(settings):
    """An incomplete last line can be a running server's write in progress: the read-only
    commands skip it and leave the file as it is."""
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json=purchase("3", "1", "p1")).status_code == 202
        path = settings.data_dir / "events" / "events.jsonl"
        with open(path, "ab") as fh:  # the first half of the server's next write
            fh.write(b'{"id":"p2","u":"3","i":"2","t":"purch')
        before = path.read_bytes()
        out = io.StringIO()
        counts = asyncio.run(events_cli.export(settings, out))
        stats = asyncio.run(events_cli.replay(settings))
        assert path.read_bytes() == before
        assert counts == {"purchase": 1} and stats["events"] == 1
        assert out.getvalue().splitlines()[1].startswith("3,1,")


def test_an_event_with_a_key_given_twice_is_refused_over_http(settings):
    # the purchase hidden behind a repeated "type" is neither stored nor invalidating
    body = (b'[{"event_id":"twice","user_id":"9","item_id":"1","type":"view",'
            b'"type":"purchase"},{"event_id":"once","user_id":"9","item_id":"2",'
            b'"type":"view"}]')
    with TestClient(create_app(settings)) as client:
        r = client.post("/events", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": [
            {"index": 0, "error": {"field": "type", "message": "must be given once"}}]}


def test_slate_outcomes_count_only_answers_served_once_per_type():
    from rankly.engine.events.routes import SlateOutcomes

    outcomes = SlateOutcomes(max_entries=10, max_served=2)
    assert not outcomes.record("r1", "click", "a")  # never served: a made-up id
    outcomes.note_served("r1", ["a", "b"])
    assert not outcomes.record("r1", "click", "z")  # not an item of that answer
    assert outcomes.record("r1", "click", "b") and not outcomes.record("r1", "click", "a")
    assert outcomes.record("r1", "purchase", "a")
    outcomes.note_served("r2", ["a"])
    outcomes.note_served("r2", ["c"])  # a follower reads an answer one impression at a time
    assert outcomes.served_item("r2", "c") and outcomes.served_item("r2", "a")
    outcomes.note_served("r3", ["x"])  # the oldest served answer is forgotten
    assert not outcomes.record("r1", "add_to_cart", "a") and outcomes.record("r3", "click", "x")


def test_a_refused_user_state_write_is_retried_without_a_next_event(settings):
    from rankly.engine.storage.store import StoreUnavailable

    with TestClient(create_app(settings)) as client:
        store = client.app_state["runtime"].store
        write = store.record_interactions
        refused = []

        async def refuse_once(rows):
            if not refused:
                refused.append(rows)
                raise StoreUnavailable("failover in progress")
            await write(rows)

        store.record_interactions = refuse_once
        r = client.post("/events", json=purchase("7", "3"))
        assert r.status_code == 202  # durable in the log: the store write is retried
        assert refused
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "3" not in asyncio.run(store.fetch_user("7")).seen:
            time.sleep(0.1)
        assert "3" in asyncio.run(store.fetch_user("7")).seen
        assert "3" not in ids(client.get("/recommendations", params={"user_id": "7", "n": 50}))


def test_a_late_event_enters_the_history_behind_newer_ones(settings):
    """A client that sends an event late (a phone back online) does not make its item the
    user's newest: the online history, which the scorer weighs by recency, follows event
    time, and a replay of the log rebuilds the same order."""
    now = time.time()

    def view(item: str, ts: float) -> dict:
        return {"event_id": uuid.uuid4().hex, "user_id": "9", "item_id": item, "type": "view",
                "timestamp": ts}

    with TestClient(create_app(settings)) as client:
        store = client.app_state["runtime"].store
        assert client.post("/events", json=[view("1", now - 60), view("2", now - 30)]
                           ).status_code == 202
        assert client.post("/events", json=view("3", now - 3600)).status_code == 202
        live = asyncio.run(store.fetch_user("9")).history
    assert live[:3] == ("2", "1", "3")
    with TestClient(create_app(settings)) as client:  # the embedded store, rebuilt from the log
        assert asyncio.run(client.app_state["runtime"].store.fetch_user("9")).history == live


def test_a_retried_event_keeps_its_stored_time_in_the_history(artifacts, settings_for, tmp_path,
                                                               redis_url, redis_namespace):
    """A retry of a stored event (its reply was lost) is projected again, at the time stored
    with the event, not at the retry's arrival, as a replay of the log would place it."""
    s = settings_for(artifacts, data_dir=tmp_path, store_url=redis_url, namespace=redis_namespace)
    with TestClient(create_app(s)) as client:
        store = client.app_state["runtime"].store
        assert client.post("/events", json=purchase("31", "10", "rt-a")).status_code == 202
        time.sleep(0.01)  # the server stamps each event on arrival, to the millisecond
        assert client.post("/events", json=purchase("31", "11", "rt-b")).status_code == 202
        r = client.post("/events", json=purchase("31", "10", "rt-a"))
        assert r.json()["duplicates"] == 1
        key = store.keys.user("31", "history")
    sync = make_redis_sync(redis_url, s)
    try:
        assert [i.decode() for i in sync.lrange(key, 0, -1)] == ["11", "10"]
    finally:
        sync.close()


def test_invalidation_marks_shared_tiers_before_broadcasting_and_survives_a_failed_one(
        settings):
    from rankly.engine.storage.store import StoreUnavailable

    calls = []

    class Shared:
        async def invalidate_user(self, user_id):
            calls.append(("l2", user_id))

    class Local:
        def drop_user(self, user_id):
            calls.append(("l1 here", user_id))

        async def invalidate_user(self, user_id):  # here again, then the broadcast
            calls.append(("l1 broadcast", user_id))
            raise StoreUnavailable("redis breaker open")

    with TestClient(create_app(settings)) as client:
        service = _service(client)
        asyncio.run(service.invalidate({"a", "b"}, [("l1", Local()), ("l2", Shared())]))
    # this worker's copies first (no I/O: a failed broadcast cannot skip them), then the
    # shared tier before the broadcast that makes other workers read it
    assert {c for c in calls[:2]} == {("l1 here", "a"), ("l1 here", "b")}
    first = calls[2][1]
    assert calls[2:4] == [("l2", first), ("l1 broadcast", first)]
    assert ("l2", "b" if first == "a" else "a") in calls[4:]
