"""Per-impression rates and their user-clustered variance against references and simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as st

from rankly.engine.experiments.stats import (
    ArmCounts,
    ImpressionCounts,
    InvalidCounts,
    analyze,
    analyze_impressions,
    ratio_estimate,
)

# Per-user (impressions, clicks, conversions) of two small arms, built by hand: users who
# click a lot of what they see, users who never click, one with a conversion and no click.
CONTROL = [(10, 1, 0), (10, 0, 1), (5, 2, 0), (20, 6, 1), (3, 0, 0), (8, 0, 0)]
VARIANT = [(10, 3, 0), (10, 1, 0), (5, 2, 1), (15, 7, 2), (4, 4, 1), (9, 1, 0), (2, 0, 0)]


def arm(name, rows):
    return ImpressionCounts.of_users(name, [dict(zip("nxc", r, strict=True)) for r in rows])


def deng_variance(n, x):
    """Var of sum(x)/sum(n) by the delta method over users, written as in Deng et al. 2018:
    ``(s_x^2 / mu_n^2 - 2 mu_x s_xn / mu_n^3 + mu_x^2 s_n^2 / mu_n^4) / U``."""
    n, x = np.asarray(n, float), np.asarray(x, float)
    u = len(n)
    mx, mn = x.mean(), n.mean()
    cov = np.cov(np.vstack([x, n]), ddof=1)
    return (cov[0, 0] / mn**2 - 2 * mx * cov[0, 1] / mn**3 + mx**2 * cov[1, 1] / mn**4) / u


@pytest.mark.parametrize("metric", ["ctr", "conversion"])
def test_rates_and_clustered_variance_equal_the_reference_on_a_hand_built_log(metric):
    col = 1 if metric == "ctr" else 2
    for rows in (CONTROL, VARIANT):
        n = [r[0] for r in rows]
        x = [r[col] for r in rows]
        got = ratio_estimate(arm("a", rows), metric)
        assert got["rate"] == sum(x) / sum(n)
        assert got["var"] == pytest.approx(deng_variance(n, x), rel=1e-12)
        r = sum(x) / sum(n)
        assert got["design_effect"] == pytest.approx(got["var"] / (r * (1 - r) / sum(n)))


def test_comparison_is_a_wald_test_on_the_clustered_variances():
    doc = analyze_impressions([arm("control", CONTROL), arm("variant", VARIANT)])
    for metric, col in (("ctr", 1), ("conversion", 2)):
        rates, variances = [], []
        for rows in (CONTROL, VARIANT):
            n, x = [r[0] for r in rows], [r[col] for r in rows]
            rates.append(sum(x) / sum(n))
            variances.append(deng_variance(n, x))
        d, se = rates[1] - rates[0], math.sqrt(sum(variances))
        c = doc["metrics"][metric]["comparisons"][0]
        assert c["diff"]["estimate"] == pytest.approx(d, abs=1e-15)
        assert c["diff"]["ci"] == pytest.approx([d - 1.959963984540054 * se,
                                                 d + 1.959963984540054 * se], rel=1e-9)
        assert c["z_test"]["z"] == pytest.approx(d / se, rel=1e-9)
        assert c["z_test"]["p_value"] == pytest.approx(2 * st.norm.sf(abs(d / se)), rel=1e-9)
        lift_se = math.sqrt(variances[1] / rates[0] ** 2
                            + rates[1] ** 2 * variances[0] / rates[0] ** 4)
        assert c["relative_lift"]["se"] == pytest.approx(lift_se, rel=1e-9)
    arms = {a["name"]: a for a in doc["arms"]}
    assert (arms["control"]["users"], arms["control"]["impressions"],
            arms["control"]["clicks"], arms["control"]["conversions"]) == (6, 56, 9, 2)
    json.dumps(doc, allow_nan=False)


def test_two_p_values_of_the_family_are_holm_adjusted():
    doc = analyze_impressions([arm("control", CONTROL), arm("variant", VARIANT)])
    ps = [doc["metrics"][m]["comparisons"][0]["z_test"]["p_value"] for m in ("ctr", "conversion")]
    adjusted = [doc["metrics"][m]["comparisons"][0]["z_test"]["p_value_adjusted"]
                for m in ("ctr", "conversion")]
    lo = min(ps)
    assert min(adjusted) == pytest.approx(min(1.0, 2 * lo))
    assert max(adjusted) == pytest.approx(max(min(1.0, 2 * lo), max(ps)))


def heterogeneous_users(rng, users, rate=0.06, concentration=2.0):
    """Users with their own click rate (Beta around ``rate``) and 1-40 impressions each."""
    n = rng.integers(1, 41, size=users)
    p = rng.beta(rate * concentration, (1 - rate) * concentration, size=users)
    return n, rng.binomial(n, p)


def test_clustered_standard_error_matches_a_bootstrap_over_users():
    rng = np.random.default_rng(19)
    n, x = heterogeneous_users(rng, 3000)
    got = ratio_estimate(ImpressionCounts.of_users("a", [{"n": int(a), "x": int(b)}
                                                         for a, b in zip(n, x, strict=True)]),
                         "ctr")
    weights = rng.multinomial(len(n), np.full(len(n), 1 / len(n)), size=2000)
    boot = (weights @ x) / (weights @ n)
    assert got["se"] == pytest.approx(boot.std(ddof=1), rel=0.08)
    # the binomial standard error, which treats impressions as independent, is far too small
    assert got["design_effect"] > 2.0


def test_clustered_test_holds_its_level_where_the_impression_level_test_does_not():
    rng = np.random.default_rng(7)
    clustered, naive = 0, 0
    runs = 300
    for _ in range(runs):  # A/A: both arms from the same population
        arms = []
        for name in ("control", "copy"):
            n, x = heterogeneous_users(rng, 150)
            arms.append(ImpressionCounts.of_users(name, [{"n": int(a), "x": int(b)}
                                                         for a, b in zip(n, x, strict=True)]))
        c = analyze_impressions(arms)["metrics"]["ctr"]["comparisons"][0]
        clustered += c["z_test"]["p_value"] < 0.05
        x0, n0, x1, n1 = (arms[0].get("x"), arms[0].get("n"), arms[1].get("x"), arms[1].get("n"))
        p = (x0 + x1) / (n0 + n1)
        z = (x1 / n1 - x0 / n0) / math.sqrt(p * (1 - p) * (1 / n0 + 1 / n1))
        naive += 2 * st.norm.sf(abs(z)) < 0.05
    assert clustered / runs < 0.09
    assert naive / runs > 0.2


def test_results_document_carries_the_per_impression_section():
    counts = [ArmCounts("control", 6, 3, 2), ArmCounts("variant", 7, 6, 3)]
    doc = analyze(counts, primary_metric="ctr",
                  impressions=[arm("control", CONTROL), arm("variant", VARIANT)])
    assert doc["per_impression"] == json.loads(json.dumps(analyze_impressions(
        [arm("control", CONTROL), arm("variant", VARIANT)])))
    with pytest.raises(ValueError, match="impressions"):
        analyze(counts, impressions=[arm("variant", VARIANT), arm("control", CONTROL)])


def test_undefined_cases_are_null_with_a_status():
    empty = ImpressionCounts("control", {})
    one = arm("variant", [(5, 1, 0)])
    doc = analyze_impressions([empty, one])
    c = doc["metrics"]["ctr"]["comparisons"][0]
    assert c["z_test"]["p_value"] is None and c["z_test"]["status"] == "no_data"
    assert ratio_estimate(one, "ctr")["status"] == "undefined: fewer than 2 users"
    assert c["significant"] is False
    with pytest.raises(InvalidCounts):
        analyze_impressions([ImpressionCounts("control", {"n": -1}), one])
