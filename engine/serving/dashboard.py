"""The live dashboard: GET /dashboard (an HTML page of charts) and the JSON it polls.

The page draws with uPlot (MIT, vendored in ``serving/static``; nothing is fetched from a CDN).
Each worker samples the same registry as ``/metrics`` (every worker's values in multiprocess
mode) every :data:`SAMPLE_SECONDS` in a background task, whether or not anyone watches, into
a bounded ring buffer; ``/dashboard/data`` computes rates, latency percentiles and hit rates
from the differences between samples, server-side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .. import metrics
from ..pipeline import quality

#: Percentiles and rates are computed over roughly this many seconds of samples.
RATE_WINDOW_SECONDS = 30.0
#: Samples closer together than this are not stored (polls from several open pages).
MIN_SAMPLE_GAP_SECONDS = 1.0
# NOTE: a sample is ~19 KB of dicts (24 latency buckets x 7 stages, ...): 240 samples keep
# 20 minutes in ~4.5 MB per worker; a poll's fresh sample is drawn, not stored
SAMPLE_SECONDS = 5.0  # the background sampler's period
HISTORY_SAMPLES = 240  # at one sample per 5 s, 20 minutes
#: The key of the recommendations' own CTR and conversion (with or without an experiment).
ALL_RECOMMENDATIONS = "all recommendations"
Z_95 = 1.959963984540054
ASSETS = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
}
EXTRAS_KEY = "dashboard"
_ROUTE = "/recommendations"  # end-to-end latency is shown for the main route
_OWN_ROUTES = ("/metrics", "/dashboard")
log = logging.getLogger("rankly.dashboard")


@dataclass
class Sample:
    """Cumulative values read from the registry at time ``t`` (label values -> numbers)."""

    t: float
    requests: dict[str, float] = field(default_factory=dict)  # status -> count
    latency: dict[str, dict[float, float]] = field(default_factory=dict)  # stage -> le -> count
    cache: dict[str, dict[str, float]] = field(default_factory=dict)  # tier -> result -> count
    fallbacks: float = 0.0
    # "experiment/variant" -> count, and ALL_RECOMMENDATIONS -> served answers and answers
    # with a click / purchase carrying their request_id
    exposures: dict[str, float] = field(default_factory=dict)
    clicks: dict[str, float] = field(default_factory=dict)
    conversions: dict[str, float] = field(default_factory=dict)
    # per impression, "experiment/variant" -> items served, and -> outcome -> count
    impressions: dict[str, float] = field(default_factory=dict)
    impression_outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)


#: The per-arm experiment counters: labelled by experiment, variant and phase.
_ARM_COUNTERS = frozenset({"rankly_exposures_total", "rankly_clicks_total",
                           "rankly_conversions_total", "rankly_experiment_impressions_total",
                           "rankly_experiment_impression_outcomes_total"})


def current_phases(running: Any) -> dict[str, str]:
    """Each running experiment's current phase, as its counters label it."""
    return {e.key: str(e.phase) for e in running}


