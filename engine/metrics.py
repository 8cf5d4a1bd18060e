"""Every Prometheus metric object of rankly (labels never carry user or item ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 0.5 ms .. 1 s, fine enough to read P50/P95/P99 of a sub-millisecond hot path
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)

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
FALLBACKS = Counter("rankly_fallbacks_total", "Fallback answers by reason", ["reason"])
PLUGIN_FAILURES = Counter(
    "rankly_plugin_failures_total", "Plugin calls that failed, by component and kind",
    ["component", "kind"],
)
BREAKER_OPEN = Gauge(
    "rankly_breaker_open", "1 while a component's circuit breaker is open", ["component"]
)
MODEL_INFO = Gauge("rankly_model_info", "The active model version (value 1)", ["version"])
RECOMMENDATIONS = Counter(
    "rankly_recommendations_total", "Recommendation responses by variant and source",
    ["variant", "source"],
)
