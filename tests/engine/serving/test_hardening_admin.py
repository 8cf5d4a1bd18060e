"""Admin and documentation routes (#18): GET /experiments, one route per path (Allow), /docs."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from rankly.engine.serving.app import create_app

from ..conftest import make_settings

TOKEN = "admin-docs-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
EXPERIMENT = {"status": "running", "variants": [{"name": "control"},
                                                {"name": "pop", "scorers": ["popular"]}]}


@pytest.fixture
def api(artifacts):
    with TestClient(create_app(make_settings(artifacts, admin_token=TOKEN))) as c:
        yield c


def test_get_experiments_lists_every_experiment_in_order(api):
    assert api.get("/experiments", headers=ADMIN).json() == {"experiments": []}
    for key in ("b-test", "a-test"):
        assert api.put(f"/experiments/{key}", json=EXPERIMENT, headers=ADMIN).status_code == 201
    api.post("/experiments/b-test/stop", headers=ADMIN)
    listed = api.get("/experiments", headers=ADMIN).json()["experiments"]
    assert [(e["key"], e["status"]) for e in listed] == [("b-test", "stopped"),
                                                         ("a-test", "running")]
    assert listed[1] == api.get("/experiments/a-test", headers=ADMIN).json()


def test_get_experiments_needs_the_admin_token(api):
    assert api.get("/experiments").status_code == 401
    assert api.get("/experiments", headers={"X-API-Key": "wrong"}).status_code == 403


def test_allow_names_every_method_of_a_path(api):
    r = api.request("OPTIONS", "/experiments/x", headers=ADMIN)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "PUT"}
    r = api.delete("/recommendations")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}


def test_cross_field_conflicts_in_an_experiment_are_409(api):
    dup = {"variants": [{"name": "a"}, {"name": "a"}]}
    zero = {"variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}
    empty_range = {**EXPERIMENT, "layer": {"name": "l", "range": [0.5, 0.5]}}
    for body in (dup, zero, empty_range, {**EXPERIMENT, "key": "other"}):
        r = api.put("/experiments/c", json=body, headers=ADMIN)
        assert r.status_code == 409, (body, r.text)
    r = api.put("/experiments/c", json={"variants": [{"name": "a"}]}, headers=ADMIN)
    assert r.status_code == 422


def test_option_values_must_have_their_defaults_json_type(api):
    body = {"variants": [{"name": "a"}, {"name": "b", "options": {"diversity": {"cap": "3"}}}]}
    r = api.put("/experiments/typed", json=body, headers=ADMIN)
    assert r.status_code == 422 and "cap" in r.json()["error"]["message"]
    body["variants"][1]["options"]["diversity"]["cap"] = 3
    assert api.put("/experiments/typed", json=body, headers=ADMIN).status_code == 201


def test_a_string_option_takes_a_json_string_as_the_schema_says(api):
    # the plugins check a string default's type: the schema allowed any value, and a
    # schema-valid {} was refused with 422
    props = api.get("/openapi.json").json()["components"]["schemas"]["ExperimentDefinition"][
        "properties"]["variants"]["items"]["properties"]["options"]["properties"]
    assert props["itemknn"]["properties"]["validation"]["type"] == "string"
    for value in ({}, 3, None):
        body = {"variants": [{"name": "a"},
                             {"name": "b", "options": {"itemknn": {"validation": value}}}]}
        r = api.put("/experiments/str-opt", json=body, headers=ADMIN)
        assert r.status_code == 422 and "validation" in r.json()["error"]["message"], r.text
    body["variants"][1]["options"]["itemknn"]["validation"] = "robust"
    assert api.put("/experiments/str-opt", json=body, headers=ADMIN).status_code == 201


def test_a_list_option_takes_a_json_array_of_its_items_type(api):
    # a string for a list default is parsed as a comma list by the plugins: the schema
    # allowed any value, and a schema-valid "8x" was refused with 422
    props = api.get("/openapi.json").json()["components"]["schemas"]["ExperimentDefinition"][
        "properties"]["variants"]["items"]["properties"]["options"]["properties"]
    assert props["itemknn"]["properties"]["neighbour_grid"]["type"] == "array"
    assert props["itemknn"]["properties"]["neighbour_grid"]["items"] == {"type": "integer"}
    for value in ("25,50", "8x", [True], [2.5], {}):
        body = {"variants": [{"name": "a"},
                             {"name": "b", "options": {"itemknn": {"neighbour_grid": value}}}]}
        r = api.put("/experiments/list-opt", json=body, headers=ADMIN)
        assert r.status_code == 422 and "neighbour_grid" in r.json()["error"]["message"], r.text
    body["variants"][1]["options"]["itemknn"]["neighbour_grid"] = [25, 50]
    assert api.put("/experiments/list-opt", json=body, headers=ADMIN).status_code == 201


def test_replacing_an_experiment_with_other_variants_starts_a_new_phase(api):
    assert api.put("/experiments/p", json=EXPERIMENT, headers=ADMIN).status_code == 201
    other = {"variants": [{"name": "x"}, {"name": "y"}, {"name": "z"}]}
    r = api.put("/experiments/p", json=other, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["phase"] == 1 and [v["name"] for v in r.json()["variants"]] == ["x", "y", "z"]


def test_docs_page_and_its_assets_are_served_by_rankly(api):
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for src in ("/dashboard/static/docs.js", "/dashboard/static/docs.css"):
        assert src in page.text
        assert api.get(src).status_code == 200
    assert "/openapi.json" in api.get("/dashboard/static/docs.js").text


@pytest.mark.parametrize("body", [
    '{"status": "running", "variants": [{"name": "\\ud800"}, {"name": "b"}]}',
    '{"seed": "\\udfff", "variants": [{"name": "a"}, {"name": "b"}]}',
    '{"layer": {"name": "\\ud800", "range": [0, 0.5]}, "variants": [{"name": "a"}, '
    '{"name": "b"}]}',
])
def test_a_lone_surrogate_in_an_experiment_is_422_and_nothing_is_stored(api, body):
    r = api.put("/experiments/s", content=body,
                headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] in ("variants[0].name", "seed", "layer.name")
    assert api.get("/experiments", headers=ADMIN).json() == {"experiments": []}
    for user in range(4):
        assert api.get(f"/recommendations?user_id={user}").status_code == 200
    assert api.get("/metrics").status_code == 200
