"""/metrics after real requests: counts, histograms, quality gauges, and bounded label sets."""

from __future__ import annotations

import asyncio
import itertools
import tempfile

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from rankly.engine import metrics
from rankly.engine.config import Deadlines, load_settings
from rankly.engine.serving.app import create_app

_fresh_users = (f"metrics-user-{i}" for i in itertools.count())


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _app(artifacts):
    """An app whose deadlines a slow CI machine never hits."""
    settings = load_settings(environ={}, artifacts=artifacts,
                             data_dir=tempfile.mkdtemp(prefix="rankly-metrics-"))
    settings = settings.replace(deadlines=Deadlines(request_ms=30_000, stage_ms=30_000))
    return TestClient(create_app(settings))


@pytest.fixture
def app_client(artifacts):
    """A fresh app: its own quality window and caches."""
    with _app(artifacts) as c:
        yield c


@pytest.fixture(scope="module")
def client(artifacts):
    """One app for the tests that only look at counter deltas (starting apps is slow)."""
    with _app(artifacts) as c:
        yield c


def test_requests_are_counted_by_route_template_and_status(client):
    ok = value("rankly_http_requests_total", route="/recommendations", status="200")
    bad = value("rankly_http_requests_total", route="/recommendations", status="422")
    seconds = value("rankly_http_request_duration_seconds_count", route="/recommendations")
    for user in range(1, 8):
        assert client.get(f"/recommendations?user_id={user}&n=4").status_code == 200
    assert client.get("/recommendations?n=0").status_code == 422
    assert value("rankly_http_requests_total", route="/recommendations", status="200") == ok + 7
    assert value("rankly_http_requests_total", route="/recommendations", status="422") == bad + 1
    assert value("rankly_http_request_duration_seconds_count",
                 route="/recommendations") == seconds + 8


def test_every_computed_answer_times_its_stages(client):
    def counts() -> tuple[float, float]:
        # the selection is timed as "fused" (one catalog scorer) or as "filter" (the chain)
        selected = sum(value("rankly_stage_duration_seconds_count", stage=s, component=c)
                       for s, c in (("filter", "builtin"), ("fused", "blend")))
        return value("rankly_stage_duration_seconds_count", stage="features",
                     component="memory"), selected

    features, selected = counts()
    for _ in range(5):
        user = str(np.random.default_rng().integers(1, 300))
        client.get(f"/recommendations?user_id={user}&n=3&exclude={next(_fresh_users)}")
    assert counts() == (features + 5, selected + 5)


def test_latency_buckets_resolve_half_a_millisecond_to_one_second():
    assert metrics.LATENCY_BUCKETS[0] == 0.0005 and metrics.LATENCY_BUCKETS[-1] == 1.0
    ratios = np.diff(np.log(metrics.LATENCY_BUCKETS))
    assert ratios.max() <= np.log(2) + 1e-9  # no bucket wider than a factor of two


def test_cache_lookups_count_a_miss_then_a_hit_in_l1(client):
    miss = value("rankly_cache_lookups_total", tier="l1", result="miss")
    hit = value("rankly_cache_lookups_total", tier="l1", result="hit")
    url = f"/recommendations?user_id=5&n=6&exclude={next(_fresh_users)}"
    assert client.get(url).json()["cached"] is False
    assert client.get(url).json()["cached"] is True
    assert value("rankly_cache_lookups_total", tier="l1", result="miss") == miss + 1
    assert value("rankly_cache_lookups_total", tier="l1", result="hit") == hit + 1


def test_cold_start_answers_count_as_fallbacks_by_reason(client):
    before = value("rankly_fallbacks_total", reason="cold_start")
    for _ in range(3):
        assert client.get(f"/recommendations?user_id={next(_fresh_users)}").json()["fallback"] \
            == "cold_start"
    assert value("rankly_fallbacks_total", reason="cold_start") == before + 3


def test_quality_gauges_describe_the_served_slates(app_client, model):
    served, slates, cold = set(), [], 0
    for user in [*map(str, range(1, 21)), "nobody-1", "nobody-2"]:
        body = app_client.get(f"/recommendations?user_id={user}&n=5").json()
        idx = model.catalog.lookup([i["item_id"] for i in body["items"]])
        served.update(idx.tolist())
        slates.append(idx)
        cold += body["fallback"] == "cold_start"
    app_client.get("/metrics")
    assert value("rankly_quality_window_slates") == 22
    assert value("rankly_quality_catalog_coverage") == pytest.approx(
        len(served) / len(model.catalog))
    assert value("rankly_quality_cold_start_share") == pytest.approx(cold / 22)
    cats = model.catalog.categories
    ild = []
    for s in slates:
        c = cats[s]
        same = sum(int(a == b and a >= 0) for a, b in itertools.combinations(c, 2))
        ild.append(1 - same / (len(s) * (len(s) - 1) / 2))
    assert value("rankly_quality_intra_list_diversity") == pytest.approx(np.mean(ild))
    pop = np.asarray(model.part("pop")["scores"], dtype=np.float64)
    items = np.concatenate(slates)
    assert value("rankly_quality_popularity") == pytest.approx(
        np.mean(pop[items] / pop.mean()))


