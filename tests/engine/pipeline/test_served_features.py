"""Point-in-time logging: each impression carries the ranker's inputs as the pipeline had them."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from rankly.engine import pipeline
from rankly.engine.feedback.ltr_features import category_features
from rankly.engine.model import load_model
from rankly.engine.offline.batch import serving_runtime
from rankly.engine.pipeline.served import (
    FEATURE_FIELDS,
    ITEM_FIELDS,
    SLATE_FIELDS,
    impression_fields,
    logged_features,
)
from rankly.engine.serving.app import create_app
from rankly.engine.types import RecommendationRequest, UserFeatures


def _impressions(settings) -> list[dict]:
    path = settings.data_dir / "events" / "events.jsonl"
    return [d for d in map(json.loads, path.read_text().splitlines()) if d["t"] == "impression"]


def _serve(settings, *params: dict) -> list[dict]:
    with TestClient(create_app(settings)) as client:
        for p in params:
            assert client.get("/recommendations", params=p).status_code == 200
    return _impressions(settings)


def _selected(settings, model, user_id: str, n: int):
    """The pipeline's own selection for a trained user: its trace and the user."""
    rt = serving_runtime(model, settings)
    row = model.users.row(user_id)
    history = model.users.history(row)
    user = UserFeatures(user_id, row, history, np.sort(history))
    trace = pipeline.Trace()
    ranking = pipeline.select(rt, rt.components, RecommendationRequest(user_id, n),
                              pipeline.default_plan(rt), user, trace)
    return ranking, trace, user


