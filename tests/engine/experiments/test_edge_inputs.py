"""Experiments fed odd but valid input: extreme weights, tiny effects, bad significance levels."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from starlette.testclient import TestClient

from rankly.engine.experiments import ExperimentError, analyze, assign_one, cli, parse_experiment
from rankly.engine.experiments.stats import ArmCounts, sample_size
from rankly.engine.serving.app import create_app

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HUGE = 1e308  # two of them sum to infinity


@pytest.fixture
def admin_client(artifacts, settings_for):
    settings = settings_for(artifacts, admin_token=TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


def _run_cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="rankly")
    cli.add_arguments(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    return cli.run(parser.parse_args(argv), out), out.getvalue()


def _two(weight_a: float, weight_b: float, **extra) -> dict:
    return {"key": "w", "status": "running", **extra,
            "variants": [{"name": "a", "weight": weight_a}, {"name": "b", "weight": weight_b}]}


def test_weights_whose_sum_overflows_still_normalise_to_their_shares():
    exp = parse_experiment(_two(HUGE, HUGE))
    assert exp.weights == (0.5, 0.5)
    assert assign_one(exp, "1").probability == 0.5
    assert exp.with_weights([HUGE, HUGE / 3]).weights == pytest.approx((0.75, 0.25))


def test_analyze_reads_overflowing_weights_as_their_shares():
    doc = analyze([ArmCounts("a", 100, 10, 10), ArmCounts("b", 300, 10, 10)],
                  weights=[HUGE, HUGE])
    assert [a["weight"] for a in doc["arms"]] == [0.5, 0.5]
    assert doc["srm"]["expected"] == [200.0, 200.0] and doc["srm"]["alert"]


def test_results_of_an_experiment_put_with_overflowing_weights(admin_client):
    body = _two(HUGE, HUGE)
    assert admin_client.put("/experiments/w", json=body, headers=AUTH).status_code == 201
    for u in range(1, 21):
        admin_client.get("/recommendations", params={"user_id": str(u), "n": 3})
    r = admin_client.get("/experiments/w/results", headers=AUTH)
    assert r.status_code == 200
    doc = r.json()
    assert [a["weight"] for a in doc["arms"]] == [0.5, 0.5]
    assert sum(a["exposures"] for a in doc["arms"]) == 20
    assert doc["srm"]["status"] == "ok"


def test_an_effect_too_small_to_plan_for_is_a_plan_status_not_an_error():
    for mde in (1e-200, 1e-155):
        with pytest.raises(ValueError, match="mde"):
            sample_size(0.1, mde, relative=True)
    doc = analyze([ArmCounts("a", 100, 10, 10), ArmCounts("b", 100, 12, 12)], mde=1e-200)
    assert doc["sample_size"]["per_variant"] is None
    assert doc["sample_size"]["status"].startswith("undefined: mde")


def test_results_with_a_tiny_planned_effect_answer_200(admin_client):
    body = _two(1, 1, primary_metric="ctr", mde=1e-200)
    admin_client.put("/experiments/w", json=body, headers=AUTH)
    served = {}
    for u in range(1, 11):
        served[u] = admin_client.get("/recommendations", params={"user_id": str(u)}).json()
    clicks = [{"event_id": f"c{u}", "user_id": str(u), "type": "click",
               "item_id": r["items"][0]["item_id"]} for u, r in served.items()]
    assert admin_client.post("/events", json=clicks).status_code == 202
    r = admin_client.get("/experiments/w/results", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["sample_size"]["per_variant"] is None


def test_sample_size_cli_with_a_vanishing_effect_exits_2(capsys):
    code, _ = _run_cli(["experiments", "sample-size", "--baseline", "0.05", "--mde", "1e-300",
                        "--relative"])
    assert code == 2 and "mde" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_analyze_refuses_a_significance_level_outside_zero_one(alpha):
    with pytest.raises(ValueError, match="alpha"):
        analyze([ArmCounts("a", 100, 10, 10), ArmCounts("b", 100, 20, 20)], alpha=alpha)


@pytest.mark.parametrize("alpha", ["0", "1.5", "nan"])
def test_analyze_cli_with_a_bad_alpha_exits_2_naming_it(alpha, capsys):
    code, out = _run_cli(["experiments", "analyze", "--arm", "c:100:10", "--arm", "b:100:20",
                          "--alpha", alpha, "--json"])
    assert code == 2 and out == ""
    assert "alpha" in capsys.readouterr().err


def test_analyze_cli_json_is_strict_json():
    code, out = _run_cli(["experiments", "analyze", "--arm", "c:100:10", "--arm", "b:100:20",
                          "--json"])
    assert code == 0 and json.loads(out)["arms"][0]["exposures"] == 100


def test_a_bandit_that_moved_its_traffic_is_no_sample_ratio_mismatch():
    """Exposures of a bandit follow the weights of every past epoch, not the current ones:
    a chi-square against the current weights alerts on every bandit that learned."""
    arms = [ArmCounts("weak", 190, 4, 4), ArmCounts("strong", 810, 320, 320)]
    doc = analyze(arms, weights=[0.01, 0.99], primary_metric="ctr", bandit=True,
                  bandit_weights=[0.01, 0.99])
    assert doc["trustworthy"] and not doc["srm"]["alert"]
    assert doc["srm"]["p_value"] is None and "bandit" in doc["srm"]["status"]
    assert doc["verdict"] == "significant_win"
    assert doc["bandit"]["allocation"] == {"weak": 0.01, "strong": 0.99}


def test_bandit_results_over_http_are_trustworthy_once_traffic_moved(admin_client):
    body = {"status": "running", "primary_metric": "ctr", "bandit": True,
            "variants": [{"name": "weak", "weight": 1}, {"name": "strong", "weight": 1}]}
    admin_client.put("/experiments/band", json=body, headers=AUTH)
    rt = admin_client.app_state["runtime"]
    now = [0.0]
    rt.tracker.clock = lambda: now[0]
    epoch_s = rt.settings.bandit_epoch_seconds
    for epoch in range(3):
        events = []
        for u in range(240):
            uid = f"e{epoch}-u{u}"
            r = admin_client.get("/recommendations", params={"user_id": uid, "n": 3}).json()
            if r["variant"] == "strong" or u % 20 == 0:
                events.append({"event_id": f"{uid}-c", "user_id": uid, "type": "click",
                               "item_id": r["items"][0]["item_id"]})
        assert admin_client.post("/events", json=events).status_code == 202
        now[0] += epoch_s
    doc = admin_client.get("/experiments/band/results", headers=AUTH).json()
    exposures = {a["name"]: a["exposures"] for a in doc["arms"]}
    assert exposures["strong"] > 2 * exposures["weak"]
    assert doc["trustworthy"] and doc["verdict"] != "srm_alert"


def test_every_control_user_converting_and_no_variant_user_is_a_significant_loss():
    """Both arms at 0% or 100% leave the unpooled variance at 0; a difference of the whole
    range is then the strongest evidence there is, not no evidence."""
    doc = analyze([ArmCounts("c", 200, 200, 200), ArmCounts("b", 200, 0, 0)],
                  primary_metric="conversion")
    (cmp,) = doc["metrics"]["conversion"]["comparisons"]
    assert cmp["sequential"]["p_value"] < 1e-6 and cmp["direction"] == "worse"
    assert doc["verdict"] == "significant_loss"
    same = analyze([ArmCounts("c", 200, 0, 0), ArmCounts("b", 200, 0, 0)])
    assert same["verdict"] == "no_detectable_difference"


@pytest.mark.parametrize("variant_name", ["x" * 129, "line\nbreak", "tab\there", "\x7f"])
def test_a_variant_name_is_bounded_and_has_no_control_characters(variant_name):
    # names become Prometheus label values and parts of Redis keys
    raw = {"key": "names", "variants": [{"name": "control"}, {"name": variant_name}]}
    with pytest.raises(ExperimentError, match=r"variants\[1\]\.name"):
        parse_experiment(raw)
    assert parse_experiment({**raw, "variants": [{"name": "control"},
                                                 {"name": "x" * 128}]}).variants[1].name


def test_a_layer_name_follows_the_variant_name_rule():
    raw = {"key": "layered", "variants": [{"name": "a"}, {"name": "b"}],
           "layer": {"name": "l\n", "range": [0, 0.5]}}
    with pytest.raises(ExperimentError, match="layer.name"):
        parse_experiment(raw)


@pytest.mark.parametrize("field", ["phase", "epoch"])
def test_phase_and_epoch_are_bounded(field):
    raw = {"key": "counted", "variants": [{"name": "a"}, {"name": "b"}]}
    assert getattr(parse_experiment({**raw, field: 2**31 - 1}), field) == 2**31 - 1
    with pytest.raises(ExperimentError, match=field):
        parse_experiment({**raw, field: 10**30})
