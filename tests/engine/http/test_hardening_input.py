"""Input strictness (#18): ids are UTF-8 text, scalars are given once, bodies are JSON and
every field takes exactly the type the OpenAPI schema gives it; each refusal is a JSON 4xx
that names the field."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from rankly.engine.serving.app import create_app

from ..conftest import make_settings

TOKEN = "input-admin-token-0123456789"
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api(artifacts):
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        yield c


def refused(r, status: int, field: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["field"] == field, r.json()


@pytest.mark.parametrize("raw", ["%FF%FE", "%FE%FF", "%ED%A0%80", "ok%C3", "%80abc"])
def test_invalid_utf8_in_a_query_id_is_422_naming_it(api, raw):
    refused(api.get(f"/recommendations?user_id={raw}"), 422, "user_id")
    refused(api.get(f"/recommendations?user_id=1&exclude=2&exclude={raw}"), 422, "exclude")
    refused(api.post(f"/track/click?user_id=1&item_id={raw}"), 422, "item_id")


def test_two_invalid_byte_sequences_are_not_one_user(api):
    # before #18 both were served to the user "\ufffd\ufffd"
    assert api.get("/recommendations?user_id=%FF%FE").status_code == 422
    assert api.get("/recommendations?user_id=%FE%FF").status_code == 422


def test_a_replacement_character_written_properly_is_an_ordinary_id(api):
    r = api.get("/recommendations?user_id=%EF%BF%BD")  # U+FFFD, valid UTF-8
    assert r.status_code == 200 and r.json()["user_id"] == "\ufffd"


@pytest.mark.parametrize("raw", ["%FF%FE", "%ED%A0%80"])
def test_invalid_utf8_in_a_path_id_is_422_naming_it(api, raw):
    refused(api.get(f"/items/{raw}/similar"), 422, "item_id")
    refused(api.get(f"/experiments/{raw}", headers={"X-API-Key": TOKEN}), 422, "key")


def test_a_lone_surrogate_in_a_json_id_is_422(api):
    body = b'{"user_id": "\\ud800"}'
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 422, "user_id")
    event = (b'{"event_id": "e", "user_id": "1", "item_id": "\\udfff", "type": "click"}')
    refused(api.post("/events", content=event, headers=JSON_HEADERS), 422, "item_id")


def test_an_unknown_field_named_with_a_lone_surrogate_is_422_not_500(api):
    body = b'{"user_id": "1", "\\ud800": 1}'
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 422, "body")
    event = b'{"event_id": "sk", "user_id": "1", "item_id": "2", "type": "click", "\\udfff": 1}'
    refused(api.post("/events", content=event, headers=JSON_HEADERS), 422, "event")
    r = api.post("/events", content=b"[" + event + b"]", headers=JSON_HEADERS)
    assert r.status_code == 202, r.text
    assert r.json()["rejected"] == [{"index": 0, "error": {"field": "event",
                                                          "message": "unknown field"}}]


@pytest.mark.parametrize(("body", "field"), [
    (b'{"user_id": "1", "user_id": "2"}', "user_id"),
    (b'{"user_id": "1", "context": {"a": 1, "a": 2}}', "a"),
    (b'{"user_id": "1", "\\ud800": 1, "\\ud800": 2}', "body"),
])
def test_a_key_given_twice_in_a_json_body_is_422(api, body, field):
    # as a repeated query parameter: {"user_id": "1", "user_id": "2"} served user 2
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 422, field)
    experiment = b'{"variants": [{"name": "a"}, {"name": "b"}], "status": "running", ' \
                 b'"status": "draft"}'
    refused(api.put("/experiments/twice", content=experiment,
                    headers={**JSON_HEADERS, "X-API-Key": TOKEN}), 422, "status")


@pytest.mark.parametrize("body", [b'{"user_id": "1", "n": NaN}',
                                  b'{"user_id": "1", "context": {"a": -Infinity}}',
                                  '{"user_id": "1"}'.encode("utf-16")])
def test_a_body_that_is_not_strict_utf8_json_is_400(api, body):
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 400, "body")


@pytest.mark.parametrize(("body", "field"), [(b'{"user_id": "\xff\xfe"}', "user_id"),
                                             (b'{"user_id": "\xed\xa0\x80"}', "user_id"),
                                             (b'{"session_items": ["1", "\xc3"]}',
                                              "session_items[1]")])
def test_bytes_that_are_not_utf8_in_a_json_id_are_422_naming_it(api, body, field):
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 422, field)


def test_a_byte_order_mark_before_a_json_body_is_skipped(api):
    r = api.post("/recommendations", content=b'\xef\xbb\xbf{"user_id": "1"}',
                 headers=JSON_HEADERS)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("query", "field"), [
    ("user_id=1&user_id=2", "user_id"), ("user_id=1&n=5&n=7", "n"),
    ("user_id=1&request_id=a&request_id=b", "request_id"),
])
def test_a_repeated_scalar_query_parameter_is_422(api, query, field):
    refused(api.get(f"/recommendations?{query}"), 422, field)


def test_repeated_scalars_elsewhere_are_422_too(api):
    refused(api.get("/items/1/similar?n=2&n=3"), 422, "n")
    refused(api.post("/track/click?user_id=1&item_id=2&item_id=3"), 422, "item_id")


def test_list_parameters_may_repeat(api):
    r = api.get("/recommendations?user_id=1&exclude=2&exclude=3&category=c&category=d")
    assert r.status_code == 200


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_body_that_is_not_json_is_415(api, ctype):
    headers = {} if ctype is None else {"content-type": ctype}
    body = json.dumps({"user_id": "1"}).encode()
    refused(api.post("/recommendations", content=body, headers=headers), 415, "content-type")
    event = json.dumps({"event_id": "e", "user_id": "1", "item_id": "2", "type": "click"})
    refused(api.post("/events", content=event.encode(), headers=headers), 415, "content-type")
    refused(api.put("/experiments/x", content=b"{}", headers={**headers, "X-API-Key": TOKEN}),
            415, "content-type")


def test_json_with_a_charset_parameter_is_accepted(api):
    r = api.post("/recommendations", content=b'{"user_id": "1"}',
                 headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200


@pytest.mark.parametrize("ctype", ["application/json; charset=latin-1",
                                   "application/json;charset=ISO-8859-1",
                                   'application/json; charset="utf-16"'])
def test_json_in_a_charset_other_than_utf8_is_415(api, ctype):
    headers = {"content-type": ctype}
    refused(api.post("/recommendations", content=b'{"user_id": "1"}', headers=headers), 415,
            "content-type")
    event = b'{"event_id": "e", "user_id": "1", "item_id": "2", "type": "click"}'
    refused(api.post("/events", content=event, headers=headers), 415, "content-type")
    for charset in ("UTF-8", '"utf-8"', "utf8"):
        r = api.post("/recommendations", content=b'{"user_id": "1"}',
                     headers={"content-type": f"application/json; charset={charset}"})
        assert r.status_code == 200, (charset, r.text)


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": "1", "n": "5"}, "n"),
    ({"user_id": "1", "n": 5.0}, "n"),
    ({"user_id": "1", "n": None}, "n"),
    ({"user_id": 1}, "user_id"),
    ({"user_id": None, "session_items": ["1"]}, "user_id"),
    ({"user_id": "1", "exclude": [1055]}, "exclude[0]"),
    ({"user_id": "1", "exclude": None}, "exclude"),
    ({"user_id": "1", "categories": [3]}, "categories[0]"),
    ({"session_items": [1, 2]}, "session_items[0]"),
    ({"session_items": []}, "user_id"),
    ({"user_id": "1", "request_id": 5}, "request_id"),
    ({"user_id": "1", "request_id": None}, "request_id"),
    ({"user_id": "1", "request_id": ""}, "request_id"),
    ({"user_id": "1", "context": "x"}, "context"),
    ({"user_id": "1", "context": None}, "context"),
    ({"user_id": "1", "context": [1]}, "context"),
])
def test_recommendation_body_fields_take_exactly_their_schema_type(api, body, field):
    r = api.post("/recommendations", content=json.dumps(body).encode(), headers=JSON_HEADERS)
    refused(r, 422, field)


@pytest.mark.parametrize("context", [
    b'{"a": 1180591620717411303424}', b'{"a": "\\ud800"}', b'{"\\udfff": 1}',
    b'{"a": {"b": 1}}', b'{"a": [1]}', b'{"a": null}',
    b'{"a": "' + b"x" * 257 + b'"}',
    b"{" + b",".join(b'"k%d": 1' % i for i in range(17)) + b"}",
    b'{"' + b"k" * 257 + b'": 1}',
])
def test_a_recommendation_context_follows_the_event_context_rules(api, context):
    # it is logged with each impression of the answer: a value the log cannot encode was a
    # 200 that lost the impressions of every slate logged in the same batch
    body = b'{"user_id": "1", "context": ' + context + b"}"
    refused(api.post("/recommendations", content=body, headers=JSON_HEADERS), 422, "context")


def test_a_recommendation_context_in_the_schema_is_the_event_context(api):
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    context = schemas["RecommendationRequest"]["properties"]["context"]
    assert context == schemas["Event"]["properties"]["context"]
    assert "keys of at most 256 characters" in context["description"]
    body = {"user_id": "1", "context": {"page": "home", "slot": 3, "ab": True, "x": 1.5,
                                        "k" * 256: "longest key", "": "empty key"}}
    assert api.post("/recommendations", json=body).status_code == 200


@pytest.mark.parametrize(("change", "field"), [
    ({"context": None}, "context"), ({"context": "x"}, "context"), ({"context": [1]}, "context"),
    ({"request_id": 7}, "request_id"), ({"request_id": None}, "request_id"),
    ({"user_id": 1}, "user_id"), ({"item_id": 2}, "item_id"), ({"event_id": 3}, "event_id"),
    ({"event_id": "a\x85b"}, "event_id"), ({"value": None}, "value"),
    ({"timestamp": None}, "timestamp"),
])
def test_event_fields_take_exactly_their_schema_type(api, change, field):
    event = {"event_id": "typed", "user_id": "1", "item_id": "2", "type": "click", **change}
    refused(api.post("/events", json=event), 422, field)


def test_ids_allow_any_text_but_controls(api):
    # what the OpenAPI pattern allows is accepted: no-break space, a format character, emoji
    for user in ("a\u00a0b", "zero\u200bwidth", "\U0001f600", "line\u2028sep"):
        r = api.get("/recommendations", params={"user_id": user})
        assert r.status_code == 200, (user, r.text)
        assert r.json()["user_id"] == user
    for user in ("a\x00", "a\x1f", "a\x7f", "a\x85", "a\x9f"):
        refused(api.get("/recommendations", params={"user_id": user}), 422, "user_id")


def test_track_click_timestamp_is_in_the_schema_as_in_an_event_body(api):
    doc = api.get("/openapi.json").json()
    params = {p["name"]: p for p in doc["paths"]["/track/click"]["post"]["parameters"]}
    event = doc["components"]["schemas"]["Event"]["properties"]["timestamp"]
    assert params["timestamp"]["required"] is False
    assert params["timestamp"]["schema"] == event


@pytest.mark.parametrize("value", ["1700000000", "1700000000.25", "1.7e9",
                                   "2021-03-04T05:06:07Z", "2021-03-04T05:06:07.5Z"])
def test_track_click_takes_a_timestamp_the_schema_allows(api, value):
    r = api.post("/track/click", params={"user_id": "1", "item_id": "2", "timestamp": value})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("value", ["1_700_000_000", " 1700000000", "nan", "inf", "1e999",
                                   "0", "946684799", "1999-12-31T23:59:59Z", "tomorrow",
                                   "4102444800"])
def test_track_click_refuses_a_timestamp_outside_the_schema(api, value):
    refused(api.post("/track/click", params={"user_id": "1", "item_id": "2",
                                             "timestamp": value}), 422, "timestamp")