def test_served_impressions_log_the_pipelines_inputs(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": []})
    imps = _serve(settings, {"user_id": "8", "n": 10})
    model = load_model(artifacts)
    ranking, trace, user = _selected(settings, model, "8", 10)
    served = model.catalog.lookup([d["i"] for d in imps])
    assert served.tolist() == ranking.items.tolist()
    pool = trace.pool.items.tolist()
    affinity, recency, same = category_features(user.history, served,
                                                np.asarray(model.catalog.categories))
    pop = np.asarray(model.part("pop")["scores"])
    for k, (d, item) in enumerate(zip(imps, served.tolist(), strict=True)):
        assert d["c"]["history_length"] == user.history.size
        assert d["c"]["scorer"] == trace.scorer == "blend"
        assert "sources" not in d["c"]  # the fused path: the scorer is the only source
        assert set(d["c"]) >= {"position", "propensity", "model_version", *SLATE_FIELDS}
        c = logged_features(d["c"])
        assert c["rank"] == pool.index(item)
        assert c["score"] == pytest.approx(float(trace.pool.scores[pool.index(item)]), abs=1e-6)
        assert c["popularity"] == pytest.approx(float(pop[item]), abs=1e-6)
        assert c["category_affinity"] == pytest.approx(affinity[k], abs=1e-6)
        assert c["category_recency"] == pytest.approx(recency[k], abs=1e-6)
        assert c["same_category_as_last"] == bool(same[k])
        assert c["trending"] == c["category_trending"] == 0.0  # no events yet


def test_the_general_path_logs_each_generators_rank(artifacts, settings_for, tmp_path):
    chain = {"candidates": ["itemknn", "popular"], "scorers": ["ease"]}
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": []}, pipeline=chain)
    imps = _serve(settings, {"user_id": "8", "n": 10})
    model = load_model(artifacts)
    _, trace, _ = _selected(settings, model, "8", 10)
    lists = {name: items.tolist() for name, items in trace.sources}
    assert set(lists) == {"itemknn", "popular"}
    pool = trace.pool.items.tolist()
    for d in imps:
        item = int(model.catalog.lookup([d["i"]])[0])
        want = {name: listed.index(item) for name, listed in lists.items() if item in listed}
        assert d["c"]["sources"] == want and want
        assert d["c"]["scorer"] == "ease"
        assert logged_features(d["c"])["rank"] == pool.index(item)


def test_source_detail_and_features_can_be_switched_off(artifacts, settings_for, tmp_path):
    chain = {"candidates": ["itemknn", "popular"], "scorers": ["ease"]}
    quiet = settings_for(artifacts, data_dir=tmp_path / "a", cache={"tiers": []},
                         pipeline=chain, impressions={"sources": False})
    imps = _serve(quiet, {"user_id": "8", "n": 5})
    assert all("sources" not in d["c"] and "features" in d["c"] for d in imps)
    off = settings_for(artifacts, data_dir=tmp_path / "b", cache={"tiers": []},
                       impressions={"features": False})
    imps = _serve(off, {"user_id": "8", "n": 5})
    fields = set(ITEM_FIELDS) | set(SLATE_FIELDS)
    assert len(imps) == 5 and all(not fields & set(d["c"]) for d in imps)


def test_a_cached_slate_logs_the_features_of_its_computation(artifacts, settings_for,
                                                             tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": ["l1"]})
    imps = _serve(settings, {"user_id": "8", "n": 6}, {"user_id": "8", "n": 6})
    first, second = imps[:6], imps[6:]
    assert [d["c"]["cached"] for d in (first[0], second[0])] == [False, True]
    drop = {"cached"}
    assert ([{k: v for k, v in d["c"].items() if k not in drop} for d in second]
            == [{k: v for k, v in d["c"].items() if k not in drop} for d in first])


def _contexts(settings) -> list[bytes]:
    """Each impression line's context as written (the request's own fields are outside it)."""
    path = settings.data_dir / "events" / "events.jsonl"
    return [line[line.index(b',"c":{'):line.rindex(b',"at":')]
            for line in path.read_bytes().splitlines() if b'"t":"impression"' in line]


@pytest.mark.parametrize("chain", [None, {"candidates": ["itemknn", "popular"],
                                          "scorers": ["ease"]}], ids=["fused", "general"])
def test_a_cache_hit_logs_the_bytes_of_the_computed_slate(artifacts, settings_for, tmp_path,
                                                           chain):
    """A hit splices its entry's pre-encoded fields: its lines' contexts are the computed
    answer's, byte for byte, but for ``cached``."""
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": ["l1"]},
                            **({"pipeline": chain} if chain else {}))
    queries = [{"user_id": "8", "n": 6}, {"user_id": "never-seen", "n": 4},
               {"user_id": "21", "n": 5}]
    with TestClient(create_app(settings)) as client:
        for q in queries:
            assert [client.get("/recommendations", params=q).json()["cached"]
                    for _ in range(3)] == [False, True, True]
    logged = _contexts(settings)
    assert len(logged) == 3 * (6 + 4 + 5) and b'"features":[' in logged[0]
    if chain:
        assert b'"sources":{' in logged[0]
    start = 0
    for q in queries:
        computed, *hits = (logged[start + k * q["n"]:start + (k + 1) * q["n"]] for k in range(3))
        start += 3 * q["n"]
        assert all(b'"cached":false' in c for c in computed)
        for hit in hits:
            assert [c.replace(b'"cached":true', b'"cached":false') for c in hit] == computed


def test_an_explored_cache_hit_logs_each_items_computed_fields(artifacts, settings_for,
                                                                 tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": ["l1"]},
                            exploration={"rate": 1.0, "top_m": 6})
    imps = _serve(settings, *[{"user_id": "8", "n": 6}] * 4)
    computed = {d["i"]: d["c"] for d in imps[:6]}
    assert not imps[0]["c"]["cached"] and all(d["c"]["cached"] for d in imps[6:])
    for d in imps[6:]:
        want = computed[d["i"]]
        assert [k for k in d["c"] if k not in ("position", "propensity", "base_position")] == \
            [k for k in want if k not in ("position", "propensity", "base_position")]
        for field in (*ITEM_FIELDS, *SLATE_FIELDS, "model_version"):
            assert d["c"].get(field) == want.get(field)


def _captured(rt, user_id: str, n: int):
    plan = pipeline.default_plan(rt)
    req = RecommendationRequest(user_id, n, request_id="r1")
    out = asyncio.run(pipeline.rank(rt, req, plan, features=True))
    return out[pipeline.FEATURES_FIELD], [item["item_id"] for item in out["items"]]


@pytest.mark.parametrize("chain", [None, {"candidates": ["itemknn", "popular"],
                                          "scorers": ["ease"]}], ids=["fused", "general"])
def test_a_record_from_any_tier_logs_what_its_capture_logs(artifacts, settings_for, chain):
    """The record a tier keeps, read back from JSON (an L2 hit), or as an older release
    cached it (each item's fields a dict), gives every position the capture's bytes, in any
    order (an explored slate), and nothing for an item it does not know."""
    settings = settings_for(artifacts, cache={"tiers": []}, **({"pipeline": chain} if chain
                                                              else {}))
    captured, shown = _captured(serving_runtime(load_model(artifacts), settings), "8", 6)
    from_l2 = json.loads(json.dumps(captured.record()))
    older = {"slate": from_l2["slate"],
             "items": {item: orjson.loads("{" + fields + "}")
                       for item, fields in from_l2["items"].items()}}
    for order in (tuple(shown), tuple(reversed(shown)), (shown[2], "not-in-it", shown[0])):
        slate, want = impression_fields(captured, order)
        assert want[0] and (want[1] == b"") == ("not-in-it" in order)
        for record in (from_l2, older, from_l2):  # the last one from the memo
            assert impression_fields(record, order) == (slate, want)


def test_each_items_fields_are_encoded_as_orjson_encodes_them(artifacts, settings_for):
    chain = {"candidates": ["itemknn", "popular"], "scorers": ["ease"]}
    rt = serving_runtime(load_model(artifacts), settings_for(artifacts, pipeline=chain))
    captured, shown = _captured(rt, "8", 8)
    slate, per_item = captured.encoded()
    assert set(shown) <= set(per_item) and slate["scorer"] == "ease"
    for fields in per_item.values():
        decoded = orjson.loads(b"{" + fields[1:] + b"}")
        assert fields == b"," + orjson.dumps(decoded)[1:-1]
        assert list(decoded) in (["features"], ["features", "sources"])
        assert len(decoded["features"]) == len(FEATURE_FIELDS)
    assert any("sources" in orjson.loads(b"{" + f[1:] + b"}") for f in per_item.values())


def test_unknown_values_are_logged_as_null(artifacts):
    """No pool (no rank, no score) and no live counters: those fields are null, not NaN."""
    from rankly.engine.pipeline.served import capture

    model = load_model(artifacts)
    items = np.arange(4, dtype=np.int32)
    captured = capture(model, np.array([5, 6], dtype=np.int32), items, None, None, (), None,
                       True)
    slate, per_item = captured.encoded()
    assert slate == {"history_length": 2}
    for fields in per_item.values():
        assert b"NaN" not in fields
        logged = logged_features(orjson.loads(b"{" + fields[1:] + b"}"))
        assert set(logged) == {"popularity", "category_affinity", "category_recency",
                               "same_category_as_last"}


def test_a_cold_user_logs_the_fallback_scorers_rank(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": []})
    imps = _serve(settings, {"user_id": "never-seen", "n": 5})
    model = load_model(artifacts)
    pop = np.asarray(model.part("pop")["scores"])
    ranks = [logged_features(d["c"])["rank"] for d in imps]
    assert ranks == sorted(ranks) and all(d["c"]["scorer"] == "popular" for d in imps)
    assert all(d["c"]["history_length"] == 0 for d in imps)
    served = model.catalog.lookup([d["i"] for d in imps])
    assert ([logged_features(d["c"])["popularity"] for d in imps]
            == pytest.approx(pop[served].tolist()))


def test_trending_is_logged_as_it_was_when_the_slate_was_computed(artifacts, settings_for,
                                                                  tmp_path):
    settings = settings_for(artifacts, data_dir=tmp_path, cache={"tiers": []})
    with TestClient(create_app(settings)) as client:
        first = client.get("/recommendations", params={"user_id": "8", "n": 3}).json()
        item = first["items"][0]["item_id"]
        events = [{"event_id": f"v{k}", "user_id": f"other-{k}", "item_id": item,
                   "type": "view"} for k in range(3)]
        assert client.post("/events", json=events).status_code in (200, 202)
        client.get("/recommendations", params={"user_id": "8", "n": 3})
    imps = [d for d in _impressions(settings) if d["i"] == item]
    before, after = logged_features(imps[0]["c"]), logged_features(imps[1]["c"])
    assert before["trending"] == 0.0 and after["trending"] > 0.0
    assert after["category_trending"] > 0.0


def test_requests_without_an_id_capture_nothing(artifacts, settings_for):
    """Similar-item and batch requests log no impressions: no capture, no cached record."""
    import asyncio

    model = load_model(artifacts)
    rt = serving_runtime(model, settings_for(artifacts))
    plan = pipeline.default_plan(rt)

    async def both() -> list[dict]:
        return [await pipeline.rank(rt, RecommendationRequest("8", 5, request_id=rid), plan,
                                    features=True) for rid in ("", "r1")]

    anonymous, logged = asyncio.run(both())
    assert pipeline.FEATURES_FIELD not in anonymous
    assert logged[pipeline.FEATURES_FIELD].record()["slate"]["scorer"] == "blend"