def read_sample(t: float, phases: Mapping[str, str] | None = None) -> Sample:
    """Read the registry into a :class:`Sample` (stage histograms summed over components).

    An experiment in ``phases`` (:func:`current_phases`) counts only its current phase's
    exposures and outcomes: a change of weights or variants starts a new phase, and mixing
    phases would show counts that the results route, which reads one phase, does not."""
    s = Sample(t)
    phases = phases or {}
    quality_values: dict[str, list[float]] = {}
    for family in metrics.registry().collect():
        for name, labels, value in ((x.name, x.labels, x.value) for x in family.samples):
            if (name in _ARM_COUNTERS and labels["experiment"] in phases
                    and labels.get("phase") != phases[labels["experiment"]]):
                continue
            if name == "rankly_http_requests_total":
                if not labels["route"].startswith(_OWN_ROUTES):  # not the scrapes and polls
                    _bump(s.requests, labels["status"], value)
            elif name == "rankly_http_request_duration_seconds_bucket":
                if labels.get("route") == _ROUTE:
                    _bump(s.latency.setdefault("request", {}), float(labels["le"]), value)
            elif name == "rankly_stage_duration_seconds_bucket":
                _bump(s.latency.setdefault(labels["stage"], {}), float(labels["le"]), value)
            elif name == "rankly_cache_lookups_total":
                _bump(s.cache.setdefault(labels["tier"], {}), labels["result"], value)
            elif name == "rankly_fallbacks_total":
                s.fallbacks += value
            elif name == "rankly_exposures_total":
                _bump(s.exposures, _arm(labels), value)
            elif name == "rankly_clicks_total":
                _bump(s.clicks, _arm(labels), value)
            elif name == "rankly_conversions_total":
                _bump(s.conversions, _arm(labels), value)
            elif name == "rankly_experiment_impressions_total":
                _bump(s.impressions, _arm(labels), value)
            elif name == "rankly_experiment_impression_outcomes_total":
                _bump(s.impression_outcomes.setdefault(_arm(labels), {}), labels["outcome"],
                      value)
            elif name == "rankly_recommendation_slates_total":
                _bump(s.exposures, ALL_RECOMMENDATIONS, value)
            elif name == "rankly_recommendation_slates_with_outcome_total":
                _bump(s.clicks if labels["type"] == "click" else s.conversions,
                      ALL_RECOMMENDATIONS, value)
            elif name.startswith("rankly_quality_"):
                quality_values.setdefault(name, []).append(value)
    for name, values in quality_values.items():
        # one value per worker in multiprocess mode: coverage of the union is at least the
        # best worker's; the other ratios are averaged
        key = name.removeprefix("rankly_quality_")
        s.quality[key] = max(values) if "coverage" in name else sum(values) / len(values)
    return s


def _arm(labels: dict[str, str]) -> str:
    """An experiment's variant as one series name, ``experiment/variant``."""
    return f"{labels['experiment']}/{labels['variant']}"


