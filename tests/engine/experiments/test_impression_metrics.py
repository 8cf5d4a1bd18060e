"""Per-impression CTR and conversion as an experiment's primary metric and guardrails."""

from __future__ import annotations

import argparse
import io
import json
import math

import pytest
from starlette.testclient import TestClient

from rankly.engine.experiments import cli
from rankly.engine.experiments.stats import (
    ArmCounts,
    ImpressionCounts,
    analyze,
    ratio_estimate,
    sample_size,
)
from rankly.engine.serving.app import create_app

TOKEN = "impression-metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def users(rows: list[tuple[int, int, int]], times: int) -> list[dict[str, int]]:
    return [dict(zip("nxc", r, strict=True)) for r in rows] * times


# per-user (impressions, clicks, conversions): the variant's users click more of what they
# see, and buy less
CONTROL = users([(10, 1, 1), (10, 0, 0), (8, 2, 0), (12, 1, 0)], 60)
VARIANT = users([(10, 3, 0), (10, 2, 0), (8, 2, 0), (12, 3, 0)], 60)


def arms() -> tuple[list[ArmCounts], list[ImpressionCounts]]:
    per_user = [ArmCounts("control", 240, 180, 60), ArmCounts("b", 240, 240, 0)]
    return per_user, [ImpressionCounts.of_users("control", CONTROL),
                      ImpressionCounts.of_users("b", VARIANT)]


def test_an_impression_primary_metric_decides_the_verdict():
    per_user, imps = arms()
    doc = analyze(per_user, primary_metric="impression_ctr", impressions=imps)
    m = doc["metrics"]["impression_ctr"]
    assert m["per_impression"] is True
    assert m["rates"] == doc["per_impression"]["metrics"]["ctr"]["rates"]
    assert m["rates"]["control"] == pytest.approx(4 / 40)
    assert doc["verdict"] == "significant_win" and "impression_ctr" in doc["verdict_reason"]
    c = m["comparisons"][0]
    assert c["direction"] == "better" and c["z_test"]["p_value_adjusted"] is not None


def test_an_impression_guardrail_is_judged_with_the_primary_metric():
    per_user, imps = arms()
    doc = analyze(per_user, primary_metric="impression_ctr",
                  guardrails=["impression_conversion", "ctr"], impressions=imps)
    assert doc["guardrails"] == ["impression_conversion", "ctr"]
    assert doc["verdict"] == "guardrail_breached"
    assert "impression_conversion" in doc["verdict_reason"]
    # one family of three p-values (Holm): the smallest is multiplied by three
    raw = [doc["metrics"][m]["comparisons"][0]["z_test"]["p_value"]
           for m in ("impression_ctr", "impression_conversion", "ctr")]
    adjusted = [doc["metrics"][m]["comparisons"][0]["z_test"]["p_value_adjusted"]
                for m in ("impression_ctr", "impression_conversion", "ctr")]
    smallest = min(range(3), key=raw.__getitem__)
    assert adjusted[smallest] == pytest.approx(min(1.0, 3 * raw[smallest]))


def test_an_mde_on_an_impression_metric_plans_impressions():
    per_user, imps = arms()
    doc = analyze(per_user, primary_metric="impression_ctr", impressions=imps, mde=0.2)
    plan = doc["sample_size"]
    est = ratio_estimate(imps[0], "ctr")
    binomial = sample_size(est["rate"], 0.2, relative=True)["per_variant"]
    assert plan["unit"] == "impressions" and plan["binomial_per_variant"] == binomial
    assert plan["per_variant"] == math.ceil(binomial * max(est["design_effect"], 1.0))
    assert plan["progress"] == pytest.approx(min(1.0, 2400 / plan["per_variant"]))


def test_impression_metrics_need_impression_counts_and_no_bandit():
    per_user, imps = arms()
    with pytest.raises(ValueError, match="impression_ctr: needs per-impression counts"):
        analyze(per_user, primary_metric="impression_ctr")
    with pytest.raises(ValueError, match="bandit"):
        analyze(per_user, primary_metric="impression_ctr", impressions=imps, bandit=True)
    with pytest.raises(ValueError, match="impression_ctr, impression_conversion"):
        analyze(per_user, primary_metric="revenue", impressions=imps)


# --- through HTTP ---------------------------------------------------------------------------


