"""Server-wide admission control of event ingestion (engine/events/admission.py).

Unit tests drive the token bucket with a fake clock; the HTTP tests go through the whole app
in process (TestClient) with the admission's clock replaced, and count what the log stored.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.testclient import TestClient

from rankly.engine.config import ConfigError, RateLimits
from rankly.engine.events.admission import EventAdmission, IngestSlot, Refusal
from rankly.engine.events.routes import EXTRAS_KEY
from rankly.engine.events.values import MIN_EVENT_BYTES, max_events_in
from rankly.engine.serving.app import create_app

from ..conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(rate: float = 100.0, capacity: float = 100.0, inflight: int = 0
              ) -> tuple[EventAdmission, Clock]:
    clock = Clock()
    return EventAdmission(rate, capacity, inflight, clock=clock), clock


# --- the admission logic ---------------------------------------------------------------------


def test_events_are_charged_all_or_nothing_and_refill_at_the_rate():
    adm, clock = admission(rate=100.0, capacity=100.0)
    assert isinstance(adm.enter(), IngestSlot)
    assert adm.charge(60) is None
    assert adm.tokens == pytest.approx(40.0)
    refused = adm.charge(50)  # over what is left: refused whole, nothing taken
    assert refused == Refusal("over_budget", 1)
    assert adm.tokens == pytest.approx(40.0)
    assert adm.charge(40) is None  # what is left still fits
    clock.now += 0.5  # +50 tokens
    assert adm.charge(50) is None
    assert adm.charge(1) is not None
    clock.now += 100.0  # a long pause banks no more than the capacity
    assert adm.charge(100) is None
    assert adm.charge(1) is not None


def test_an_empty_bucket_refuses_before_the_body_is_read():
    adm, clock = admission(rate=2.0, capacity=10.0)
    assert adm.charge(10) is None
    assert adm.enter() == Refusal("rate", 1)
    assert adm.inflight == 0  # a refusal holds no slot
    clock.now += 0.5  # one token: enough to read a body
    assert isinstance(adm.enter(), IngestSlot)
    assert adm.charge(3) == Refusal("over_budget", 1)  # 2 more tokens: 1 s at 2/s
    slow, _ = admission(rate=0.25, capacity=10.0)
    assert slow.charge(10) is None
    assert slow.enter() == Refusal("rate", 4)  # Retry-After: whole seconds until a token
    assert slow.charge(10) == Refusal("over_budget", 40)


def test_before_the_body_is_read_the_bucket_must_hold_the_events_it_can_carry():
    adm, clock = admission(rate=10.0, capacity=20.0)
    assert adm.charge(12) is None  # 8 left
    assert adm.enter(9) == Refusal("rate", 1)
    slot = adm.enter(8)
    assert isinstance(slot, IngestSlot)
    slot.close()
    assert isinstance(adm.enter(10**6), Refusal)  # capped at the capacity: waits for 20
    clock.now += 2.0
    big = adm.enter(10**6)
    assert isinstance(big, IngestSlot) and adm.tokens == pytest.approx(20.0)  # nothing taken


def test_the_in_flight_cap_counts_slots_until_released():
    adm, _ = admission(inflight=2)
    first, second = adm.enter(), adm.enter()
    assert isinstance(first, IngestSlot) and isinstance(second, IngestSlot)
    assert adm.enter() == Refusal("inflight", 1)
    first.close()
    first.close()  # released once only
    assert adm.inflight == 1
    third = adm.enter()
    assert isinstance(third, IngestSlot)
    assert adm.enter() == Refusal("inflight", 1)


def test_a_slot_handed_to_an_append_is_released_when_the_append_ends():
    async def scenario() -> None:
        adm, _ = admission(inflight=1)
        slot = adm.enter()
        assert isinstance(slot, IngestSlot)
        done = asyncio.Event()

        async def append() -> None:
            await done.wait()
            raise OSError("disk full")  # retrieved by the slot: no "never retrieved" warning

        task = asyncio.ensure_future(append())
        slot.hand_over(task)
        slot.close()  # the request ended (e.g. the client went away): the append holds it
        assert adm.inflight == 1 and adm.enter() == Refusal("inflight", 1)
        done.set()
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert adm.inflight == 0

    asyncio.run(scenario())


def test_a_zero_rate_and_a_zero_cap_admit_everything():
    adm, _ = admission(rate=0.0, capacity=1.0, inflight=0)
    slots = [adm.enter() for _ in range(1000)]
    assert all(isinstance(s, IngestSlot) for s in slots)
    assert adm.charge(10**9) is None


def test_the_capacity_holds_at_least_one_full_batch():
    limits = RateLimits(events_global_per_second=10.0)
    assert EventAdmission.from_settings(limits, max_batch=1000).capacity == 1000.0
    assert EventAdmission.from_settings(limits, max_batch=5).capacity == 10.0
    burst = RateLimits(events_global_per_second=10.0, events_global_burst=3000)
    assert EventAdmission.from_settings(burst, max_batch=1000).capacity == 3000.0


def test_admission_settings_have_defaults_env_overrides_and_checks(artifacts):
    from rankly.engine.config import load_settings

    rl = load_settings(environ={}).rate_limits
    assert (rl.events_global_per_second, rl.events_global_burst, rl.events_max_inflight) == (
        2000.0, 0, 64)
    env = {"RANKLY_RATE_LIMITS__EVENTS_GLOBAL_PER_SECOND": "500",
           "RANKLY_RATE_LIMITS__EVENTS_GLOBAL_BURST": "1500",
           "RANKLY_RATE_LIMITS__EVENTS_MAX_INFLIGHT": "8"}
    rl = load_settings(environ=env).rate_limits
    assert (rl.events_global_per_second, rl.events_global_burst, rl.events_max_inflight) == (
        500.0, 1500, 8)
    with pytest.raises(ConfigError, match="events_global_burst"):
        load_settings(environ={"RANKLY_RATE_LIMITS__EVENTS_GLOBAL_BURST": "999"})
    with pytest.raises(ConfigError, match="events_max_inflight"):
        load_settings(environ={"RANKLY_RATE_LIMITS__EVENTS_MAX_INFLIGHT": "-1"})


# --- over HTTP ---------------------------------------------------------------------------------


def batch(prefix: str, n: int) -> list[dict]:
    return [{"event_id": f"{prefix}-{i}", "user_id": str(i % 50 + 1), "item_id": str(i % 40 + 1),
             "type": "view"} for i in range(n)]


def stored_ids(settings) -> list[str]:
    path = settings.data_dir / "events" / "events.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line["id"] for line in lines if line.get("t") != "impression"]


@pytest.fixture
def limited(artifacts, tmp_path):
    """An app admitting 10 events/s, bucket of 20 (= limits.max_events_batch), its clock
    frozen; yields (client, settings, clock)."""
    settings = make_settings(artifacts, data_dir=tmp_path / "data",
                             limits={"max_events_batch": 20},
                             rate_limits={"events_global_per_second": 10,
                                          "events_max_inflight": 4})
    clock = Clock()
    with TestClient(create_app(settings)) as client:
        adm = client.app_state["runtime"].extras[EXTRAS_KEY].admission
        adm.clock, adm.bucket.updated = clock, clock.now
        yield client, settings, clock


def metric(client: TestClient, name: str, reason: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{reason="{reason}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_a_batch_over_the_budget_is_429_with_retry_after_and_stores_nothing(limited):
    client, settings, clock = limited
    shed_before = metric(client, "rankly_event_requests_shed_total", "over_budget")
    rejected_before = metric(client, "rankly_events_rejected_total", "over_budget")
    r = client.post("/events", json=batch("a", 15))
    assert r.status_code == 202 and r.json()["accepted"] == 15
    # 5 tokens left. A chunked body has no Content-Length: it is read, parsed, then its 10
    # events are refused whole
    chunked = iter([json.dumps(batch("b", 10)).encode()])
    r = client.post("/events", content=chunked, headers={"content-type": "application/json"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["field"] == "rate"
    assert stored_ids(settings) == [f"a-{i}" for i in range(15)]
    assert metric(client, "rankly_event_requests_shed_total", "over_budget") == shed_before + 1
    assert metric(client, "rankly_events_rejected_total", "over_budget") == rejected_before + 10
    clock.now += 1.0  # refilled: +10 tokens, 15 in the bucket
    r = client.post("/events", json=batch("b", 10))
    assert r.status_code == 202 and r.json() == {"accepted": 10, "duplicates": 0,
                                                 "rejected": []}
    assert stored_ids(settings) == [f"a-{i}" for i in range(15)] + [f"b-{i}" for i in range(10)]


def test_a_body_that_can_hold_more_events_than_the_bucket_is_refused_unread(limited):
    client, settings, clock = limited
    assert client.post("/events", json=batch("a", 12)).status_code == 202
    shed_before = metric(client, "rankly_event_requests_shed_total", "rate")
    body = json.dumps(batch("b", 8)).encode()  # 8 tokens left; this body could hold 11
    assert max_events_in(len(body), 20) == (len(body) + 1) // MIN_EVENT_BYTES > 8
    r = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert metric(client, "rankly_event_requests_shed_total", "rate") == shed_before + 1
    assert stored_ids(settings) == [f"a-{i}" for i in range(12)]
    small = json.dumps(batch("c", 4)).encode()
    assert max_events_in(len(small), 20) <= 8  # fits what the bucket holds: read and stored
    r = client.post("/events", content=small, headers={"content-type": "application/json"})
    assert r.status_code == 202 and r.json()["accepted"] == 4


def test_max_events_in_bounds_the_events_a_body_can_hold():
    shortest = b'{"event_id":"a","user_id":1,"item_id":1,"type":""}'
    for n in (1, 2, 7, 100):
        body = b"[" + b",".join([shortest] * n) + b"]"
        assert max_events_in(len(body), 10**6) >= n
    assert max_events_in(None, 1000) == 1  # chunked: unknown
    assert max_events_in(0, 1000) == 1
    assert max_events_in(10**9, 1000) == 1000


def test_an_empty_bucket_refuses_events_and_clicks_before_reading(limited):
    client, settings, clock = limited
    assert client.post("/events", json=batch("a", 20)).status_code == 202
    shed_before = metric(client, "rankly_event_requests_shed_total", "rate")
    r = client.post("/events", content=b"not even JSON")  # refused before it is read
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    click = client.post("/track/click", params={"user_id": "1", "item_id": "2",
                                                "event_id": "c1"})
    assert click.status_code == 429
    assert metric(client, "rankly_event_requests_shed_total", "rate") == shed_before + 2
    assert client.get("/recommendations", params={"user_id": "1"}).status_code == 200
    clock.now += 0.125  # 1.25 tokens
    click = client.post("/track/click", params={"user_id": "1", "item_id": "2",
                                                "event_id": "c1"})
    assert click.status_code == 202 and click.json()["accepted"] == 1
    assert len(stored_ids(settings)) == 21


def test_invalid_events_are_not_charged_and_are_counted(limited):
    client, _, clock = limited
    before = metric(client, "rankly_events_rejected_total", "invalid")
    bad = {"event_id": "x", "user_id": "1", "item_id": "1", "type": "nope"}
    r = client.post("/events", json=[*batch("a", 19), bad])
    assert r.status_code == 202 and r.json()["accepted"] == 19
    assert len(r.json()["rejected"]) == 1
    assert metric(client, "rankly_events_rejected_total", "invalid") == before + 1
    clock.now += 0.125  # 1.25 tokens + the one the invalid event did not take: 2 fit
    assert client.post("/events", json=batch("b", 2)).status_code == 202


def test_admission_control_can_be_turned_off(artifacts, tmp_path):
    settings = make_settings(artifacts, data_dir=tmp_path / "data",
                             limits={"max_events_batch": 20},
                             rate_limits={"events_global_per_second": 0,
                                          "events_max_inflight": 0})
    with TestClient(create_app(settings)) as client:
        codes = {client.post("/events", json=batch(f"r{k}", 20)).status_code
                 for k in range(10)}
        assert codes == {202}
        assert len(stored_ids(settings)) == 200


def test_the_in_flight_cap_answers_429_while_ingests_are_running(limited):
    client, settings, _ = limited
    adm = client.app_state["runtime"].extras[EXTRAS_KEY].admission
    held = [adm.enter() for _ in range(4)]  # four ingests in flight (the cap)
    r = client.post("/events", json=batch("a", 1))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "in flight" in r.json()["error"]["message"]
    for slot in held:
        assert isinstance(slot, IngestSlot)
        slot.close()
    assert client.post("/events", json=batch("a", 1)).status_code == 202
    assert adm.inflight == 0
    assert stored_ids(settings) == ["a-0"]
