"""A/A, A/B and bandit experiments end to end through the HTTP API with simulated users.

Users are served by GET /recommendations (exposures), then click or buy through POST /events;
the results route must report exactly the injected counts and the reference statistics.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats
from starlette.testclient import TestClient

from rankly.engine.app import create_app
from rankly.engine.experiments import ArmCounts, analyze

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def experiment(key, rates_by_variant, **extra):
    return {
        "key": key, "status": "running", "primary_metric": "ctr",
        "variants": [{"name": name, "weight": 1} for name in rates_by_variant], **extra,
    }


def simulate(client, key, click_rate, users, rng, prefix):
    """Serve each user once, let them click with their variant's rate; return injected counts."""
    injected = {name: [0, 0] for name in click_rate}
    events = []
    for u in range(users):
        uid = f"{prefix}{u}"
        body = client.get("/recommendations", params={"user_id": uid, "n": 5}).json()
        assert body["experiment"] == key
        variant = body["variant"]
        injected[variant][0] += 1
        if rng.random() < click_rate[variant]:
            injected[variant][1] += 1
            item = body["items"][0]["item_id"]
            # two clicks by the same user count once; a retried event_id counts once too
            events += [{"event_id": f"{uid}-c1", "user_id": uid, "item_id": item, "type": "click"},
                       {"event_id": f"{uid}-c2", "user_id": uid, "item_id": item, "type": "click"},
                       {"event_id": f"{uid}-c1", "user_id": uid, "item_id": item, "type": "click"}]
    for start in range(0, len(events), 500):
        r = client.post("/events", json=events[start:start + 500])
        assert r.status_code == 202, r.text
    return injected


@pytest.fixture
def client_with(artifacts, settings_for, tmp_path):
    def make(experiments, **kw):
        settings = settings_for(artifacts, admin_token=TOKEN, experiments=tuple(experiments),
                                data_dir=tmp_path, **kw)
        return TestClient(create_app(settings))

    return make


@pytest.mark.parametrize(
    ("key", "rates"),
    [("aa-test", {"control": 0.2, "copy": 0.2}), ("ab-test", {"control": 0.1, "better": 0.3})],
)
def test_results_report_injected_counts_and_reference_statistics(client_with, key, rates):
    rng = np.random.default_rng(42)
    with client_with([experiment(key, rates)]) as client:
        injected = simulate(client, key, rates, users=400, rng=rng, prefix=f"{key}-user-")
        res = client.get(f"/experiments/{key}/results", headers=AUTH).json()
        scrape = client.get("/metrics").text
    gauge = re.search(rf'rankly_experiment_srm_p_value{{experiment="{key}"}} (\S+)', scrape)
    assert float(gauge.group(1)) == pytest.approx(res["srm"]["p_value"], rel=1e-9)
    arms = {a["name"]: a for a in res["arms"]}
    for name, (exposed, clicked) in injected.items():
        assert (arms[name]["exposures"], arms[name]["clicks"]) == (exposed, clicked)
    names = list(rates)
    expected = analyze([ArmCounts(n, *injected[n]) for n in names], weights=(0.5, 0.5),
                       primary_metric="ctr")
    assert res["metrics"] == expected["metrics"]
    assert res["verdict"] == expected["verdict"]
    # and independently of our stats module: the pooled two-proportion z-test
    (n0, c0), (n1, c1) = injected[names[0]], injected[names[1]]
    pooled = (c0 + c1) / (n0 + n1)
    z = (c1 / n1 - c0 / n0) / math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    got = res["metrics"]["ctr"]["comparisons"][0]["z_test"]["p_value"]
    assert got == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-9)
    srm = stats.chisquare([n0, n1], [(n0 + n1) / 2] * 2).pvalue
    assert res["srm"]["p_value"] == pytest.approx(srm, abs=1e-9)
    if key == "ab-test":
        assert res["verdict"] == "significant_win"



def test_bandit_moves_traffic_to_the_better_arm(client_with):
    rates = {"weak": 0.02, "strong": 0.4}
    rng = np.random.default_rng(7)
    with client_with([experiment("bandit", rates, bandit=True)],
                     bandit_epoch_seconds=1.0) as client:
        rt = client.app_state["runtime"]
        now = [1000.0]
        rt.tracker.clock = lambda: now[0]
        shares = []
        for epoch in range(4):
            injected = simulate(client, "bandit", rates, users=250, rng=rng,
                                prefix=f"e{epoch}-u")
            shares.append(injected["strong"][0] / 250)
            now[0] += 1.0  # next decision epoch: weights follow the live counts
        res = client.get("/experiments/bandit/results", headers=AUTH).json()
    assert shares[0] == pytest.approx(0.5, abs=0.1)  # warm-up: configured equal weights
    assert shares[-1] > 0.9
    assert res["bandit"]["allocation"]["strong"] > 0.9
    assert res["bandit"]["p_best"]["strong"] > 0.99


@pytest.mark.redis
def test_two_servers_on_redis_share_experiment_counts(redis_url, redis_namespace, artifacts,
                                                     settings_for, tmp_path):
    """Workers on one Redis count into the same sets: results agree whichever one answers."""
    rates = {"control": 0.1, "better": 0.4}
    rng = np.random.default_rng(5)

    def app(sub):
        return TestClient(create_app(settings_for(
            artifacts, admin_token=TOKEN, experiments=(experiment("shared", rates),),
            store_url=redis_url, namespace=redis_namespace, data_dir=tmp_path / sub,
            deadlines={"store_ms": 1000.0, "request_ms": 5000.0})))

    with app("a") as a, app("b") as b:
        first = simulate(a, "shared", rates, users=150, rng=rng, prefix="a-user-")
        second = simulate(b, "shared", rates, users=150, rng=rng, prefix="b-user-")
        # user a-user-0 is served again by the other worker: still one exposure
        b.get("/recommendations", params={"user_id": "a-user-0", "n": 5})
        res_a = a.get("/experiments/shared/results", headers=AUTH).json()
        res_b = b.get("/experiments/shared/results", headers=AUTH).json()
    assert res_a["arms"] == res_b["arms"]
    for arm in res_a["arms"]:
        exposed = first[arm["name"]][0] + second[arm["name"]][0]
        clicked = first[arm["name"]][1] + second[arm["name"]][1]
        assert (arm["exposures"], arm["clicks"]) == (exposed, clicked)
