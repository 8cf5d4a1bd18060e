"""Latency of a component's hook on the standard workload: P50/P95/P99 per call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .workload import Workload

#: P95 budget of one call of a serving component on the standard workload, in ms.
DEFAULT_BUDGET_MS = 5.0
#: Timing stops after this many calls or this many seconds, whichever comes first (but not
#: before MIN_CALLS), so a slow component does not make the check slow.
MAX_CALLS = 400
MAX_SECONDS = 1.0
MIN_CALLS = 20


@dataclass(frozen=True)
class Latency:
    """Per-call wall time of one component on the standard workload, in milliseconds."""

    name: str
    kind: str
    calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def row(self) -> str:
        return (f"{self.name} ({self.kind}): P50 {self.p50_ms:.3f} ms, P95 {self.p95_ms:.3f} "
                f"ms, P99 {self.p99_ms:.3f} ms over {self.calls} calls")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "calls": self.calls,
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms}


def standard_calls(kind: str, component: Any, workload: Workload,
                   loop: asyncio.AbstractEventLoop | None = None,
                   fit_options: Mapping[str, Any] | None = None) -> list[Callable[[], Any]]:
    """The calls timed for ``kind``: what one request (or one training) asks of it.

    Scorer: ``score`` of 300 candidates per known user; generator: ``generate(user, 300)``;
    reranker: ``rerank`` of a 50-item slate to 10; cache: ``get`` of a stored key; trainer:
    one ``fit`` of the kit's data with ``fit_options``.
    """
    cases = workload.known_cases
    if kind == "scorer":
        items = workload.item_sets[0]
        return [lambda u=c.user: component.score(u, items) for c in cases]
    if kind == "candidate_generator":
        return [lambda u=c.user: component.generate(u, 300) for c in cases]
    if kind == "reranker":
        slates = [(c.user, workload.ranking(c)) for c in cases]
        return [lambda u=u, r=r: component.rerank(u, r, 10) for u, r in slates]
    if kind == "cache":
        if loop is None:
            raise ValueError("timing a cache needs an event loop")
        keys = [f"kit-{i}" for i in range(len(cases))]
        for key, c in zip(keys, cases, strict=True):
            loop.run_until_complete(component.set(key, c.user.user_id, {"items": [key]}))
        return [lambda k=k, c=c: loop.run_until_complete(component.get(k, c.user.user_id))
                for k, c in zip(keys, cases, strict=True)]
    if kind == "trainer":
        return [lambda: component.fit(workload.data, dict(fit_options or {}))]
    raise ValueError(f"unknown kind {kind!r}")


def time_calls(name: str, kind: str, calls: Sequence[Callable[[], Any]],
               max_calls: int = MAX_CALLS, max_seconds: float = MAX_SECONDS,
               on_call: Callable[[float], None] | None = None) -> Latency:
    """Call ``calls`` round-robin and return the percentiles of their wall times."""
    if kind == "trainer":
        max_calls = min(max_calls, 3)
    times: list[float] = []
    stop = time.perf_counter() + max_seconds
    i = 0
    while i < max_calls and (i < min(MIN_CALLS, max_calls) or time.perf_counter() < stop):
        fn = calls[i % len(calls)]
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        if on_call is not None:
            on_call(elapsed)
        i += 1
    ms = np.asarray(times) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (0.0, 0.0, 0.0)
    return Latency(name, kind, int(ms.size), float(p50), float(p95), float(p99))


def measure(name: str, kind: str, component: Any, workload: Workload,
            fit_options: Mapping[str, Any] | None = None, **kwargs: Any) -> Latency:
    """Time ``component`` (a built component, or a trainer fitted with ``fit_options``) on
    the standard workload."""
    loop = asyncio.new_event_loop() if kind == "cache" else None
    try:
        return time_calls(name, kind, standard_calls(kind, component, workload, loop,
                                                     fit_options), **kwargs)
    finally:
        if loop is not None:
            _close(component, loop)


def _close(cache: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Close a timed cache tier and whatever it left running on ``loop``."""
    close = getattr(cache, "close", None)
    if close is not None:
        loop.run_until_complete(close())
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def over_budget(latency: Latency, budget_ms: float | None) -> str | None:
    """The defect line when P95 is over ``budget_ms`` (trainers have no budget)."""
    if budget_ms is None or latency.kind == "trainer" or latency.p95_ms <= budget_ms:
        return None
    return f"P95 {latency.p95_ms:.1f} ms over the {budget_ms:g} ms budget"