def _bump(d: dict, key: Any, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Estimate the ``q`` quantile from cumulative bucket counts (as PromQL does).

    Linear interpolation inside the bucket holding the rank; the first bucket starts at 0;
    a rank in the +Inf bucket answers the largest finite bound. ``None`` when there is no data.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def wilson(successes: float, trials: float, z: float = Z_95) -> tuple[float, float, float]:
    """Return (rate, low, high): the Wilson score interval of a proportion (95% by default)."""
    if trials <= 0:
        return (0.0, 0.0, 0.0)
    p = min(max(successes / trials, 0.0), 1.0)
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (p, max(0.0, centre - half), min(1.0, centre + half))


def _delta(new: dict, old: dict) -> dict:
    return {k: v - old.get(k, 0.0) for k, v in new.items()}


def _point(cur: Sample, base: Sample, prev: Sample | None) -> dict[str, Any]:
    """Derived values at ``cur``: rates against ``prev``, windowed values against ``base``."""
    point: dict[str, Any] = {"t": cur.t}
    if prev is not None and cur.t > prev.t:
        dt = cur.t - prev.t
        reqs = _delta(cur.requests, prev.requests)
        total = sum(reqs.values())
        errors = sum(v for k, v in reqs.items() if k.startswith("5"))
        point["request_rate"] = total / dt
        point["error_rate"] = errors / total if total else None
        fb = cur.fallbacks - prev.fallbacks
        point["fallback_rate"] = fb / total if total else None
    point["latency"] = {}
    for stage, buckets in cur.latency.items():
        window = _delta(buckets, base.latency.get(stage, {}))
        point["latency"][stage] = {
            f"p{int(q * 100)}": histogram_quantile(q, window) for q in (0.5, 0.95, 0.99)
        }
    point["cache_hit_rate"] = {}
    for tier, results in cur.cache.items():
        window = _delta(results, base.cache.get(tier, {}))
        looked = sum(window.values())
        point["cache_hit_rate"][tier] = window.get("hit", 0.0) / looked if looked else None
    point["ctr"] = {v: wilson(cur.clicks.get(v, 0.0), n) for v, n in cur.exposures.items()}
    point["conversion"] = {v: wilson(cur.conversions.get(v, 0.0), n)
                           for v, n in cur.exposures.items()}
    point["quality"] = dict(cur.quality)
    return point


@dataclass
class History:
    """Recent samples of one process, oldest first."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    # derived points by the samples they come from: a poll computes only the new ones (a
    # full history took 61 ms of the event loop per poll when every point was recomputed)
    # (the entries hold their samples, so no id is reused while its entry exists)
    _memo: dict[tuple[int, int, int], tuple[dict[str, Any], tuple[Sample, ...]]] = field(
        default_factory=dict)

    def add(self, sample: Sample) -> None:
        if self.samples and sample.t - self.samples[-1].t < MIN_SAMPLE_GAP_SECONDS:
            self.samples[-1] = sample
        else:
            self.samples.append(sample)

    def points(self, latest: Sample | None = None) -> list[dict[str, Any]]:
        """Derived values at every sample, and at ``latest`` (not stored) when given."""
        out = []
        samples = list(self.samples)
        if latest is not None:
            if samples and latest.t - samples[-1].t < MIN_SAMPLE_GAP_SECONDS:
                samples[-1] = latest
            else:
                samples.append(latest)
        memo: dict[tuple[int, int, int], tuple[dict[str, Any], tuple[Sample, ...]]] = {}
        j = 0
        for i, cur in enumerate(samples):
            while j + 1 < i and cur.t - samples[j + 1].t >= RATE_WINDOW_SECONDS:
                j += 1
            used = (cur, samples[j], samples[i - 1]) if i else (cur,)
            key = (id(cur), id(samples[j]), id(samples[i - 1]) if i else 0)
            hit = self._memo.get(key)
            if hit is None:
                base = samples[j] if i else Sample(cur.t)  # the first: since process start
                hit = (_point(cur, base, samples[i - 1] if i else None), used)
            memo[key] = hit
            out.append(hit[0])
        self._memo = memo  # only what the current samples use (ids of live objects)
        return out


def _series(points: list[dict[str, Any]], live: set[str] | None = None) -> dict[str, Any]:
    """Turn points into column arrays (``None`` where a series has no value yet); CTR and
    conversion only for the arms in ``live`` (:func:`live_arms`, and all recommendations)."""
    def col(get) -> list:
        return [_finite(get(p)) for p in points]

    stages = sorted({s for p in points for s in p["latency"]})
    tiers = sorted({t for p in points for t in p["cache_hit_rate"]})
    variants = sorted({v for p in points for v in p["ctr"]
                       if live is None or _is_live(v, live)})
    quality_keys = sorted({k for p in points for k in p["quality"]})
    return {
        "t": [p["t"] for p in points],
        "request_rate": col(lambda p: p.get("request_rate")),
        "error_rate": col(lambda p: p.get("error_rate")),
        "fallback_rate": col(lambda p: p.get("fallback_rate")),
        "latency": {s: {q: col(lambda p, s=s, q=q: p["latency"].get(s, {}).get(q))
                        for q in ("p50", "p95", "p99")} for s in stages},
        "cache_hit_rate": {t: col(lambda p, t=t: p["cache_hit_rate"].get(t)) for t in tiers},
        "ctr": {v: _interval(points, "ctr", v) for v in variants},
        "conversion": {v: _interval(points, "conversion", v) for v in variants},
        "quality": {k: col(lambda p, k=k: p["quality"].get(k)) for k in quality_keys},
    }


def live_arms(running: Any) -> set[str]:
    """The series names (``experiment/variant``) of the current arms of ``running``
    experiments, matched whole: a key or variant may itself hold a ``/``."""
    return {_arm({"experiment": e.key, "variant": v.name}) for e in running for v in e.variants}


def _is_live(arm: str, live: set[str]) -> bool:
    return arm == ALL_RECOMMENDATIONS or arm in live


def _interval(points: list[dict[str, Any]], key: str, variant: str) -> dict[str, list]:
    rows = [p[key].get(variant) for p in points]
    return {name: [None if r is None else r[i] for r in rows]
            for i, name in enumerate(("rate", "low", "high"))}


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def data(request: Request) -> Response:
    """GET /dashboard/data: the charts' series (latency in seconds, request rate in 1/s,
    error and fallback rates as shares of requests, CTR as (rate, low, high))."""
    rt = request.state.runtime
    win = quality.refresh(rt)
    history = history_of(rt)
    # drawn with the sampler's history, not stored
    latest = read_sample(time.time(), current_phases(rt.experiments.running))
    points = history.points(latest)
    # NOTE: a stopped experiment's arms leave the live charts (their results stay at
    # /experiments/{key}/results): one exposure at 100% CTR stretched the axis (#18); so do
    # the arms a PUT with other variants removed from a running one
    live = live_arms(rt.experiments.running)
    body = {
        "now": latest.t,
        "model_version": rt.model.version,
        "window_seconds": win.window_seconds,
        "rate_window_seconds": RATE_WINDOW_SECONDS,
        "sample_seconds": SAMPLE_SECONDS,
        "series": _series(points, live),
        "quality_buckets": win.history(),
        "variants": [
            {"variant": v, "exposures": n, "clicks": latest.clicks.get(v, 0.0),
             "conversions": latest.conversions.get(v, 0.0),
             **({"impressions": latest.impressions.get(v, 0.0),
                 "impression_clicks": latest.impression_outcomes.get(v, {}).get("click", 0.0),
                 "impression_conversions": latest.impression_outcomes.get(v, {}).get(
                     "conversion", 0.0)} if v != ALL_RECOMMENDATIONS else {})}
            for v, n in sorted(latest.exposures.items()) if _is_live(v, live)
        ],
    }
    payload = json.dumps(body, allow_nan=False, separators=(",", ":"))
    return Response(payload, media_type="application/json",
                    headers={"cache-control": "no-store"})


def history_of(rt: Any) -> History:
    """The worker's dashboard history (made on first use)."""
    return rt.extras.setdefault(EXTRAS_KEY, History())


