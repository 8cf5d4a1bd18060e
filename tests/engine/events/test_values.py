"""Event parsing: one event, batches, and errors that name the field."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rankly.engine.config import load_settings
from rankly.engine.events.values import Event, parse_batch, parse_event
from rankly.engine.http.validation import RequestError

NOW = 1_700_000_000.0
SETTINGS = load_settings(environ={}, event_types={"wishlist": 2.0})


def ev(**over):
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def field_of(obj) -> str:
    with pytest.raises(RequestError) as info:
        parse_event(obj, SETTINGS, NOW)
    return info.value.field


def test_minimal_event_defaults_timestamp_to_now():
    e = parse_event(ev(), SETTINGS, NOW)
    assert e == Event("e1", "u1", "i1", "view", NOW)


def test_iso_timestamps_with_offset_and_naive_as_utc():
    assert parse_event(ev(timestamp="2023-11-14T22:13:20Z"), SETTINGS, NOW).timestamp == NOW
    assert parse_event(ev(timestamp="2023-11-14T22:13:20"), SETTINGS, NOW).timestamp == NOW
    assert parse_event(ev(timestamp="2023-11-15T00:13:20+02:00"), SETTINGS, NOW).timestamp == NOW
    assert parse_event(ev(timestamp=NOW - 5), SETTINGS, NOW).timestamp == NOW - 5


@pytest.mark.parametrize("obj, field", [
    (ev(event_id=None), "event_id"),
    (ev(event_id=""), "event_id"),
    (ev(event_id="x" * 257), "event_id"),
    (ev(event_id=7), "event_id"),
    (ev(user_id=None), "user_id"),
    (ev(user_id="a\nb"), "user_id"),
    (ev(item_id=["x"]), "item_id"),
    (ev(type="like"), "type"),
    (ev(type=None), "type"),
    (ev(value="5"), "value"),
    (ev(value=True), "value"),
    (ev(value=math.inf), "value"),
    (ev(type="rating"), "value"),
    (ev(type="rating", value=7), "value"),
    (ev(timestamp=NOW + 86400), "timestamp"),
    (ev(timestamp="yesterday"), "timestamp"),
    (ev(timestamp=NOW * 1000 * 1000), "timestamp"),
    (ev(timestamp=12), "timestamp"),
    (ev(context=[1]), "context"),
    (ev(context={"x": "y" * 5000}), "context"),
    (ev(request_id=""), "request_id"),
    (ev(colour="red"), "colour"),
    ([1, 2], "event"),
])
def test_bad_event_names_the_field(obj, field):
    assert field_of(obj) == field


def test_custom_types_from_settings_are_accepted():
    assert parse_event(ev(type="wishlist"), SETTINGS, NOW).type == "wishlist"
    with pytest.raises(RequestError):
        parse_event(ev(type="wishlist"), load_settings(environ={}), NOW)


def test_unknown_item_ids_are_accepted():
    assert parse_event(ev(item_id="not-in-any-model"), SETTINGS, NOW).item_id == "not-in-any-model"


@pytest.mark.parametrize("body", [
    ev(), [ev()], {"events": [ev()]},
])
def test_batch_body_shapes(body):
    batch = parse_batch(json.dumps(body).encode(), SETTINGS, NOW)
    assert [e.event_id for e in batch.events] == ["e1"]
    assert batch.single is (isinstance(body, dict) and "events" not in body)


def test_mixed_batch_keeps_good_events_and_names_bad_ones():
    body = [ev(event_id="a"), ev(event_id="b", type="zap"), ev(event_id="c"), {"nope": 1}]
    batch = parse_batch(json.dumps(body).encode(), SETTINGS, NOW)
    assert [e.event_id for e in batch.events] == ["a", "c"]
    assert batch.positions == [0, 2]
    assert batch.rejected == [
        {"index": 1, "error": {"field": "type", "message": batch.rejected[0]["error"]["message"]}},
        {"index": 3, "error": {"field": "nope", "message": "unknown field"}},
    ]


def test_batch_over_the_limit_is_rejected_before_validation():
    s = load_settings(environ={}, limits={"max_events_batch": 3})
    with pytest.raises(RequestError) as info:
        parse_batch(json.dumps([{}] * 4).encode(), s, NOW)
    assert (info.value.field, info.value.status) == ("events", 422)


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"42", b'"x"', b"null"])
def test_non_json_or_scalar_body_is_400(raw):
    with pytest.raises(RequestError) as info:
        parse_batch(raw, SETTINGS, NOW)
    assert info.value.status == 400


def test_nan_literal_value_is_rejected():
    batch = parse_batch(b'[{"event_id":"a","user_id":"u","item_id":"i","type":"view",'
                        b'"value":NaN}]', SETTINGS, NOW)
    assert batch.rejected[0]["error"]["field"] == "value"


def test_log_encoding_round_trips():
    e = parse_event(ev(value=2.5, request_id="r", context={"p": 1}), SETTINGS, NOW)
    assert Event.from_json(json.loads(json.dumps(e.to_json()))) == e


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["event_id", "user_id", "item_id", "type", "value",
                                        "timestamp", "request_id", "context", "x"]),
                       json_values, max_size=8))
def test_parser_only_raises_request_errors_naming_a_field(obj):
    try:
        e = parse_event(obj, SETTINGS, NOW)
    except RequestError as exc:
        assert exc.field and exc.status == 422
    else:
        assert e.value is None or math.isfinite(e.value)


E = b'"event_id":"%s","user_id":"u","item_id":"i"'


def test_an_event_that_gives_a_key_twice_is_refused_and_the_others_stored():
    # {"type": "view", "type": "purchase"} must not silently be a purchase
    batch = parse_batch(b'[{' + E % b"a" + b',"type":"view","type":"purchase"},'
                        b'{' + E % b"b" + b',"type":"view"},'
                        b'{' + E % b"c" + b',"type":"view","context":{"p":1,"p":2}}]',
                        SETTINGS, NOW)
    assert [e.event_id for e in batch.events] == ["b"]
    errors = {r["index"]: r["error"] for r in batch.rejected}
    assert errors[0] == {"field": "type", "message": "must be given once"}
    assert errors[2]["field"] == "context" and "'p'" not in errors[2]["message"]
    assert "p must be given once" in errors[2]["message"]


def test_a_body_that_gives_its_events_twice_is_422():
    with pytest.raises(RequestError) as exc:
        parse_batch(b'{"events":[],"events":[{' + E % b"a" + b',"type":"view"}]}', SETTINGS,
                    NOW)
    assert exc.value.field == "events" and exc.value.status == 422


def test_an_events_body_that_is_not_utf8_json_is_400_or_names_the_field():
    utf16 = ('[{"event_id":"a","user_id":"u","item_id":"i","type":"view"}]'
             ).encode("utf-16")
    with pytest.raises(RequestError) as exc:
        parse_batch(utf16, SETTINGS, NOW)
    assert exc.value.status == 400 and exc.value.field == "body"
    batch = parse_batch(b'[{"event_id":"a","user_id":"u\xff","item_id":"i","type":"view"}]',
                        SETTINGS, NOW)
    assert not batch.events and batch.rejected[0]["error"]["field"] == "user_id"
