"""Every Prometheus metric object of rankly (labels never carry user or item ids).

With several uvicorn workers ``rankly serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
own switch, read when it is imported): every worker then writes its values to files there and
:func:`registry` merges them, so ``/metrics`` counts the whole server whichever worker answers.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# 0.5 ms .. 1 s, fine enough to read P50/P95/P99 of a sub-millisecond hot path
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)

# --- serving ---------------------------------------------------------------------------------

REQUESTS = Counter(
    "rankly_http_requests_total", "HTTP requests by route template and status", ["route", "status"]
)
REQUEST_LATENCY = Histogram(
    "rankly_http_request_duration_seconds", "End-to-end HTTP latency by route template",
    ["route"], buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "rankly_stage_duration_seconds", "Pipeline stage latency by stage and component",
    ["stage", "component"], buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "rankly_cache_lookups_total", "Cache lookups by tier and result", ["tier", "result"]
)
REVALIDATIONS = Counter(
    "rankly_cache_revalidations_total",
    "Cached answers invalidated by an event and then requested, by outcome: served as is, "
    "topped_up from spare items, recomputed (too_few_spares), or served unchecked because "
    "the store could not be read (store_down)", ["outcome"]
)
FALLBACKS = Counter("rankly_fallbacks_total", "Fallback answers by reason", ["reason"])
PLUGIN_FAILURES = Counter(
    "rankly_plugin_failures_total", "Plugin calls that failed, by component and kind",
    ["component", "kind"],
)
# NOTE: a gauge's multiprocess_mode says how workers' values merge; "live*" modes drop a worker's
# value when it exits (metrics.mark_dead), so a restarted worker leaves no stale series behind.
BREAKER_OPEN = Gauge(
    "rankly_breaker_open", "1 while a component's circuit breaker is open (in any worker)",
    ["component"], multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "rankly_model_info", "The active model version (value 1)", ["version"],
    multiprocess_mode="livemax",
)

# --- feedback events and experiments (CTR = clicks / exposures, one PromQL division) ----------

EVENTS = Counter("rankly_events_total", "Feedback events received, by type", ["type"])
# NOTE: a request refused before its body is read has no known event count: it is counted in
# the requests counter only. Reasons are fixed strings (bounded cardinality).
EVENTS_REJECTED = Counter(
    "rankly_events_rejected_total",
    "Events refused, by reason (over_budget: its batch was over the server-wide event budget, "
    "429, nothing stored; invalid: failed validation, 422)", ["reason"],
)
EVENT_REQUESTS_SHED = Counter(
    "rankly_event_requests_shed_total",
    "Event ingest requests refused with 429 by server-wide admission control, by reason "
    "(inflight, rate: before the body was read; over_budget: after parsing the batch)",
    ["reason"],
)
# NOTE: by experiment and variant: two experiments' "control" arms are different arms (#18);
# and by phase: a change of weights or variants starts a new phase, whose results are
# counted apart (the dashboard shows the current phase's, as the results route does)
EXPOSURES = Counter(
    "rankly_exposures_total", "Users exposed to an experiment's variant (once per phase)",
    ["experiment", "variant", "phase"],
)
CLICKS = Counter("rankly_clicks_total", "Clicks of users exposed to an experiment's variant",
                 ["experiment", "variant", "phase"])
CONVERSIONS = Counter(
    "rankly_conversions_total", "Conversions (purchases) of users exposed to an experiment's "
    "variant", ["experiment", "variant", "phase"],
)
# Per impression (CTR = outcomes / impressions): items served by a variant, and clicks and
# purchases carrying a request_id by its users, once per (request, item)
EXPERIMENT_IMPRESSIONS = Counter(
    "rankly_experiment_impressions_total", "Items served to users in an experiment's variant",
    ["experiment", "variant", "phase"],
)
IMPRESSION_OUTCOMES = Counter(
    "rankly_experiment_impression_outcomes_total",
    "Clicks (outcome=click) and purchases (outcome=conversion) on served items by users in an "
    "experiment's variant, once per request and item",
    ["experiment", "variant", "outcome", "phase"],
)
# Recommendation CTR and conversion without any experiment: answers served, and answers that
# got a click or purchase carrying their request_id (each answer counted once per type).
SLATES_SERVED = Counter(
    "rankly_recommendation_slates_total",
    "GET/POST /recommendations answers served with at least one item",
)
SLATES_WITH_OUTCOME = Counter(
    "rankly_recommendation_slates_with_outcome_total",
    "Served answers that got at least one click (type=click) or purchase (type=conversion) "
    "carrying their request_id", ["type"],
)
SRM_P_VALUE = Gauge(
    "rankly_experiment_srm_p_value",
    "Sample-ratio-mismatch chi-square p-value per experiment (< 0.001: assignment is broken)",
    ["experiment"], multiprocess_mode="livemin",
)

# --- recommendation quality over a rolling window (engine/pipeline/quality.py) ---------------
# NOTE: each worker keeps its own window, so these carry a ``pid`` label in multiprocess mode
# (bounded by the worker count); dashboards and alerts aggregate with max()/avg().

QUALITY_COVERAGE = Gauge(
    "rankly_quality_catalog_coverage",
    "Share of the catalog recommended at least once in the quality window",
    multiprocess_mode="liveall",
)
QUALITY_DIVERSITY = Gauge(
    "rankly_quality_intra_list_diversity",
    "Mean over slates of 1 - share of same-category item pairs, in the quality window",
    multiprocess_mode="liveall",
)
QUALITY_POPULARITY = Gauge(
    "rankly_quality_popularity",
    "Mean popularity of served items relative to the catalog mean (1 = an average item)",
    multiprocess_mode="liveall",
)
QUALITY_NOVELTY = Gauge(
    "rankly_quality_novelty_bits",
    "Mean novelty of served items, -log2(popularity share), in bits",
    multiprocess_mode="liveall",
)
QUALITY_COLD_START = Gauge(
    "rankly_quality_cold_start_share",
    "Share of slates in the quality window served to users without history",
    multiprocess_mode="liveall",
)
QUALITY_SLATES = Gauge(
    "rankly_quality_window_slates", "Slates counted in the quality window",
    multiprocess_mode="liveall",
)


_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}
_CHILDREN_MAX = 4096


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, memoized: the hot path asks for the same few series on
    every request, and ``labels()`` takes a lock and re-checks the names each time (#8).

    Only for metrics whose series are never removed (``MODEL_INFO`` is). Bounded: the memo
    is cleared when it grows past ``_CHILDREN_MAX`` series.
    """
    key = (metric, labels)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= _CHILDREN_MAX:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


def multiprocess_dir() -> str | None:
    """The multiprocess directory when several workers share metrics, else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """The registry to expose: every worker's values merged in multiprocess mode."""
    if multiprocess_dir() is None:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def mark_dead(pid: int) -> None:
    """Drop the live gauges of an exited worker (its counters and histograms stay counted)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


if multiprocess_dir() is not None:
    # A worker that exits cleanly removes its own live-gauge files; the directory itself is
    # per server start (rankly serve makes it fresh and deletes it), so a crash leaks nothing.
    atexit.register(mark_dead, os.getpid())