async def _sample_forever(rt: Any, every_s: float) -> None:
    history = history_of(rt)
    while True:
        try:
            quality.refresh(rt)  # old buckets expire even when traffic stops
            history.add(read_sample(time.time(), current_phases(rt.experiments.running)))
        except Exception:  # a bad sample must not end the sampling
            log.warning("dashboard sample failed", exc_info=True)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def sampling(rt: Any, every_s: float | None = None) -> Any:
    """Sample the dashboard history every ``every_s`` seconds (default
    :data:`SAMPLE_SECONDS`) while the context is open (the app's lifespan), whether or not
    anyone polls /dashboard/data."""
    every_s = SAMPLE_SECONDS if every_s is None else every_s
    task = asyncio.get_running_loop().create_task(_sample_forever(rt, every_s),
                                                  name="dashboard-sampler")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def page(request: Request) -> Response:
    """GET /dashboard: the HTML shell; charts are drawn by static/dashboard.js."""
    return HTMLResponse(asset("dashboard.html").decode("utf-8"),
                        headers={"cache-control": "no-store"})


def static(request: Request) -> Response:
    """GET /dashboard/static/{name}: one of the vendored assets (a fixed list, no paths)."""
    name = request.path_params["name"]
    if name not in ASSETS:
        return Response(b'{"error":{"field":"path","message":"not found"}}', status_code=404,
                        media_type="application/json")
    return Response(asset(name), media_type=ASSETS[name],
                    headers={"cache-control": "public, max-age=3600"})


_cache: dict[str, bytes] = {}


def asset(name: str) -> bytes:
    """The bytes of ``static/<name>`` (read once, then kept)."""
    if name not in _cache:
        _cache[name] = (resources.files("rankly.engine.serving") / "static" / name).read_bytes()
    return _cache[name]


ROUTES = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/data", data, methods=["GET"]),
    Route("/dashboard/static/{name}", static, methods=["GET"]),
]
