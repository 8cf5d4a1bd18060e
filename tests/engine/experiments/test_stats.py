"""Result statistics against scipy/statsmodels and closed-form references, plus edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize, special
from scipy import stats as st

from rankly.engine.experiments.stats import (
    ArmCounts,
    InvalidCounts,
    adjust_pvalues,
    analyze,
    diff_interval,
    expected_loss,
    prob_beats,
    prob_best,
    relative_lift,
    sample_size,
    sequential_interval,
    srm_test,
    z_test_pooled,
)

sm_prop = pytest.importorskip("statsmodels.stats.proportion")
sm_mt = pytest.importorskip("statsmodels.stats.multitest")

TOL = 1e-6
# (x0, n0, x1, n1): control first.
CASES = [
    (500, 10_000, 580, 10_000),
    (50, 1_000, 45, 1_200),
    (3, 40, 9, 35),
    (1_200, 100_000, 1_290, 99_000),
    (0, 500, 4, 500),
    (10, 100, 0, 100),
    (7, 50_000, 2, 30),
]


def _json_roundtrip(doc):
    return json.loads(json.dumps(doc, allow_nan=False))


# --- frequentist -------------------------------------------------------------------------


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), CASES)
def test_pooled_z_test_matches_statsmodels_and_chi_square(x0, n0, x1, n1):
    got = z_test_pooled(x0, n0, x1, n1)
    z, p = sm_prop.proportions_ztest([x1, x0], [n1, n0])
    assert got["z"] == pytest.approx(z, abs=TOL) and got["p_value"] == pytest.approx(p, abs=TOL)
    table = np.array([[x1, n1 - x1], [x0, n0 - x0]])
    assert got["p_value"] == pytest.approx(
        st.chi2_contingency(table, correction=False).pvalue, abs=TOL
    )


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), CASES)
def test_diff_interval_matches_statsmodels_wald(x0, n0, x1, n1):
    got = diff_interval(x0, n0, x1, n1)
    lo, hi = sm_prop.confint_proportions_2indep(x1, n1, x0, n0, method="wald", compare="diff")
    assert got["estimate"] == pytest.approx(x1 / n1 - x0 / n0, abs=1e-12)
    assert got["ci"] == pytest.approx([lo, hi], abs=TOL)


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), [c for c in CASES if c[0] > 0])
def test_relative_lift_matches_delta_method_reference(x0, n0, x1, n1):
    p0, p1 = x0 / n0, x1 / n1
    grad = np.array([1 / p0, -p1 / p0**2])  # d(p1/p0)/d(p1, p0)
    cov = np.diag([p1 * (1 - p1) / n1, p0 * (1 - p0) / n0])
    se = math.sqrt(grad @ cov @ grad)
    lift = p1 / p0 - 1
    got = relative_lift(x0, n0, x1, n1)
    z = st.norm.ppf(0.975)
    assert got["estimate"] == pytest.approx(lift, abs=1e-12)
    if se == 0:
        assert got["p_value"] is None
        return
    assert got["ci"] == pytest.approx([lift - z * se, lift + z * se], abs=TOL)
    assert got["p_value"] == pytest.approx(2 * st.norm.cdf(-abs(lift) / se), abs=TOL)


def test_relative_lift_is_undefined_when_control_rate_is_zero():
    got = relative_lift(0, 500, 4, 500)
    assert got["estimate"] is None and got["p_value"] is None
    assert got["status"] == "undefined: control rate is 0"


def test_srm_matches_scipy_chisquare_and_alerts_below_threshold():
    got = srm_test([5000, 5400], [0.5, 0.5])
    ref = st.chisquare([5000, 5400], f_exp=[5200, 5200])
    assert got["p_value"] == pytest.approx(ref.pvalue, abs=TOL) and got["alert"] is True
    ok = srm_test([2010, 7990], [0.2, 0.8])
    assert ok["p_value"] == pytest.approx(
        st.chisquare([2010, 7990], f_exp=[2000, 8000]).pvalue, abs=TOL
    )
    assert ok["alert"] is False


def test_srm_edge_cases():
    assert srm_test([0, 0], [1, 1])["p_value"] is None
    zero_weight = srm_test([100, 3], [1, 0])
    assert zero_weight["alert"] is True and zero_weight["p_value"] == 0.0


@pytest.mark.parametrize(("method", "sm_method"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_p_value_adjustment_matches_statsmodels(method, sm_method):
    p = [0.01, 0.04, 0.03, 0.2, 0.004, 0.04, 0.9]
    ref = sm_mt.multipletests(p, method=sm_method)[1]
    assert adjust_pvalues(p, method) == pytest.approx(list(ref), abs=1e-12)
    with_none = adjust_pvalues([None, *p], method)
    assert with_none[0] is None and with_none[1:] == pytest.approx(list(ref), abs=1e-12)


# --- Bayesian ----------------------------------------------------------------------------


def _prob_b_beats_a(a_a, b_a, a_b, b_b) -> float:
    """P(p_B > p_A), Evan Miller's closed form.

    ``sum_{i < a_B} B(a_A + i, b_A + b_B) / ((b_B + i) B(1 + i, b_B) B(a_A, b_A))``.
    """
    i = np.arange(int(a_b))
    terms = (
        special.betaln(a_a + i, b_a + b_b)
        - np.log(b_b + i)
        - special.betaln(1 + i, b_b)
        - special.betaln(a_a, b_a)
    )
    return float(np.exp(terms).sum())


def _post(x, n):
    return 1.0 + x, 1.0 + n - x


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), [*CASES, (0, 0, 0, 0), (100, 100, 99, 100)])
def test_prob_beats_matches_closed_form(x0, n0, x1, n1):
    ref = _prob_b_beats_a(*_post(x0, n0), *_post(x1, n1))
    assert prob_beats(x0, n0, x1, n1) == pytest.approx(ref, abs=TOL)


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), [*CASES, (0, 0, 0, 0), (100, 100, 100, 100)])
def test_expected_loss_matches_closed_form(x0, n0, x1, n1):
    a0, b0 = _post(x0, n0)
    a1, b1 = _post(x1, n1)
    mu0, mu1 = a0 / (a0 + b0), a1 / (a1 + b1)
    # E[(p0 - p1)+] = mu0 P(p0' > p1) - mu1 P(p0 > p1'), primes: size-biased Beta(a + 1, b).
    ref = mu0 * _prob_b_beats_a(a1, b1, a0 + 1, b0) - mu1 * _prob_b_beats_a(a1 + 1, b1, a0, b0)
    assert expected_loss(x0, n0, x1, n1) == pytest.approx(ref, abs=TOL)


def test_expected_loss_of_uniform_posteriors_is_one_sixth():
    assert expected_loss(0, 0, 0, 0) == pytest.approx(1 / 6, abs=1e-9)


@pytest.mark.parametrize(
    ("s", "n"),
    [
        ([50, 60, 55], [1000, 1000, 1000]),
        ([0, 1, 30], [10, 10, 200]),
        ([5, 500, 40], [90, 10_000, 700]),
    ],
)
def test_prob_best_matches_adaptive_quadrature(s, n):
    a = 1.0 + np.array(s, dtype=float)
    b = 1.0 + np.array(n, dtype=float) - np.array(s, dtype=float)
    ref = []
    for k in range(3):

        def f(x, k=k):
            v = st.beta.pdf(x, a[k], b[k])
            for j in range(3):
                if j != k:
                    v *= st.beta.cdf(x, a[j], b[j])
            return v

        lo, hi = st.beta.ppf(1e-14, a[k], b[k]), st.beta.isf(1e-14, a[k], b[k])
        pts = sorted(
            {float(st.beta.ppf(q, a[j], b[j])) for j in range(3) for q in (0.01, 0.5, 0.99)}
        )
        pts = [p for p in pts if lo < p < hi]
        ref.append(integrate.quad(f, lo, hi, points=pts, limit=500, epsabs=1e-12)[0])
    got = prob_best(s, n)
    assert got == pytest.approx(ref, abs=TOL)
    assert sum(got) == pytest.approx(1.0, abs=TOL)


def test_prob_best_of_two_arms_matches_closed_form():
    got = prob_best([500, 580], [10_000, 10_000])
    ref = _prob_b_beats_a(*_post(500, 10_000), *_post(580, 10_000))
    assert got[1] == pytest.approx(ref, abs=TOL) and got[0] == pytest.approx(1 - ref, abs=TOL)


# --- sequential --------------------------------------------------------------------------


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), CASES[:4])
def test_sequential_interval_inverts_the_mixture_likelihood_ratio(x0, n0, x1, n1):
    tau, alpha = 0.01, 0.05
    got = sequential_interval(x0, n0, x1, n1, tau, alpha)
    p0, p1 = x0 / n0, x1 / n1
    v = p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1
    d = p1 - p0

    def log_lr(theta):  # log of the normal-mixture likelihood ratio against H0: diff = theta
        return 0.5 * math.log(v / (v + tau**2)) + tau**2 * (d - theta) ** 2 / (2 * v * (v + tau**2))

    def root(theta):
        return log_lr(theta) - math.log(1 / alpha)

    hi = optimize.brentq(root, d, d + 10)
    lo = optimize.brentq(root, d - 10, d)
    assert got["ci"] == pytest.approx([lo, hi], abs=TOL)
    assert got["p_value"] == pytest.approx(min(1.0, math.exp(-log_lr(0.0))), abs=TOL)
    assert (got["p_value"] <= alpha) == (not lo <= 0 <= hi)


def test_sequential_interval_is_wider_than_fixed_horizon():
    seq = sequential_interval(500, 10_000, 580, 10_000, 0.005)
    fixed = diff_interval(500, 10_000, 580, 10_000)
    assert seq["ci"][0] < fixed["ci"][0] and seq["ci"][1] > fixed["ci"][1]


def test_peeking_daily_with_the_sequential_p_value_keeps_false_positives_below_alpha():
    rng = np.random.default_rng(2026)
    sims, looks, per_look, p = 400, 30, 400, 0.1
    x0 = rng.binomial(per_look, p, size=(sims, looks)).cumsum(axis=1)
    x1 = rng.binomial(per_look, p, size=(sims, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    rejected = 0
    for s in range(sims):
        if any(
            sequential_interval(int(x0[s, t]), int(n[t]), int(x1[s, t]), int(n[t]), 0.02)["p_value"]
            < 0.05
            for t in range(looks)
        ):
            rejected += 1
    assert rejected / sims <= 0.05


# --- sample size ----------------------------------------------------------------------------


def test_sample_size_known_value():
    # 5% baseline, +10% relative, alpha 0.05 two-sided, power 0.8: the classic 31,234.
    got = sample_size(0.05, 0.10, relative=True, daily_traffic=5000)
    assert got["per_variant"] == 31_234 and got["total"] == 62_468 and got["days"] == 13


@pytest.mark.parametrize(
    ("baseline", "mde", "alpha", "power"),
    [
        (0.05, 0.005, 0.05, 0.8),
        (0.2, -0.03, 0.01, 0.9),
        (0.5, 0.02, 0.1, 0.8),
        (0.01, 0.004, 0.05, 0.95),
    ],
)
def test_pooled_sample_size_agrees_with_statsmodels_to_the_unit(baseline, mde, alpha, power):
    ref = sm_prop.samplesize_proportions_2indep_onetail(mde, baseline, power, alpha=alpha)
    got = sample_size(baseline, mde, alpha=alpha, power=power)
    assert got["per_variant"] == math.ceil(ref)


@pytest.mark.parametrize(("baseline", "mde"), [(0.05, 0.005), (0.3, 0.05)])
def test_unpooled_sample_size_solves_the_power_equation(baseline, mde):
    p1, p2 = baseline, baseline + mde
    v = p1 * (1 - p1) + p2 * (1 - p2)
    za = st.norm.isf(0.025)

    def power(n):
        return st.norm.cdf(abs(mde) / math.sqrt(v / n) - za) - 0.8

    ref = optimize.brentq(power, 2, 1e8, xtol=1e-9)
    assert sample_size(baseline, mde, pooled=False)["per_variant"] == math.ceil(ref)


def test_sample_size_bonferroni_for_more_arms():
    got = sample_size(0.05, 0.005, arms=4)
    ref = sm_prop.samplesize_proportions_2indep_onetail(0.005, 0.05, 0.8, alpha=0.05 / 3)
    assert got["per_variant"] == math.ceil(ref) and got["alpha_per_comparison"] == 0.05 / 3
    assert got["total"] == 4 * got["per_variant"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"baseline": 0.0, "mde": 0.1}, "baseline"),
        ({"baseline": 0.05, "mde": 0.0}, "mde"),
        ({"baseline": 0.9, "mde": 0.2}, "mde"),
        ({"baseline": 0.05, "mde": 0.01, "power": 1.0}, "power"),
        ({"baseline": 0.05, "mde": 0.01, "arms": 1}, "arms"),
    ],
)
def test_sample_size_rejects_bad_input_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=field):
        sample_size(**kwargs)


# --- the results document ------------------------------------------------------------------


def _arms(*counts):
    return [ArmCounts(f"arm{i}", n, c, x) for i, (n, c, x) in enumerate(counts)]


def test_analyze_numbers_equal_the_reference_functions():
    doc = analyze(_arms((10_000, 900, 500), (10_000, 950, 580)), primary_metric="conversion")
    c = doc["metrics"]["conversion"]["comparisons"][0]
    z, p = sm_prop.proportions_ztest([580, 500], [10_000, 10_000])
    assert c["z_test"]["p_value"] == pytest.approx(p, abs=TOL)
    assert c["bayes"]["prob_beats_control"] == pytest.approx(
        _prob_b_beats_a(*_post(500, 10_000), *_post(580, 10_000)), abs=TOL
    )
    assert doc["arms"][1]["conversion_rate"] == 0.058
    assert _json_roundtrip(doc) == doc


@pytest.mark.parametrize(
    "counts",
    [
        [(0, 0, 0), (0, 0, 0)],  # n = 0
        [(1000, 0, 0), (1000, 0, 0)],  # zero conversions everywhere
        [(1000, 0, 0), (1000, 10, 10)],  # control rate 0
        [(1000, 1000, 1000), (1000, 1000, 1000)],  # 100% conversion
        [(1000, 1000, 1000), (1000, 990, 990)],
        [(0, 0, 0), (500, 20, 10)],
        [(1, 1, 1), (1, 0, 0)],
    ],
)
def test_analyze_edge_cases_are_json_safe(counts):
    doc = analyze(_arms(*counts), guardrails=["ctr"], mde=0.1)
    assert _json_roundtrip(doc) == doc
    assert doc["verdict"] in {
        "collecting",
        "srm_alert",
        "significant_win",
        "significant_loss",
        "no_detectable_difference",
        "guardrail_breached",
    }


def test_analyze_marks_undefined_lift_with_a_status():
    doc = analyze(_arms((1000, 0, 0), (1000, 10, 10)))
    lift = doc["metrics"]["conversion"]["comparisons"][0]["relative_lift"]
    assert lift["estimate"] is None and lift["status"] == "undefined: control rate is 0"


def test_verdict_srm_alert_marks_results_untrustworthy():
    doc = analyze(_arms((10_000, 0, 500), (11_000, 0, 550)))
    assert doc["verdict"] == "srm_alert" and doc["trustworthy"] is False


def test_verdict_collecting_below_minimum_exposures():
    assert analyze(_arms((50, 0, 5), (50, 0, 40)))["verdict"] == "collecting"


def test_verdict_significant_win_and_loss():
    win = analyze(_arms((20_000, 0, 1000), (20_000, 0, 1300)))
    assert win["verdict"] == "significant_win"
    loss = analyze(_arms((20_000, 0, 1300), (20_000, 0, 1000)))
    assert loss["verdict"] == "significant_loss"


def test_verdict_guardrail_breached_beats_a_win():
    doc = analyze(
        _arms((20_000, 4000, 1000), (20_000, 3000, 1300)),
        primary_metric="conversion",
        guardrails=["ctr"],
    )
    assert doc["verdict"] == "guardrail_breached"


def test_verdict_no_detectable_difference_once_the_plan_is_reached():
    arms = _arms((40_000, 0, 2000), (40_000, 0, 2010))
    assert analyze(arms, mde=0.1)["verdict"] == "no_detectable_difference"
    early = analyze(_arms((5000, 0, 250), (5000, 0, 251)), mde=0.1)
    assert early["verdict"] == "collecting"
    assert 0 < early["sample_size"]["progress"] < 1


def test_analyze_applies_the_correction_across_variants_and_metrics():
    arms = _arms((10_000, 900, 500), (10_000, 950, 560), (10_000, 1000, 540))
    doc = analyze(arms, guardrails=["ctr"], correction="holm")
    raw = [
        c["z_test"]["p_value"]
        for m in ("conversion", "ctr")
        for c in doc["metrics"][m]["comparisons"]
    ]
    adjusted = [
        c["z_test"]["p_value_adjusted"]
        for m in ("conversion", "ctr")
        for c in doc["metrics"][m]["comparisons"]
    ]
    assert adjusted == pytest.approx(list(sm_mt.multipletests(raw, method="holm")[1]), abs=1e-12)


def test_analyze_bandit_block_says_lifts_are_biased():
    doc = analyze(_arms((1000, 0, 50), (1000, 0, 70)), bandit=True, bandit_weights=[0.3, 0.7])
    assert "biased" in doc["bandit"]["note"]
    assert doc["bandit"]["allocation"] == {"arm0": 0.3, "arm1": 0.7}


def test_analyze_rejects_impossible_counts():
    with pytest.raises(InvalidCounts, match="arm0"):
        analyze([ArmCounts("arm0", 10, 0, 11), ArmCounts("arm1", 10, 0, 1)])


@pytest.mark.parametrize(("x0", "n0", "x1", "n1"), CASES[:4])
def test_a_mixture_of_taus_inverts_the_mean_likelihood_ratio(x0, n0, x1, n1):
    taus, alpha = [0.002, 0.01, 0.05], 0.05
    got = sequential_interval(x0, n0, x1, n1, taus, alpha)
    p0, p1 = x0 / n0, x1 / n1
    v = p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1
    d = p1 - p0

    def log_mean_lr(theta):  # log of the average of the normal-mixture likelihood ratios
        logs = [0.5 * math.log(v / (v + t * t)) + t * t * (d - theta) ** 2 / (2 * v * (v + t * t))
                for t in taus]
        return float(special.logsumexp(logs) - math.log(len(taus)))

    def root(theta):
        return log_mean_lr(theta) - math.log(1 / alpha)

    hi = optimize.brentq(root, d, d + 10)
    lo = optimize.brentq(root, d - 10, d)
    assert got["ci"] == pytest.approx([lo, hi], abs=TOL)
    assert got["p_value"] == pytest.approx(min(1.0, math.exp(-log_mean_lr(0.0))), abs=TOL)
    assert got["tau"] == taus


def test_without_a_plan_a_large_difference_is_seen_at_once():
    # one tau at a tenth of the pooled rate capped the evidence: 0/500 against 40/500 gave an
    # always-valid p of about 0.13 while the z-test's was about 1e-10
    from rankly.engine.experiments.stats import compare

    got = compare(0, 500, 40, 500)
    assert got["z_test"]["p_value"] < 1e-8
    assert got["sequential"]["p_value"] < 1e-4
    assert got["sequential"]["ci"][0] > 0


def test_peeking_with_the_default_mixture_keeps_false_positives_below_alpha():
    from rankly.engine.experiments.stats import _default_taus

    rng = np.random.default_rng(7)
    sims, looks, per_look, p = 300, 25, 400, 0.05
    x0 = rng.binomial(per_look, p, size=(sims, looks)).cumsum(axis=1)
    x1 = rng.binomial(per_look, p, size=(sims, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    rejected = sum(
        any(sequential_interval(int(x0[s, t]), int(n[t]), int(x1[s, t]), int(n[t]),
                                _default_taus(int(x0[s, t] + x1[s, t]), int(2 * n[t])))
            ["p_value"] < 0.05 for t in range(looks))
        for s in range(sims))
    assert rejected / sims < 0.05
