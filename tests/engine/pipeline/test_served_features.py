"""Point-in-time logging: each impression carries the ranker's inputs as the pipeline had them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from rankly.engine import pipeline
from rankly.engine.feedback.ltr_features import category_features
from rankly.engine.model import load_model
from rankly.engine.offline.batch import serving_runtime
from rankly.engine.pipeline.served import ITEM_FIELDS, SLATE_FIELDS, logged_features
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
