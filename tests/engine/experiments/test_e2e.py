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

from rankly.engine.experiments import ArmCounts, analyze
from rankly.engine.serving.app import create_app

pytestmark = pytest.mark.slow

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


@pytest.fixture(params=["embedded",
                        pytest.param("redis_server", marks=pytest.mark.redis),
                        pytest.param("redis_cluster", marks=pytest.mark.redis)])
def store_options(request, redis_namespace):
    """The store's name, and no options (the embedded store) or a Redis deployment's."""
    if request.param == "embedded":
        return request.param, {}
    return request.param, {"store_url": request.getfixturevalue(request.param).url,
                           "namespace": redis_namespace,
                           "deadlines": {"store_ms": 1000.0, "request_ms": 5000.0}}


def deng_variance(n, x):
    """Delta-method variance of sum(x)/sum(n) over users (Deng et al. 2018), by hand."""
    n, x = np.asarray(n, float), np.asarray(x, float)
    mx, mn = x.mean(), n.mean()
    sxx, sxn, snn = np.var(x, ddof=1), np.cov(x, n, ddof=1)[0, 1], np.var(n, ddof=1)
    return (sxx / mn**2 - 2 * mx * sxn / mn**3 + mx**2 * snn / mn**4) / len(n)


def test_per_impression_results_equal_a_reference_computed_from_the_log(
        artifacts, settings_for, tmp_path, store_options):
    """Slates in, clicks and purchases in (repeats, retries, some without a request_id),
    per-impression rates and their clustered test out, equal to the client's own tally."""
    rng = np.random.default_rng(3)
    store, options = store_options
    key = f"per-impression-{store}"  # metrics are per process: one experiment per store
    served = {}  # variant -> user -> [impressions, clicks, conversions]
    events = []
    settings = settings_for(artifacts, admin_token=TOKEN, data_dir=tmp_path,
                            experiments=(experiment(key, {"control": 1, "other": 1}),),
                            **options)
    with TestClient(create_app(settings)) as client:
        for u in range(60):
            uid = f"imp-user-{u}"
            taste = rng.beta(0.5, 4.0)  # users differ: clicks cluster within users
            for r in range(int(rng.integers(1, 4))):
                rid = f"{uid}-r{r}"
                body = client.get("/recommendations", params={
                    "user_id": uid, "n": int(rng.integers(2, 7)), "request_id": rid}).json()
                tally = served.setdefault(body["variant"], {}).setdefault(uid, [0, 0, 0])
                tally[0] += len(body["items"])
                for k, item in enumerate(i["item_id"] for i in body["items"]):
                    if rng.random() >= taste:
                        continue
                    tally[1] += 1
                    click = {"user_id": uid, "item_id": item, "type": "click",
                             "request_id": rid}
                    events.append({**click, "event_id": f"{rid}-{k}-c"})
                    if k == 0:  # a second click on the same impression counts once
                        events.append({**click, "event_id": f"{rid}-{k}-c2"})
                    if rng.random() < 0.3:
                        tally[2] += 1
                        events.append({**click, "type": "purchase", "event_id": f"{rid}-{k}-p"})
            # a click without a request_id is not on a known served item: per user only
            events.append({"event_id": f"{uid}-free", "user_id": uid, "item_id": "1",
                           "type": "click"})
        for start in range(0, len(events), 200):
            assert client.post("/events", json=events[start:start + 200]).status_code == 202
        res = client.get(f"/experiments/{key}/results", headers=AUTH).json()
        scrape = client.get("/metrics").text
        dashboard = {v["variant"]: v for v in client.get("/dashboard/data").json()["variants"]}
    doc = res["per_impression"]
    arms = {a["name"]: a for a in doc["arms"]}
    ref = {}
    for variant, users in served.items():
        n, x, c = (np.array(col) for col in zip(*users.values(), strict=True))
        a = arms[variant]
        assert (a["users"], a["impressions"], a["clicks"], a["conversions"]) == (
            len(users), n.sum(), x.sum(), c.sum())
        assert a["ctr"] == x.sum() / n.sum() and a["conversion_rate"] == c.sum() / n.sum()
        assert a["ctr_se"] == pytest.approx(math.sqrt(deng_variance(n, x)), rel=1e-9)
        assert a["conversion_rate_se"] == pytest.approx(math.sqrt(deng_variance(n, c)),
                                                        rel=1e-9)
        ref[variant] = (x.sum() / n.sum(), deng_variance(n, x))
        impressions = re.search(rf'rankly_experiment_impressions_total{{experiment="{key}",'
                                rf'phase="0",variant="{variant}"}} (\S+)', scrape)
        assert float(impressions.group(1)) == n.sum()
        shown = dashboard[f"{key}/{variant}"]
        assert (shown["impressions"], shown["impression_clicks"],
                shown["impression_conversions"]) == (n.sum(), x.sum(), c.sum())
    (r0, v0), (r1, v1) = ref["control"], ref["other"]
    z = (r1 - r0) / math.sqrt(v0 + v1)
    test = doc["metrics"]["ctr"]["comparisons"][0]["z_test"]
    assert test["z"] == pytest.approx(z, rel=1e-9)
    assert test["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    # the per-user statistics are still there, with every exposed user
    assert sum(a["exposures"] for a in res["arms"]) == 60


@pytest.mark.redis
def test_impressions_served_by_a_stopped_worker_are_in_another_workers_results(
        redis_url, redis_namespace, artifacts, settings_for, tmp_path):
    def app(sub):
        return TestClient(create_app(settings_for(
            artifacts, admin_token=TOKEN, data_dir=tmp_path / sub,
            experiments=(experiment("handover", {"control": 1, "other": 1}),),
            store_url=redis_url, namespace=redis_namespace,
            deadlines={"store_ms": 1000.0, "request_ms": 5000.0})))

    served = {"control": 0, "other": 0}
    with app("a") as a:
        for u in range(20):
            body = a.get("/recommendations", params={"user_id": f"h{u}", "n": 4}).json()
            served[body["variant"]] += len(body["items"])
    with app("b") as b:
        res = b.get("/experiments/handover/results", headers=AUTH).json()
    got = {arm["name"]: arm["impressions"] for arm in res["per_impression"]["arms"]}
    assert got == served and sum(served.values()) > 0


def test_per_impression_outcomes_count_only_items_the_answer_held(
        artifacts, settings_for, tmp_path, store_options):
    """A click carrying a real request_id on an item its answer did not hold, or a made-up
    request_id, is no impression outcome (per user it still counts): before, either raised
    the arm's clicks above its impressions."""
    store, options = store_options
    key = f"held-{store}"
    settings = settings_for(artifacts, admin_token=TOKEN, data_dir=tmp_path,
                            experiments=(experiment(key, {"control": 1, "other": 1}),),
                            **options)
    with TestClient(create_app(settings)) as client:
        body = client.get("/recommendations", params={
            "user_id": "held-1", "n": 2, "request_id": "held-r1"}).json()
        shown = [i["item_id"] for i in body["items"]]
        others = [i for i in map(str, range(1, 60)) if i not in shown][:5]

        def click(n: int, item: str, rid: str) -> dict:
            return {"event_id": f"held-{n}", "user_id": "held-1", "item_id": item,
                    "type": "click", "request_id": rid}

        forged = [click(n, item, "held-r1") for n, item in enumerate(others)]
        forged += [click(10 + n, shown[0], f"made-up-{n}") for n in range(5)]
        assert client.post("/events", json=forged).status_code == 202
        assert client.post("/events", json=[click(20, shown[1], "held-r1")]).status_code == 202
        res = client.get(f"/experiments/{key}/results", headers=AUTH).json()
    arm = {a["name"]: a for a in res["per_impression"]["arms"]}[body["variant"]]
    assert (arm["impressions"], arm["clicks"]) == (2, 1)
    assert {a["name"]: a for a in res["arms"]}[body["variant"]]["clicks"] == 1  # per user