@pytest.fixture
def admin_client(artifacts, settings_for, tmp_path):
    settings = settings_for(artifacts, admin_token=TOKEN, data_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        yield c


AB = {"status": "running", "primary_metric": "impression_ctr",
      "guardrails": ["impression_conversion", "conversion"],
      "variants": [{"name": "control", "weight": 1},
                   {"name": "popular-only", "weight": 1, "scorers": ["popular"],
                    "rerankers": []}]}


@pytest.mark.parametrize(("change", "status", "field", "message"), [
    ({"primary_metric": "impression_revenue"}, 422, "primary_metric",
     "expected one of ctr|conversion|impression_ctr|impression_conversion"),
    ({"guardrails": ["impression_clicks"]}, 422, "guardrails[0]", "impression_conversion"),
    # a rule between two fields, which the schema cannot state: 409, as the others
    ({"bandit": True}, 409, "primary_metric", "a bandit allocates by a per-user metric"),
])
def test_unknown_metrics_are_a_clear_422(admin_client, change, status, field, message):
    r = admin_client.put("/experiments/imp", json={**AB, **change}, headers=AUTH)
    assert r.status_code == status, r.text
    text = r.json()["error"]["message"]
    assert field in text and message in text


def test_impression_metrics_are_chosen_and_reported_over_http(admin_client):
    r = admin_client.put("/experiments/imp", json=AB, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["primary_metric"] == "impression_ctr"
    assert r.json()["guardrails"] == ["impression_conversion", "conversion"]
    schema = admin_client.get("/openapi.json").json()
    assert "impression_ctr" in json.dumps(schema)
    served: dict[str, list[int]] = {}
    events = []
    for u in range(40):
        uid = f"imp-user-{u}"
        body = admin_client.get("/recommendations", params={"user_id": uid, "n": 4}).json()
        counts = served.setdefault(body["variant"], [0, 0])
        counts[0] += len(body["items"])
        clicks = body["items"][: 1 + u % 3] if body["variant"] == "control" else \
            body["items"][:1]
        counts[1] += len(clicks)
        events += [{"event_id": f"{uid}-{k}", "user_id": uid, "item_id": it["item_id"],
                    "type": "click", "request_id": body["request_id"]}
                   for k, it in enumerate(clicks)]
    assert admin_client.post("/events", json=events).status_code == 202
    doc = admin_client.get("/experiments/imp/results", headers=AUTH).json()
    assert doc["primary_metric"] == "impression_ctr"
    rates = doc["metrics"]["impression_ctr"]["rates"]
    for name, (impressions, clicks) in served.items():
        assert rates[name] == pytest.approx(clicks / impressions)
    assert rates == doc["per_impression"]["metrics"]["ctr"]["rates"]
    assert set(doc["metrics"]) == {"impression_ctr", "impression_conversion", "conversion"}


# --- through the CLI ------------------------------------------------------------------------


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="rankly")
    cli.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    return cli.run(args, out), out.getvalue()


@pytest.fixture
def impressions_csv(tmp_path):
    path = tmp_path / "impressions.csv"
    lines = ["arm,user,impressions,clicks,conversions"]
    for arm, rows in (("control", CONTROL), ("b", VARIANT)):
        lines += [f"{arm},{arm}-{k},{r['n']},{r['x']},{r['c']}" for k, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


ARMS = ["--arm", "control:240:60:180", "--arm", "b:240:0:240"]


def test_cli_analyze_shows_the_per_impression_results(impressions_csv):
    code, out = run(["experiments", "analyze", *ARMS, "--metric", "impression_ctr",
                     "--guardrail", "impression_conversion",
                     "--impressions", str(impressions_csv)])
    assert code == 0, out
    assert "verdict: guardrail_breached" in out
    assert "primary metric: impression_ctr (per impression)" in out
    assert "impressions=2400" in out  # the control's: 60 times 10, 10, 8 and 12
    assert "guardrail impression_conversion: b vs control" in out
    assert "per impression (user-clustered variance):" in out
    assert "impression_ctr: b vs control" in out and "-> better" in out


def test_cli_analyze_json_carries_the_impression_metric(impressions_csv):
    code, out = run(["experiments", "analyze", *ARMS, "--metric", "impression_ctr",
                     "--impressions", str(impressions_csv), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["metrics"]["impression_ctr"]["comparisons"][0]["significant"]
    assert doc["per_impression"]["arms"][0]["impressions"] == 2400


def test_cli_analyze_without_impressions_names_what_is_missing(capsys):
    code, _ = run(["experiments", "analyze", *ARMS, "--metric", "impression_ctr"])
    assert code == 2 and "needs per-impression counts" in capsys.readouterr().err


def test_cli_metric_choices_are_validated(capsys):
    with pytest.raises(SystemExit):
        run(["experiments", "analyze", *ARMS, "--metric", "impression_revenue"])
    assert "impression_ctr" in capsys.readouterr().err
