"""Result statistics for experiments: frequentist, Bayesian and sequential, all JSON-safe.

Every public function returns plain dicts/lists of str, int, float, bool and None. Undefined
quantities are None with a ``status`` string saying why; NaN and infinity never escape.
Formulas are documented in docs/experiments.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .assignment import weight_shares


class _LazyScipyStats:
    """``scipy.stats``, imported on first use.

    Importing it is ~0.7 s of a server's ~1 s of imports, and only experiment analysis and
    bandit reweighting need it: a server that starts while Redis is down must answer within
    2 s of launch (#9). The app preloads it in a thread once it is serving (``app.py``).
    """

    def __getattr__(self, name: str) -> Any:
        from scipy import stats

        return getattr(stats, name)


st = _LazyScipyStats()

DEFAULT_ALPHA = 0.05
SRM_THRESHOLD = 0.001
MIN_EXPOSURES = 100
BANDIT_NOTE = (
    "Bandit allocation adapts to the data, so per-arm rates and lifts computed from its "
    "traffic are biased estimates; use P(best) to choose, not the lift."
)
OK = "ok"

# Gauss-Legendre nodes on [-1, 1] for the composite quadrature of Beta posteriors.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(20)
# Posterior quantiles used as panel edges: panels are narrow where any density changes fast.
_EDGE_Q = np.array(
    [
        1e-13,
        1e-9,
        1e-6,
        1e-4,
        1e-3,
        0.01,
        0.05,
        0.15,
        0.3,
        0.5,
        0.7,
        0.85,
        0.95,
        0.99,
        0.999,
        0.9999,
        1 - 1e-6,
        1 - 1e-9,
        1 - 1e-13,
    ]
)


class InvalidCounts(ValueError):
    """Counts that cannot be analysed (negative, or more successes than exposures)."""


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """Per-variant totals. ``clicks`` and ``conversions`` count *users* (at most one each per
    exposure), so each metric is a binomial proportion of ``exposures``."""

    name: str
    exposures: int
    clicks: int = 0
    conversions: int = 0

    def successes(self, metric: str) -> int:
        return self.clicks if metric == "ctr" else self.conversions

    def check(self) -> None:
        for label, value in (
            ("exposures", self.exposures),
            ("clicks", self.clicks),
            ("conversions", self.conversions),
        ):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
                raise InvalidCounts(f"arm {self.name!r}: {label}: expected a non-negative integer")
        if self.clicks > self.exposures or self.conversions > self.exposures:
            raise InvalidCounts(
                f"arm {self.name!r}: clicks and conversions must not exceed exposures"
            )


def finite(x: float | None) -> float | None:
    """Return ``x`` as a float, or None when it is None, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def rate(successes: int, n: int) -> float | None:
    """Return ``successes / n``, or None for ``n == 0``."""
    return successes / n if n > 0 else None


# --- frequentist --------------------------------------------------------------------------


def z_test_pooled(x0: int, n0: int, x1: int, n1: int) -> dict[str, Any]:
    """Two-sided pooled two-proportion z-test of ``p1 == p0``.

    ``z = (p1 - p0) / sqrt(p(1-p)(1/n0 + 1/n1))`` with ``p = (x0+x1)/(n0+n1)``. Equals
    statsmodels ``proportions_ztest`` and the uncorrected 2x2 chi-square test.
    """
    if n0 == 0 or n1 == 0:
        return {"z": None, "p_value": None, "status": "no_data"}
    p = (x0 + x1) / (n0 + n1)
    se = math.sqrt(p * (1 - p) * (1 / n0 + 1 / n1))
    if se == 0.0:
        return {"z": None, "p_value": None, "status": "undefined: no variance (all 0% or 100%)"}
    z = (x1 / n1 - x0 / n0) / se
    return {"z": z, "p_value": float(2 * st.norm.sf(abs(z))), "status": OK}


def diff_interval(x0: int, n0: int, x1: int, n1: int, alpha: float = DEFAULT_ALPHA) -> dict:
    """Absolute difference ``p1 - p0`` with an unpooled Wald interval (statsmodels ``wald``)."""
    if n0 == 0 or n1 == 0:
        return {"estimate": None, "ci": None, "status": "no_data"}
    p0, p1 = x0 / n0, x1 / n1
    se = math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    h = float(st.norm.isf(alpha / 2)) * se
    status = OK if se > 0 else "degenerate: zero variance in both arms"
    return {"estimate": p1 - p0, "ci": [p1 - p0 - h, p1 - p0 + h], "se": se, "status": status}


def relative_lift(x0: int, n0: int, x1: int, n1: int, alpha: float = DEFAULT_ALPHA) -> dict:
    """Relative lift ``p1/p0 - 1`` with a delta-method interval and its own Wald p-value.

    ``Var ~= p1(1-p1)/(n1 p0^2) + p1^2 p0(1-p0)/(n0 p0^4)``; ``p = 2 sf(|lift| / se)``.
    """
    if n0 == 0 or n1 == 0:
        return {"estimate": None, "ci": None, "p_value": None, "status": "no_data"}
    p0, p1 = x0 / n0, x1 / n1
    if p0 == 0.0:
        return {
            "estimate": None,
            "ci": None,
            "p_value": None,
            "status": "undefined: control rate is 0",
        }
    lift = p1 / p0 - 1
    var = p1 * (1 - p1) / (n1 * p0**2) + p1**2 * p0 * (1 - p0) / (n0 * p0**4)
    se = math.sqrt(var)
    if se == 0.0:
        return {
            "estimate": lift,
            "ci": [lift, lift],
            "se": 0.0,
            "p_value": None,
            "status": "undefined: zero variance in both arms",
        }
    h = float(st.norm.isf(alpha / 2)) * se
    p = float(2 * st.norm.sf(abs(lift) / se))
    return {"estimate": lift, "ci": [lift - h, lift + h], "se": se, "p_value": p, "status": OK}


def sequential_interval(
    x0: int, n0: int, x1: int, n1: int, tau: float | Sequence[float],
    alpha: float = DEFAULT_ALPHA
) -> dict:
    """Always-valid interval and p-value for ``p1 - p0`` (normal-mixture mSPRT).

    With ``d`` the observed difference, ``V = p0(1-p0)/n0 + p1(1-p1)/n1`` (the pooled
    ``pbar(1-pbar)(1/n0 + 1/n1)`` when that is 0 and ``d`` is not) and mixture
    variance ``tau^2`` (fixed in advance):
    ``half = sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))`` and
    ``p = min(1, sqrt((V + tau^2) / V) * exp(-tau^2 d^2 / (2 V (V + tau^2))))``
    (Johari et al. 2017; Howard et al. 2021). Valid at every sample size at once, so looking
    every day does not inflate the false-positive rate; ``p <= alpha`` iff 0 is outside.
    Several ``tau`` mix their likelihood ratios with equal weights (:func:`msprt`).
    """
    if n0 == 0 or n1 == 0:
        return {"ci": None, "p_value": None, "tau": tau, "status": "no_data"}
    p0, p1 = x0 / n0, x1 / n1
    v = p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1
    if v == 0.0 and p0 != p1:
        # NOTE: one arm at 0% and the other at 100%: the plug-in variance is 0, the pooled
        # (null) variance of the z-test is not, and the difference is then overwhelming
        pooled = (x0 + x1) / (n0 + n1)
        v = pooled * (1 - pooled) * (1 / n0 + 1 / n1)
    return msprt(p1 - p0, v, tau, alpha)


#: Without a planned minimum detectable effect, the always-valid test mixes these multiples of
#: the pooled rate as ``tau``, with equal weights. An average of test martingales is one, so the
#: p-value stays valid at every look; a single guess far below the true difference caps the
#: evidence the test can gather, however large the difference (mSPRT's known weakness).
TAU_MULTIPLES = (0.1, 0.3, 1.0, 3.0)


def _log_lr(delta: float, v: float, t2: float) -> float:
    """Log of the normal-mixture likelihood ratio (mixture variance ``t2``) of a difference
    ``delta`` from the null, estimate variance ``v``."""
    return 0.5 * math.log(v / (v + t2)) + t2 * delta * delta / (2 * v * (v + t2))


def msprt(d: float, v: float, tau: float | Sequence[float],
          alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Always-valid interval and p-value for a difference ``d`` with variance ``v`` (the
    normal-mixture formulas of :func:`sequential_interval`, for any asymptotically normal
    difference: the per-impression metrics pass their user-clustered variance).

    ``tau`` may be several mixture scales: the likelihood ratio is then their equal-weight
    average, ``p = min(1, 1 / mean_k LR_k(d))``, and the interval is every ``d0`` with
    ``mean_k LR_k(d - d0) < 1 / alpha`` (found by bisection; the closed form holds for one)."""
    taus = [float(tau)] if isinstance(tau, int | float) else [float(t) for t in tau]
    shown: float | list[float] = taus[0] if len(taus) == 1 else taus
    if v == 0.0 or not taus or min(taus) <= 0.0:
        return {"ci": None, "p_value": None, "tau": shown, "status": "undefined: zero variance"}
    if len(taus) == 1:
        t2 = taus[0] ** 2
        half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
        p = min(1.0, math.exp(-_log_lr(d, v, t2)))
        return {"ci": [d - half, d + half], "p_value": p, "tau": shown, "status": OK}
    squares = [t * t for t in taus]

    def log_mean_lr(delta: float) -> float:
        logs = [_log_lr(delta, v, t2) for t2 in squares]
        top = max(logs)
        return top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))

    p = min(1.0, math.exp(-log_mean_lr(d)))
    target = math.log(1 / alpha)
    # the mean reaches 1/alpha by the widest single-tau half-width, where each term does
    hi = max(math.sqrt(v * (v + t2) / t2 * (2 * target + math.log((v + t2) / v)))
             for t2 in squares)
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_mean_lr(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-300):
            break
    return {"ci": [d - hi, d + hi], "p_value": p, "tau": shown, "status": OK}


def srm_test(exposures: Sequence[int], weights: Sequence[float]) -> dict[str, Any]:
    """Sample-ratio-mismatch chi-square test of exposures against configured weights.

    ``alert`` is true below p = 0.001; results with an alert are not trustworthy.
    """
    n = np.asarray(exposures, dtype=float)
    w = np.asarray(weights, dtype=float)
    total = float(n.sum())
    if len(n) != len(w) or len(n) < 2:
        raise ValueError("srm_test: one weight per arm, at least 2 arms")
    if total == 0:
        return {
            "chi2": None,
            "p_value": None,
            "alert": False,
            "expected": [0.0] * len(n),
            "status": "no_data",
        }
    w = np.asarray(weight_shares(weights))
    expected = total * w
    if np.any((expected == 0) & (n > 0)):
        return {
            "chi2": None,
            "p_value": 0.0,
            "alert": True,
            "expected": expected.tolist(),
            "status": "exposures in an arm with weight 0",
        }
    keep = expected > 0
    chi2 = float(np.sum((n[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    p = float(st.chi2.sf(chi2, dof)) if dof > 0 else 1.0
    return {
        "chi2": chi2,
        "p_value": p,
        "alert": p < SRM_THRESHOLD,
        "expected": expected.tolist(),
        "status": OK,
    }


def adjust_pvalues(p_values: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """Adjust a family of p-values (``holm`` or ``bh``); None entries stay None, not counted.

    Holm: ``adj(i) = max_{j<=i} min(1, (m-j+1) p(j))``. Benjamini-Hochberg:
    ``adj(i) = min_{j>=i} min(1, m p(j) / j)``, over the ascending order ``p(1) <= ...``.
    """
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    m = len(idx)
    if m == 0:
        return out
    order = sorted(idx, key=lambda i: p_values[i])  # type: ignore[arg-type,return-value]
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p_values[i]))  # type: ignore[operator]
            out[i] = running
    elif method == "bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, min(1.0, m * p_values[i] / (rank + 1)))  # type: ignore[operator]
            out[i] = running
    else:
        raise ValueError(f"correction: expected holm or bh, got {method!r}")
    return out


# --- Bayesian (Beta-Binomial, uniform prior) -------------------------------------------------


def _posteriors(successes: Sequence[int], trials: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    return 1.0 + s, 1.0 + n - s


def _nodes(a: np.ndarray, b: np.ndarray, over: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes/weights covering arm ``over``'s posterior support.

    Panels end at posterior quantiles of every arm, so a narrow posterior's CDF step falls on
    panel edges and is resolved; 20-point Gauss-Legendre on each panel.
    """
    edges = st.beta.ppf(_EDGE_Q[None, :], a[:, None], b[:, None]).ravel()
    lo = st.beta.ppf(_EDGE_Q[0], a[over], b[over])
    hi = st.beta.isf(_EDGE_Q[0], a[over], b[over])
    edges = np.unique(np.clip(np.concatenate([edges, [lo, hi]]), lo, hi))
    left, right = edges[:-1], edges[1:]
    half = (right - left) / 2
    x = (left[:, None] + half[:, None] * (_GL_X[None, :] + 1)).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    return x, w


def prob_best(successes: Sequence[int], trials: Sequence[int]) -> list[float]:
    """Return P(arm k has the highest rate) for every arm, by numerical integration.

    ``P_k = integral f_k(x) prod_{j != k} F_j(x) dx`` with Beta(1 + s, 1 + n - s) posteriors.
    """
    a, b = _posteriors(successes, trials)
    k = len(a)
    out = []
    for i in range(k):
        x, w = _nodes(a, b, i)
        integrand = st.beta.pdf(x, a[i], b[i])
        for j in range(k):
            if j != i:
                integrand = integrand * st.beta.cdf(x, a[j], b[j])
        out.append(float(np.clip(np.dot(w, integrand), 0.0, 1.0)))
    return out


def prob_beats(x0: int, n0: int, x1: int, n1: int) -> float:
    """Return P(p1 > p0) under independent Beta(1 + x, 1 + n - x) posteriors."""
    return prob_best([x0, x1], [n0, n1])[1]


def expected_loss(x0: int, n0: int, x1: int, n1: int) -> float:
    """Return E[max(p0 - p1, 0)]: the expected rate given up by choosing arm 1 over arm 0.

    ``= integral f_1(t) [mu_0 (1 - G_0(t)) - t (1 - F_0(t))] dt`` where ``G_0`` is the CDF of
    Beta(a0 + 1, b0) (the size-biased posterior); one-dimensional numerical integration.
    """
    a, b = _posteriors([x0, x1], [n0, n1])
    x, w = _nodes(a, b, 1)
    mu0 = a[0] / (a[0] + b[0])
    inner = mu0 * st.beta.sf(x, a[0] + 1, b[0]) - x * st.beta.sf(x, a[0], b[0])
    value = float(np.dot(w, st.beta.pdf(x, a[1], b[1]) * inner))
    return max(value, 0.0)


# --- sample size ----------------------------------------------------------------------------


def sample_size(
    baseline: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    arms: int = 2,
    pooled: bool = True,
    bonferroni: bool = True,
    daily_traffic: float | None = None,
) -> dict[str, Any]:
    """Return the per-variant sample size to detect ``mde`` with a two-sided z-test.

    ``p1 = baseline``, ``p2 = baseline * (1 + mde)`` if ``relative`` else ``baseline + mde``.
    Pooled (default): ``n = (z_a sqrt(2 pbar qbar) + z_b sqrt(p1 q1 + p2 q2))^2 / (p2 - p1)^2``;
    unpooled: ``n = (z_a + z_b)^2 (p1 q1 + p2 q2) / (p2 - p1)^2``; ``z_a = z(1 - alpha'/2)``.
    With more than 2 arms and ``bonferroni``, ``alpha' = alpha / (arms - 1)`` (one comparison
    per variant against control). Rounded up. Duration is ``ceil(n * arms / daily_traffic)``
    days, where ``daily_traffic`` counts users entering the experiment per day.
    Raises ValueError naming the argument when the inputs do not define a test.
    """
    if not 0.0 < baseline < 1.0:
        raise ValueError("baseline: expected a rate strictly between 0 and 1")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError("mde: expected a non-zero finite number")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha: expected a number in (0, 1)")
    if not 0.0 < power < 1.0:
        raise ValueError("power: expected a number in (0, 1)")
    if arms < 2:
        raise ValueError("arms: expected at least 2")
    if daily_traffic is not None and not daily_traffic > 0:
        raise ValueError("daily_traffic: expected a positive number")
    p1 = baseline
    p2 = baseline * (1 + mde) if relative else baseline + mde
    if not 0.0 < p2 < 1.0:
        raise ValueError("mde: baseline + effect must stay strictly between 0 and 1")
    alpha_eff = alpha / (arms - 1) if bonferroni and arms > 2 else alpha
    za = float(st.norm.isf(alpha_eff / 2))
    zb = float(st.norm.ppf(power))
    delta = p2 - p1
    var_alt = p1 * (1 - p1) + p2 * (1 - p2)
    if pooled:
        pbar = (p1 + p2) / 2
        top = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(var_alt)) ** 2
    else:
        top = (za + zb) ** 2 * var_alt
    # NOTE: an effect whose square underflows (or whose size overflows) has no size to plan
    raw = top / delta**2 if delta**2 > 0 else math.inf
    if not math.isfinite(raw):
        raise ValueError("mde: too small an effect to plan a sample size for")
    n = math.ceil(raw - 1e-9)  # guard against 1e-12 float noise turning 100 into 101
    total = n * arms
    days = math.ceil(total / daily_traffic) if daily_traffic else None
    return {
        "per_variant": n,
        "total": total,
        "arms": arms,
        "baseline": p1,
        "target": p2,
        "mde_absolute": delta,
        "mde_relative": delta / p1,
        "alpha": alpha,
        "alpha_per_comparison": alpha_eff,
        "power": power,
        "formula": "pooled" if pooled else "unpooled",
        "daily_traffic": daily_traffic,
        "days": days,
    }


# --- per-impression metrics: ratios with a user-clustered variance ---------------------------

#: Per-user counts kept for the per-impression metrics: impressions, clicks, conversions.
KINDS = ("n", "x", "c")
#: Which per-user count is the numerator of each per-impression metric.
NUMERATOR = {"ctr": "x", "conversion": "c"}
#: The per-impression metrics an experiment can judge by (``primary_metric``, ``guardrails``),
#: by their name there, and the ``per_impression`` metric each one reads.
IMPRESSION_METRICS = {"impression_ctr": "ctr", "impression_conversion": "conversion"}
#: Every metric name an experiment accepts: per user (exposed users who clicked or
#: converted) and per impression.
METRICS = ("ctr", "conversion", *IMPRESSION_METRICS)
_ARM_LABEL = {"ctr": "ctr", "conversion": "conversion_rate"}  # as in the per-user arms
IMPRESSION_METHOD = (
    "ratio of sums over users; variance by the delta method with users as clusters "
    "(Deng et al. 2018), since impressions of one user are correlated"
)


def moment_keys() -> tuple[str, ...]:
    """The names of the running sums behind the per-impression metrics: ``users``, each
    count's sum (``n``, ``x``, ``c``) and every product's sum (``nn``, ``cx``, ...)."""
    pairs = sorted({"".join(sorted(a + b)) for a in KINDS for b in KINDS})
    return ("users", *KINDS, *pairs)


def bump_moments(moments: dict[str, int], counts: dict[str, int], kind: str, k: int) -> None:
    """Add ``k`` to one user's count ``kind`` and keep ``moments`` equal to the sums over
    users of the counts, their squares and their products, in O(1).

    ``counts`` is the user's own ``{kind: count}`` (updated in place); a user is added to
    ``users`` on its first non-zero count. The order of the updates does not matter. The
    Redis tracker runs the same arithmetic in a Lua script.
    """
    if k == 0:
        return
    if not any(counts.get(f, 0) for f in KINDS):
        moments["users"] = moments.get("users", 0) + 1
    cur = counts.get(kind, 0)
    for f in KINDS:
        pair = "".join(sorted(f + kind))
        add = 2 * cur * k + k * k if f == kind else counts.get(f, 0) * k
        moments[pair] = moments.get(pair, 0) + add
    moments[kind] = moments.get(kind, 0) + k
    counts[kind] = cur + k


@dataclass(frozen=True, slots=True)
class ImpressionCounts:
    """One variant's per-impression data: the running sums of :func:`moment_keys` over the
    users who were served by it (``n``: impressions, ``x``: clicks and ``c``: conversions on
    served items, each counted once per impression)."""

    name: str
    moments: Mapping[str, int]

    @classmethod
    def of_users(cls, name: str, rows: Sequence[Mapping[str, int]]) -> ImpressionCounts:
        """The sums over per-user counts ``{"n": ..., "x": ..., "c": ...}``."""
        moments: dict[str, int] = {}
        for row in rows:
            counts: dict[str, int] = {}
            for kind in KINDS:
                bump_moments(moments, counts, kind, int(row.get(kind, 0)))
        return cls(name, moments)

    def get(self, key: str) -> int:
        return int(self.moments.get(key, 0))

    def check(self) -> None:
        for key in moment_keys():
            if self.get(key) < 0:
                raise InvalidCounts(f"arm {self.name!r}: per-impression {key} is negative")


def ratio_estimate(arm: ImpressionCounts, metric: str) -> dict[str, Any]:
    """Per-impression rate ``R = sum x_i / sum n_i`` of one arm and its clustered variance.

    ``Var(R) = U / (U - 1) * sum_i (x_i - R n_i)^2 / (sum_i n_i)^2`` over the ``U`` users,
    which is the delta-method variance of a ratio of means with sample (co)variances. It is
    computed from the running sums with exact integers, so it is never negative.
    ``design_effect`` is that variance over the binomial one, ``R (1 - R) / sum n_i``, which
    treats impressions as independent.
    """
    kind = NUMERATOR[metric]
    u, sn, sx = arm.get("users"), arm.get("n"), arm.get(kind)
    out: dict[str, Any] = {"rate": rate(sx, sn), "var": None, "se": None,
                           "design_effect": None, "status": OK}
    if sn == 0:
        out["status"] = "no_data"
        return out
    if u < 2:
        out["status"] = "undefined: fewer than 2 users"
        return out
    sxx = arm.get(kind + kind)
    sxn = arm.get("".join(sorted(kind + "n")))
    snn = arm.get("nn")
    # sn^2 * sum (x_i - R n_i)^2, expanded over the running sums
    num = sxx * sn * sn - 2 * sx * sn * sxn + sx * sx * snn
    var = u * num / ((u - 1) * sn**4)
    out["var"], out["se"] = var, math.sqrt(var)
    r = sx / sn
    if 0.0 < r < 1.0:
        out["design_effect"] = var / (r * (1 - r) / sn)
    return out


def compare_ratio(e0: Mapping[str, Any], e1: Mapping[str, Any], *, alpha: float = DEFAULT_ALPHA,
                  tau: float | None = None) -> dict[str, Any]:
    """Compare one variant's per-impression rate with control's (:func:`ratio_estimate`
    outputs): Wald interval and z-test on ``R1 - R0`` with ``Var = Var0 + Var1`` (arms are
    independent groups of users), the delta-method relative lift, and the always-valid
    interval of :func:`msprt`."""
    r0, r1 = e0["rate"], e1["rate"]
    out: dict[str, Any] = {"rate": r1, "control_rate": r0}
    if e0["var"] is None or e1["var"] is None:
        status = e0["status"] if e0["var"] is None else e1["status"]
        out.update(diff={"estimate": None, "ci": None, "se": None, "status": status},
                   relative_lift={"estimate": None, "ci": None, "p_value": None,
                                  "status": status},
                   z_test={"z": None, "p_value": None, "status": status},
                   sequential={"ci": None, "p_value": None, "tau": tau, "status": status})
        return out
    d, v0, v1 = r1 - r0, e0["var"], e1["var"]
    se = math.sqrt(v0 + v1)
    zq = float(st.norm.isf(alpha / 2))
    if se == 0.0:
        out["diff"] = {"estimate": d, "ci": [d, d], "se": 0.0,
                       "status": "degenerate: zero variance in both arms"}
        out["z_test"] = {"z": None, "p_value": None, "status": "undefined: zero variance"}
    else:
        z = d / se
        out["diff"] = {"estimate": d, "ci": [d - zq * se, d + zq * se], "se": se, "status": OK}
        out["z_test"] = {"z": z, "p_value": float(2 * st.norm.sf(abs(z))), "status": OK}
    if r0 == 0.0:
        out["relative_lift"] = {"estimate": None, "ci": None, "p_value": None,
                                "status": "undefined: control rate is 0"}
    else:
        lift = r1 / r0 - 1
        lse = math.sqrt(v1 / r0**2 + r1**2 * v0 / r0**4)
        out["relative_lift"] = (
            {"estimate": lift, "ci": [lift - zq * lse, lift + zq * lse], "se": lse,
             "p_value": float(2 * st.norm.sf(abs(lift) / lse)), "status": OK} if lse > 0 else
            {"estimate": lift, "ci": [lift, lift], "se": 0.0, "p_value": None,
             "status": "undefined: zero variance in both arms"})
    if tau is None:
        pooled = (r0 + r1) / 2
        out["sequential"] = msprt(d, v0 + v1, [max(m * pooled, 1e-4) for m in TAU_MULTIPLES],
                                  alpha)
    else:
        out["sequential"] = msprt(d, v0 + v1, tau, alpha)
    return out


def _join_family(c: dict[str, Any], arm: Any, metric: str, j: int,
                 comparisons: list[dict[str, Any]], family: list[tuple[str, int]],
                 fixed_p: list[float | None], seq_p: list[float | None]) -> None:
    """Record comparison ``c`` of variant ``arm`` (the ``j``-th) on ``metric`` in its list and
    in the multiple-testing family :func:`_judge_family` adjusts."""
    c["variant"] = arm.name
    comparisons.append(c)
    family.append((metric, j))
    fixed_p.append(c["z_test"]["p_value"])
    seq_p.append(c["sequential"]["p_value"])


def _ratio_metric(metric: str, arms: Sequence[Any], estimates: Sequence[dict[str, Any]],
                  alpha: float, tau: float | None, family: list[tuple[str, int]],
                  fixed_p: list[float | None], seq_p: list[float | None]) -> dict[str, Any]:
    """A per-impression metric's rates and each variant's comparison with the control (the
    first arm), its tests joined to the family."""
    comparisons: list[dict[str, Any]] = []
    for j, arm in enumerate(arms[1:]):
        c = compare_ratio(estimates[0], estimates[j + 1], alpha=alpha, tau=tau)
        _join_family(c, arm, metric, j, comparisons, family, fixed_p, seq_p)
    return {"rates": {a.name: e["rate"] for a, e in zip(arms, estimates, strict=True)},
            "comparisons": comparisons}


def analyze_impressions(arms: Sequence[ImpressionCounts], *, alpha: float = DEFAULT_ALPHA,
                        correction: str = "holm", reached: bool = False) -> dict[str, Any]:
    """The per-impression part of the results (the first arm is the control).

    For CTR (clicks on served items per impression) and conversion (conversions on served
    items per impression): each arm's rate with its user-clustered standard error, and each
    variant against control. The p-values of both metrics and all variants form one family,
    adjusted with ``correction``; a comparison is significant under the rule of
    :func:`analyze` (the always-valid p-value at any time, the z-test once ``reached``).
    """
    for arm in arms:
        arm.check()
    control = arms[0]
    est = {m: [ratio_estimate(a, m) for a in arms] for m in NUMERATOR}
    metrics: dict[str, Any] = {}
    family: list[tuple[str, int]] = []
    fixed_p: list[float | None] = []
    seq_p: list[float | None] = []
    for metric, estimates in est.items():
        metrics[metric] = _ratio_metric(metric, arms, estimates, alpha, None,
                                        family, fixed_p, seq_p)
    _judge_family(metrics, family, fixed_p, seq_p, correction, alpha, reached)
    return {
        "method": IMPRESSION_METHOD,
        "control": control.name,
        "arms": [
            {"name": a.name, "users": a.get("users"), "impressions": a.get("n"),
             "clicks": a.get("x"), "conversions": a.get("c"),
             **{f"{label}{part}": est[m][i][key] for m, label in _ARM_LABEL.items()
                for part, key in (("", "rate"), ("_se", "se"),
                                  ("_design_effect", "design_effect"))}}
            for i, a in enumerate(arms)
        ],
        "metrics": metrics,
    }


# --- the results document ------------------------------------------------------------------


def compare(
    x0: int, n0: int, x1: int, n1: int, *, alpha: float = DEFAULT_ALPHA, tau: float | None = None
) -> dict[str, Any]:
    """Compare one variant with control on one proportion metric (all statistics, one dict)."""
    r0, r1 = rate(x0, n0), rate(x1, n1)
    taus = _default_taus(x0 + x1, n0 + n1) if tau is None else tau
    return {
        "rate": r1,
        "control_rate": r0,
        "diff": diff_interval(x0, n0, x1, n1, alpha),
        "relative_lift": relative_lift(x0, n0, x1, n1, alpha),
        "z_test": z_test_pooled(x0, n0, x1, n1),
        "sequential": sequential_interval(x0, n0, x1, n1, taus, alpha),
        "bayes": {
            "prob_beats_control": prob_beats(x0, n0, x1, n1),
            "expected_loss": expected_loss(x0, n0, x1, n1),
            "expected_loss_control": expected_loss(x1, n1, x0, n0),
        },
    }


def _default_taus(successes: int, trials: int) -> list[float]:
    # NOTE: tau should be fixed before the data; without a planned MDE we mix multiples of
    # the pooled rate (a plug-in, like the variance; TAU_MULTIPLES), floored so no tau
    # collapses to 0.
    p = successes / trials if trials else 0.0
    return [max(m * p, 1e-4) for m in TAU_MULTIPLES]


def analyze(
    arms: Sequence[ArmCounts],
    weights: Sequence[float] | None = None,
    primary_metric: str = "conversion",
    *,
    guardrails: Sequence[str] = (),
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    mde: float | None = None,
    mde_relative: bool = True,
    power: float = 0.8,
    daily_traffic: float | None = None,
    min_exposures: int = MIN_EXPOSURES,
    bandit: bool = False,
    bandit_weights: Sequence[float] | None = None,
    impressions: Sequence[ImpressionCounts] | None = None,
) -> dict[str, Any]:
    """Return the results document of an experiment (the first arm is the control).

    ``weights`` are the configured traffic shares (default equal) used by the SRM test.
    Significance per (variant, metric) is decided on p-values adjusted with ``correction``
    across all variants and metrics: the always-valid p-value at any time, or the pooled z-test
    once the planned sample size (from ``mde``) is reached. The verdict is the first that
    applies of: srm_alert, collecting, guardrail_breached, significant_win, significant_loss,
    collecting (planned sample not reached), no_detectable_difference.
    ``impressions`` (per-impression data, in the order of ``arms``) adds ``per_impression``
    (:func:`analyze_impressions`). The primary metric and guardrails may be per-impression
    ones (:data:`IMPRESSION_METRICS`, which need ``impressions``): they are compared with
    :func:`compare_ratio` (user-clustered variance) and join the same family of p-values;
    an ``mde`` then plans impressions (the binomial size times control's design effect).
    Raises InvalidCounts for impossible counts and ValueError for bad arguments.
    """
    if len(arms) < 2:
        raise ValueError("arms: expected at least 2 (control first)")
    for arm in arms:
        arm.check()
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError("arms: names must be unique")
    choices = ", ".join(METRICS)
    if primary_metric not in METRICS:
        raise ValueError(f"primary_metric: expected one of {choices}, got {primary_metric!r}")
    for g in guardrails:
        if g not in METRICS:
            raise ValueError(f"guardrails: expected one of {choices}, got {g!r}")
    per_impression = [m for m in (primary_metric, *guardrails) if m in IMPRESSION_METRICS]
    if per_impression and impressions is None:
        raise ValueError(f"{per_impression[0]}: needs per-impression counts")
    if bandit and primary_metric in IMPRESSION_METRICS:
        raise ValueError("primary_metric: a bandit allocates by a per-user metric")
    if impressions is not None and [a.name for a in impressions] != names:
        raise ValueError("impressions: expected one entry per arm, in the arms' order")
    if correction not in ("holm", "bh"):
        raise ValueError(f"correction: expected holm or bh, got {correction!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha: expected a number in (0, 1)")
    if weights is None:
        weights = [1.0] * len(arms)
    if len(weights) != len(arms) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights: expected one non-negative weight per arm")
    shares = list(weight_shares(weights))

    control, variants = arms[0], arms[1:]
    metrics = [primary_metric] + [g for g in dict.fromkeys(guardrails) if g != primary_metric]

    plan = None
    n_c = control.exposures
    ratios = ({m: [ratio_estimate(a, IMPRESSION_METRICS[m]) for a in impressions]
               for m in dict.fromkeys(per_impression)} if impressions is not None else {})
    if mde is not None:
        try:
            if primary_metric in ratios:
                plan = impression_plan(ratios[primary_metric][0], mde, relative=mde_relative,
                                       alpha=alpha, power=power, arms=len(arms))
            else:
                plan = sample_size(
                    rate(control.successes(primary_metric), n_c) or 0.0,
                    mde,
                    relative=mde_relative,
                    alpha=alpha,
                    power=power,
                    arms=len(arms),
                    daily_traffic=daily_traffic,
                )
                plan["unit"] = "exposures"
            plan["status"] = OK
        except ValueError as exc:
            plan = {"per_variant": None, "status": f"undefined: {exc}"}
    min_exposed = min(a.exposures for a in arms)
    min_n = min_exposed
    if primary_metric in ratios:
        min_n = min(a.get("n") for a in impressions or ())
    planned_n = plan["per_variant"] if plan else None
    if planned_n:
        plan["progress"] = min(1.0, min_n / planned_n)
    reached = bool(planned_n) and min_n >= planned_n

    results: dict[str, Any] = {}
    family: list[tuple[str, int]] = []
    fixed_p: list[float | None] = []
    seq_p: list[float | None] = []
    for metric in metrics:
        tau = None
        if mde is not None and metric == primary_metric and plan and plan.get("per_variant"):
            tau = abs(plan["mde_absolute"])
        if metric in ratios:
            results[metric] = {"per_impression": True, **_ratio_metric(
                metric, arms, ratios[metric], alpha, tau, family, fixed_p, seq_p)}
            continue
        x0 = control.successes(metric)
        comparisons = []
        for j, arm in enumerate(variants):
            c = compare(x0, n_c, arm.successes(metric), arm.exposures, alpha=alpha, tau=tau)
            _join_family(c, arm, metric, j, comparisons, family, fixed_p, seq_p)
        pb = prob_best([a.successes(metric) for a in arms], [a.exposures for a in arms])
        results[metric] = {
            "rates": {a.name: rate(a.successes(metric), a.exposures) for a in arms},
            "p_best": dict(zip(names, pb, strict=True)),
            "comparisons": comparisons,
        }
    _judge_family(results, family, fixed_p, seq_p, correction, alpha, reached)

    if bandit:
        # NOTE: a bandit's exposures follow the weights of every epoch it has been through;
        # a test against the current ones alerts on every bandit that moved its traffic
        srm = {"chi2": None, "p_value": None, "alert": False, "expected": None,
               "status": "not applicable: a bandit moves its weights"}
    else:
        srm = srm_test([a.exposures for a in arms], shares)
    verdict, reason = _verdict(
        results, primary_metric, metrics[1:], srm, min_exposed, min_exposures, plan, reached
    )
    doc: dict[str, Any] = {
        "verdict": verdict,
        "verdict_reason": reason,
        "trustworthy": not srm["alert"],
        "control": control.name,
        "primary_metric": primary_metric,
        "guardrails": metrics[1:],
        "alpha": alpha,
        "correction": correction,
        "arms": [
            {
                "name": a.name,
                "weight": s,
                "exposures": a.exposures,
                "clicks": a.clicks,
                "conversions": a.conversions,
                "ctr": rate(a.clicks, a.exposures),
                "conversion_rate": rate(a.conversions, a.exposures),
            }
            for a, s in zip(arms, shares, strict=True)
        ],
        "srm": srm,
        "metrics": results,
        "sample_size": plan,
    }
    if impressions is not None:
        doc["per_impression"] = analyze_impressions(impressions, alpha=alpha,
                                                    correction=correction, reached=reached)
    if bandit:
        bw = list(bandit_weights) if bandit_weights is not None else shares
        doc["bandit"] = {
            "p_best": results[primary_metric]["p_best"],
            "allocation": dict(zip(names, (float(w) for w in bw), strict=True)),
            "note": BANDIT_NOTE,
        }
    return json_safe(doc)


def impression_plan(control: Mapping[str, Any], mde: float, *, relative: bool, alpha: float,
                    power: float, arms: int) -> dict[str, Any]:
    """The planned impressions per variant for a per-impression primary metric: the
    binomial :func:`sample_size` at control's rate, times control's design effect (at least
    1: impressions of one user are correlated, so they carry less than independent ones)."""
    plan = sample_size(control["rate"] or 0.0, mde, relative=relative, alpha=alpha,
                       power=power, arms=arms)
    effect = max(control["design_effect"] or 1.0, 1.0)
    plan["binomial_per_variant"] = plan["per_variant"]
    plan["design_effect"] = effect
    plan["per_variant"] = math.ceil(plan["per_variant"] * effect)
    plan["total"] = plan["per_variant"] * arms
    plan["unit"] = "impressions"
    return plan


def _verdict(
    results: Mapping[str, Any],
    primary: str,
    guardrails: Sequence[str],
    srm: Mapping[str, Any],
    min_n: int,
    min_exposures: int,
    plan: Mapping[str, Any] | None,
    reached: bool,
) -> tuple[str, str]:
    if srm["alert"]:
        return "srm_alert", (
            f"sample ratio mismatch (p = {srm['p_value']:.2g} < {SRM_THRESHOLD}); "
            "results are not trustworthy"
        )
    if min_n < min_exposures:
        return "collecting", f"every arm needs at least {min_exposures} exposures"
    for g in guardrails:
        for c in results[g]["comparisons"]:
            if c["direction"] == "worse":
                return "guardrail_breached", f"{c['variant']} is significantly worse on {g}"
    comps = results[primary]["comparisons"]
    winners = [c for c in comps if c["direction"] == "better"]
    if winners:
        best = max(winners, key=lambda c: c["diff"]["estimate"])
        return "significant_win", f"{best['variant']} is significantly better on {primary}"
    losers = [c["variant"] for c in comps if c["direction"] == "worse"]
    if losers:
        return "significant_loss", f"{', '.join(losers)} significantly worse on {primary}"
    if plan and plan.get("per_variant") and not reached:
        return "collecting", f"planned sample size {plan['per_variant']} per variant not reached"
    return "no_detectable_difference", f"no significant difference on {primary}"


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN/inf floats replaced by None and numpy scalars made plain."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return finite(value)
    return value


def _judge_family(results: dict[str, Any], family: list[tuple[str, int]],
                  fixed_p: list[float | None], seq_p: list[float | None], correction: str,
                  alpha: float, reached: bool) -> None:
    """Adjust the family's p-values together and mark each comparison of ``results``
    (``results[metric]["comparisons"][j]`` for each ``(metric, j)`` of ``family``): it is
    significant when its adjusted always-valid p-value is below ``alpha`` at any time, or its
    adjusted z-test p-value once the planned sample is ``reached``, and its difference is not
    zero."""
    for (metric, j), fa, sa in zip(family, adjust_pvalues(fixed_p, correction),
                                   adjust_pvalues(seq_p, correction), strict=True):
        c = results[metric]["comparisons"][j]
        c["z_test"]["p_value_adjusted"] = fa
        c["sequential"]["p_value_adjusted"] = sa
        sig = (sa is not None and sa < alpha) or (reached and fa is not None and fa < alpha)
        d = c["diff"]["estimate"]
        c["significant"] = bool(sig and d is not None and d != 0)
        c["direction"] = (("better" if d > 0 else "worse") if c["significant"]  # type: ignore[operator]
                          else "inconclusive")
