"""The ``rankly`` pytest plugin (entry point group ``pytest11``): the kit as fixtures.

Fixtures: ``rankly_workload`` (the kit's trained model and inputs, once per session),
``rankly_model``, ``rankly_runtime`` (``rankly_runtime(scorers=(...))`` builds a runtime),
``rankly_check`` (conformance, fails the test naming each defect) and ``rankly_latency``
(P50/P95/P99 on the standard workload next to a built-in of the same kind, on
pytest-benchmark when it is installed). Override ``rankly_plugins`` (session scope) to add
plugins that are not installed, and ``rankly_trainers`` to fit your trainers
for the kit's model. Imports of the kit are deferred: this module is loaded in
every pytest run of an environment where rankly is installed.
"""

from __future__ import annotations

from typing import Any

import pytest

_RESULTS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rankly", "rankly plugin kit")
    group.addoption("--rankly-budget-ms", type=float, default=None,
                    help="P95 budget per call for rankly_latency (default: none, report only)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = []


@pytest.fixture(scope="session")
def rankly_plugins() -> list[object]:
    """Plugins registered next to the installed ones (override it to add yours)."""
    return []


@pytest.fixture(scope="session")
def rankly_trainers() -> list[str]:
    """Trainers fitted for the kit's model besides pop, itemknn and ease (override it to add
    yours, when a component of yours serves the part your trainer fits)."""
    return []


@pytest.fixture(scope="session")
def rankly_workload(rankly_plugins: list[object], rankly_trainers: list[str]) -> Any:
    """The kit's small model trained on a synthetic shop, with its standard inputs."""
    from . import make_workload
    from .workload import TRAINERS

    return make_workload(plugins=rankly_plugins,
                         trainers=tuple(dict.fromkeys((*TRAINERS, *rankly_trainers))))


@pytest.fixture(scope="session")
def rankly_model(rankly_workload: Any) -> Any:
    """The kit's trained model (``rankly.engine.api.Model``)."""
    return rankly_workload.model


@pytest.fixture
def rankly_runtime(rankly_workload: Any) -> Any:
    """``rankly_runtime(options=None, **pipeline) -> Runtime`` over the kit's model; answer
    requests with ``rankly.engine.testing.serve(rt, user_id, n)``."""
    from . import make_runtime

    def build(options: dict[str, dict[str, Any]] | None = None, **pipeline: Any) -> Any:
        return make_runtime(rankly_workload, options, **pipeline)

    return build


@pytest.fixture
def rankly_check(rankly_workload: Any) -> Any:
    """``rankly_check(name_or_component, kind=None, options=None, budget_ms=None)``: run the
    conformance suite; fail the test with one line per defect; return the reports."""
    from . import check_component

    def check(target: Any, kind: str | None = None, options: dict[str, Any] | None = None,
              budget_ms: float | None = None) -> list[Any]:
        reports = check_component(target, kind, workload=rankly_workload, options=options,
                                  budget_ms=budget_ms, latency=budget_ms is not None,
                                  baseline=False)
        failures = [line for r in reports for line in r.failures()]
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
        return reports

    return check


@pytest.fixture
def rankly_latency(request: pytest.FixtureRequest, rankly_workload: Any) -> Any:
    """``rankly_latency(name_or_component, kind=None, baseline=None, budget_ms=None)``: time
    the component's hook on the standard workload and the kind's built-in (or ``baseline``)
    in the same test; report P50/P95/P99 of both (terminal summary, and the benchmark's
    ``extra_info``); fail when P95 is over ``budget_ms`` (or ``--rankly-budget-ms``)."""
    from . import BASELINES, KINDS, build_component
    from .conformance import infer_kind
    from .latency import _close, measure, over_budget, standard_calls

    try:
        benchmark = request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        benchmark = None
    results = request.config.stash[_RESULTS]

    def timed(name: str, kind: str, component: Any) -> Any:
        if benchmark is None or getattr(benchmark, "disabled", False):
            return measure(name, kind, component, rankly_workload)
        import asyncio
        import itertools

        loop = asyncio.new_event_loop() if kind == "cache" else None
        try:
            calls = standard_calls(kind, component, rankly_workload, loop)
            cycle = itertools.cycle(calls)
            rounds = 3 if kind == "trainer" else max(len(calls) * 10, 200)
            benchmark.pedantic(lambda: next(cycle)(), rounds=rounds, iterations=1,
                               warmup_rounds=min(len(calls), 10))
            data = list(benchmark.stats.stats.data)
        finally:
            if loop is not None:
                _close(component, loop)
        return _from_seconds(name, kind, data)

    def run(target: Any, kind: str | None = None, baseline: str | None = None,
            budget_ms: float | None = None) -> tuple[Any, Any]:
        if isinstance(target, str):
            from .workload import kinds_of

            kinds = [kind] if kind else kinds_of(rankly_workload, target)
            if not kinds:
                pytest.fail(f"no component named {target!r}", pytrace=False)
            kind = kinds[0]
            component = build_component(rankly_workload, target, kind)
            name = target
        else:
            kind = kind or infer_kind(target)
            component, name = target, getattr(target, "name", None) or type(target).__name__
        if component is None:
            pytest.fail(f"{name} ({kind}): factory returns None for the kit's model",
                        pytrace=False)
        mine = timed(name, kind, component)
        base_name = baseline or BASELINES[kind]
        base = None
        if base_name != name and base_name in rankly_workload.registries[KINDS[kind]]:
            base = measure(base_name, kind, build_component(rankly_workload, base_name, kind),
                           rankly_workload)
        results.append((mine, base))
        if benchmark is not None:
            benchmark.extra_info.update(_extra(mine, base))
        budget = budget_ms if budget_ms is not None else request.config.getoption(
            "--rankly-budget-ms")
        problem = over_budget(mine, budget)
        if problem:
            pytest.fail(f"{name} ({kind}): {problem}", pytrace=False)
        return mine, base

    return run


def _from_seconds(name: str, kind: str, seconds: list[float]) -> Any:
    import numpy as np

    from .latency import Latency

    ms = np.asarray(seconds, dtype=float) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (0.0, 0.0, 0.0)
    return Latency(name, kind, int(ms.size), float(p50), float(p95), float(p99))


def _extra(mine: Any, base: Any) -> dict[str, Any]:
    out = {"p50_ms": mine.p50_ms, "p95_ms": mine.p95_ms, "p99_ms": mine.p99_ms}
    if base is not None:
        out.update({"baseline": base.name, "baseline_p50_ms": base.p50_ms,
                    "baseline_p95_ms": base.p95_ms, "baseline_p99_ms": base.p99_ms})
    return out


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    tr = terminalreporter
    tr.section("rankly latency (ms per call, standard workload)")
    tr.write_line(f"{'component':<28} {'kind':<20} {'P50':>9} {'P95':>9} {'P99':>9}  calls")
    for mine, base in results:
        for lat in (mine, base):
            if lat is None:
                continue
            label = lat.name if lat is mine else f"  built-in {lat.name}"
            tr.write_line(f"{label:<28} {lat.kind:<20} {lat.p50_ms:>9.3f} {lat.p95_ms:>9.3f} "
                          f"{lat.p99_ms:>9.3f}  {lat.calls}")