def test_feedback_experiment_and_quality_metrics_are_exposed(client):
    text = client.get("/metrics").text
    for name, kind in (("rankly_events_total", "counter"), ("rankly_exposures_total", "counter"),
                       ("rankly_clicks_total", "counter"),
                       ("rankly_conversions_total", "counter"),
                       ("rankly_experiment_srm_p_value", "gauge"),
                       ("rankly_quality_catalog_coverage", "gauge"),
                       ("rankly_quality_intra_list_diversity", "gauge"),
                       ("rankly_quality_novelty_bits", "gauge"),
                       ("rankly_quality_cold_start_share", "gauge"),
                       ("rankly_model_info", "gauge")):
        assert f"# TYPE {name} {kind}" in text, name


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


@pytest.mark.slow
def test_series_do_not_grow_with_distinct_users(app_client):
    async def drive(users: range) -> None:
        async def app(scope, receive, send):  # the TestClient's lifespan state, no thread hop
            scope["state"] = dict(app_client.app_state)
            await app_client.app(scope, receive, send)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rankly") as c:
            for u in users:
                # half known users, half unknown ones (cold start), like production traffic
                user = str(u % 300 + 1) if u % 2 else f"visitor-{u}"
                assert (await c.get(f"/recommendations?user_id={user}&n=5")).status_code == 200
        await asyncio.sleep(0)

    app_client.portal.call(drive, range(10))
    small = _series(app_client.get("/metrics").text)
    app_client.portal.call(drive, range(10, 10_010))
    large = _series(app_client.get("/metrics").text)
    assert large == small
    assert not any("visitor-" in s or "user_id" in s for s in large)


def test_histogram_quantile_interpolates_like_promql():
    from rankly.engine.serving.dashboard import histogram_quantile

    buckets = {0.001: 50.0, 0.002: 90.0, 0.004: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.0015)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.003)
    assert histogram_quantile(0.5, {0.001: 0.0, float("inf"): 4.0}) == 0.001  # in +Inf
    assert histogram_quantile(0.5, {0.001: 0.0, float("inf"): 0.0}) is None


def test_wilson_interval_matches_the_closed_form():
    from rankly.engine.serving.dashboard import wilson

    rate, low, high = wilson(50, 1000)
    assert rate == 0.05
    assert (low, high) == (pytest.approx(0.03813, abs=1e-5), pytest.approx(0.06531, abs=1e-5))
    assert wilson(0, 0) == (0.0, 0.0, 0.0)
    assert wilson(0, 10)[1] == 0.0 and wilson(10, 10)[2] == pytest.approx(1.0)


def test_dashboard_data_reports_percentiles_hit_rates_and_ctr(app_client):
    for user in ("1", "2", "1", "nobody"):
        served = app_client.get(f"/recommendations?user_id={user}&n=5").json()
    app_client.post("/events", json={"event_id": "dash-click", "user_id": "nobody",
                                     "item_id": served["items"][0]["item_id"], "type": "click",
                                     "request_id": served["request_id"]})
    d = app_client.get("/dashboard/data").json()
    s = d["series"]
    assert d["model_version"] == app_client.get("/ready").json()["model_version"]
    p = s["latency"]["request"]
    assert 0 < p["p50"][-1] <= p["p95"][-1] <= p["p99"][-1] <= 1.0
    assert {"cache", "features"} <= set(s["latency"])
    assert {"score", "fused"} & set(s["latency"])  # the chain's stages, or the fused one
    assert 0 < s["cache_hit_rate"]["l1"][-1] < 1
    # answers with a click carrying their request_id over answers served, no experiment
    # (the registry is the process's: other tests' answers count too)
    clicked = metrics.SLATES_WITH_OUTCOME.labels("click")._value.get()
    served = metrics.SLATES_SERVED._value.get()
    ctr = s["ctr"]["all recommendations"]
    rate, low, high = (ctr[k][-1] for k in ("rate", "low", "high"))
    assert clicked >= 1 and rate == pytest.approx(clicked / served) and low < rate < high
    assert s["quality"]["window_slates"][-1] == 3  # one answer came from the cache
    assert app_client.get("/dashboard").headers["content-type"].startswith("text/html")
    js = app_client.get("/dashboard/static/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text
    assert app_client.get("/dashboard/static/..%2Fapp.py").status_code == 404
