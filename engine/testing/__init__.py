"""rankly.testing: a kit for plugin teams: a small trained model, conformance checks, latency.

Use it from pytest (the ``rankly`` pytest plugin, loaded by the ``pytest11`` entry point:
fixtures ``rankly_workload``, ``rankly_model``, ``rankly_runtime``, ``rankly_check`` and
``rankly_latency``), from the command line (``rankly plugins check NAME``) or directly::

    from . import check_component
    for report in check_component("my-scorer"):
        assert report.passed, report.failures()
"""

from .conformance import (
    Check,
    Report,
    check_cache,
    check_candidate_generator,
    check_component,
    check_in_pipeline,
    check_one,
    check_reranker,
    check_scorer,
    check_trainer,
)
from .latency import DEFAULT_BUDGET_MS, Latency, measure
from .workload import (
    BASELINES,
    KINDS,
    Workload,
    build_component,
    kit_settings,
    make_runtime,
    make_workload,
    serve,
)

__all__ = [
    "BASELINES", "DEFAULT_BUDGET_MS", "KINDS", "Check", "Latency", "Report", "Workload",
    "build_component", "check_cache", "check_candidate_generator", "check_component",
    "check_in_pipeline", "check_one", "check_reranker", "check_scorer", "check_trainer",
    "kit_settings", "make_runtime", "make_workload", "measure", "serve",
]
