"""Conformance checks for each kind of component: what the pipeline relies on, as defects.

Each check function returns one :class:`Check` per property, failed with the first defect
found, worded as what the component does ("returns 9 scores for 10 items", "returns NaN",
"mutates its input (items)", "raises ValueError: ...").
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..types import CacheEntry, Candidates, ModelPart, Ranking, Reason, UserFeatures
from .latency import DEFAULT_BUDGET_MS, Latency, measure, over_budget
from .workload import (
    BASELINES,
    KINDS,
    Case,
    Workload,
    build_component,
    kinds_of,
    make_workload,
)

#: Threads that call a component at once in the thread-safety check.
THREADS = 4
#: Fallbacks that mean the pipeline could not use the component's answer.
PLUGIN_FALLBACKS = ("plugin_error", "plugin_timeout", "internal_error")


@dataclass(frozen=True)
class Check:
    """One property of a component: passed, or failed with the defect found."""

    name: str
    passed: bool
    message: str = ""


@dataclass
class Report:
    """Every check of one component of one kind, and its latency next to a built-in's."""

    component: str
    kind: str
    checks: list[Check]
    latency: Latency | None = None
    baseline: Latency | None = None
    budget_ms: float | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        """One line per failed check: ``NAME (kind): defect``."""
        return [f"{self.component} ({self.kind}): {c.message}" for c in self.checks
                if not c.passed]

    def summary(self) -> str:
        ok = sum(c.passed for c in self.checks)
        line = f"{self.component} ({self.kind}): {ok} of {len(self.checks)} checks passed"
        if self.latency is not None:
            line += (f"; P50 {self.latency.p50_ms:.3f} ms, P95 {self.latency.p95_ms:.3f} ms, "
                     f"P99 {self.latency.p99_ms:.3f} ms")
        if self.baseline is not None:
            line += (f" (built-in {self.baseline.name}: P50 {self.baseline.p50_ms:.3f} ms, "
                     f"P95 {self.baseline.p95_ms:.3f} ms, P99 {self.baseline.p99_ms:.3f} ms)")
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "component": self.component, "kind": self.kind, "passed": self.passed,
            "checks": [{"check": c.name, "passed": c.passed, "message": c.message}
                       for c in self.checks],
            "latency": None if self.latency is None else self.latency.as_dict(),
            "baseline": None if self.baseline is None else self.baseline.as_dict(),
            "budget_ms": self.budget_ms,
        }


class _Findings:
    """The first defect of each named check (None: passed so far)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.found: dict[str, str | None] = dict.fromkeys(names)

    def fail(self, name: str, message: str) -> None:
        if self.found.get(name) is None:
            self.found[name] = message

    def checks(self) -> list[Check]:
        return [Check(n, m is None, m or "") for n, m in self.found.items()]


def raised(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"raises {type(exc).__name__}" + (f": {text}" if text else "")


def _fresh_user(user: UserFeatures) -> UserFeatures:
    return replace(user, history=user.history.copy(), seen=user.seen.copy())


def _mutated(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> str | None:
    for name, old in before.items():
        new = after[name]
        if new.shape != old.shape or not np.array_equal(new, old, equal_nan=True):
            return f"mutates its input ({name})"
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Candidates | Ranking) and type(a) is type(b):
        return all(np.array_equal(x, y, equal_nan=True) for x, y in
                   zip(_fields(a), _fields(b), strict=True))
    try:
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    except (TypeError, ValueError):
        return a == b


def _fields(x: Candidates | Ranking) -> tuple[np.ndarray, ...]:
    if isinstance(x, Ranking):
        return (x.items, x.scores, x.reasons, x.anchors)
    return (x.items, x.reasons, x.anchors)


def _in_threads(calls: Sequence[tuple[Callable[[], Any], Any]], findings: _Findings,
                rounds: int = 3) -> None:
    """Run ``calls`` from THREADS threads at once; each result must equal its expected one."""
    barrier = threading.Barrier(THREADS)

    def worker(offset: int) -> str | None:
        barrier.wait()
        for _ in range(rounds):
            # each thread starts at another input, so calls at once differ in their input
            for j in range(len(calls)):
                fn, expected = calls[(j + offset) % len(calls)]
                try:
                    out = fn()
                except Exception as exc:
                    return f"{raised(exc)} when called from {THREADS} threads at once"
                if not _same(out, expected):
                    return f"returns other results when called from {THREADS} threads at once"
        return None

    with ThreadPoolExecutor(THREADS) as pool:
        for problem in pool.map(worker, range(THREADS)):
            if problem:
                findings.fail("thread safety", problem)


def _where(case: Case) -> str:
    """Which input a defect showed on: the label of any but a plain known user."""
    return "" if case.known and not case.user.session else f" for {case.label}"


def _call(f: _Findings, case: Case, call: Callable[[], Any],
          inputs: Mapping[str, np.ndarray]) -> tuple[bool, Any]:
    """``(True, call())``, with a "mutation" finding when the call changed any of ``inputs``
    (the arrays it was given, by name); ``(False, None)`` and a "raises" finding ("unknown
    ids" for an unknown user) when it raised."""
    before = {name: a.copy() for name, a in inputs.items()}
    try:
        out = call()
    except Exception as exc:
        f.fail("raises" if case.known else "unknown ids", raised(exc) + _where(case))
        return False, None
    problem = _mutated(before, inputs)
    if problem:
        f.fail("mutation", problem)
    return True, out


def _report(f: _Findings, case: Case, defects: list[tuple[str, str]]) -> None:
    for check, message in defects:
        f.fail(check if case.known else "unknown ids", message + _where(case))


def _repeats(f: _Findings, out: Any, again: Callable[[], Any], what: str) -> bool:
    """Whether ``again()`` (the same call on fresh copies) gives ``out`` once more; else a
    "determinism" finding."""
    try:
        second = again()
    except Exception as exc:
        f.fail("determinism", f"{raised(exc)} when called again")
        return False
    if not _same(out, second):
        f.fail("determinism", f"returns {what} for the same input")
        return False
    return True


# --- scorer ---------------------------------------------------------------------------------

SCORER_CHECKS = ("raises", "length", "dtype", "finite", "unknown ids", "determinism",
                 "mutation", "thread safety")


def _score_defects(out: Any, n: int) -> list[tuple[str, str]]:
    found = []
    if not isinstance(out, np.ndarray):
        given = type(out).__name__
        try:
            out = np.asarray(out)
        except Exception:
            return [("dtype", f"returns {given}, not a NumPy array")]
        if out.dtype == object:
            return [("dtype", f"returns {given}, not a NumPy array")]
        # the first finding of a check is the one reported: this one before "float64"
        found.append(("dtype", f"returns {given}, not a NumPy array of float32"))
    if out.ndim != 1:
        return [*found, ("length", f"returns an array of shape {out.shape} for {n} items")]
    if out.size != n:
        found.append(("length", f"returns {out.size} scores for {n} items"))
    if out.dtype != np.float32:
        found.append(("dtype", f"returns {out.dtype} scores, not float32"))
    if out.dtype.kind in "fc":
        if np.isnan(out).any():
            found.append(("finite", "returns NaN"))
        elif np.isinf(out).any():
            found.append(("finite", "returns inf"))
    elif out.dtype.kind not in "iub":
        found.append(("dtype", f"returns {out.dtype} scores, not float32"))
    return found


def check_scorer(scorer: Any, workload: Workload) -> list[Check]:
    """``score(user, items)``: one finite float32 per item, for every standard user and item
    set (300, all, 10, 1, none), the same every time, from any thread, inputs untouched."""
    f = _Findings(SCORER_CHECKS)
    if not callable(getattr(scorer, "score", None)):
        f.fail("raises", "has no score(user, items) method")
        return f.checks()
    first: list[tuple[Callable[[], Any], Any]] = []
    for case in workload.cases:
        for k, items in enumerate(workload.item_sets):
            user, given = _fresh_user(case.user), items.copy()
            ok, out = _call(f, case, lambda u=user, g=given: scorer.score(u, g),
                            {"items": given, "user.history": user.history,
                             "user.seen": user.seen})
            if not ok:
                continue
            _report(f, case, _score_defects(out, items.size))
            if k == 0 and isinstance(out, np.ndarray):
                out = out.copy()
                if _repeats(f, out, lambda c=case, i=items: scorer.score(_fresh_user(c.user),
                                                                         i.copy()),
                            "different scores"):
                    first.append((lambda u=case.user, i=items: scorer.score(u, i), out))
    if first:
        _in_threads(first, f)
    return f.checks()


# --- candidate generator --------------------------------------------------------------------

GENERATOR_CHECKS = ("raises", "type", "length", "indices", "duplicates", "unknown ids",
                    "determinism", "mutation", "thread safety")
_REASONS = np.array([int(r) for r in Reason])


def _candidate_defects(out: Any, n: int, n_items: int) -> list[tuple[str, str]]:
    if not isinstance(out, Candidates):
        return [("type", f"returns {type(out).__name__}, not Candidates")]
    items, reasons, anchors = (np.asarray(a) for a in _fields(out))
    if not (items.shape == reasons.shape == anchors.shape) or items.ndim != 1:
        return [("type", f"returns {items.size} items with {reasons.size} reasons and "
                         f"{anchors.size} anchors")]
    found = []
    if items.size > n:
        found.append(("length", f"returns {items.size} candidates for n={n}"))
    if items.dtype.kind not in "iu":
        found.append(("indices", f"returns {items.dtype} item indices, not integers"))
        return found
    bad = items[(items < 0) | (items >= n_items)]
    if bad.size:
        found.append(("indices", f"returns item index {int(bad[0])} outside the catalog "
                                 f"({n_items} items)"))
    odd = reasons[~np.isin(reasons, _REASONS)]
    if odd.size:
        found.append(("indices", f"returns reason code {odd[0]!r}, not a Reason"))
    uniq, counts = np.unique(items, return_counts=True)
    if (counts > 1).any():
        found.append(("duplicates", f"returns item {int(uniq[counts > 1][0])} twice"))
    return found


def check_candidate_generator(generator: Any, workload: Workload) -> list[Check]:
    """``generate(user, n)``: Candidates of at most ``n`` distinct catalog items with valid
    reasons, for every standard user and n in (300, 10, 1, 0), deterministic, thread-safe."""
    f = _Findings(GENERATOR_CHECKS)
    if not callable(getattr(generator, "generate", None)):
        f.fail("raises", "has no generate(user, n) method")
        return f.checks()
    n_items = len(workload.model.catalog)
    first: list[tuple[Callable[[], Any], Any]] = []
    for case in workload.cases:
        for n in (300, 10, 1, 0):
            user = _fresh_user(case.user)
            ok, out = _call(f, case, lambda u=user, k=n: generator.generate(u, k),
                            {"user.history": user.history, "user.seen": user.seen})
            if not ok:
                continue
            defects = _candidate_defects(out, n, n_items)
            _report(f, case, defects)
            if n == 300 and not defects and _repeats(
                    f, out, lambda c=case: generator.generate(_fresh_user(c.user), 300),
                    "different candidates"):
                first.append((lambda u=case.user: generator.generate(u, 300), out))
    if first:
        _in_threads(first, f)
    return f.checks()


# --- reranker -------------------------------------------------------------------------------

RERANKER_CHECKS = ("raises", "type", "length", "subset", "duplicates", "finite", "unknown ids",
                   "determinism", "mutation", "thread safety")


def _ranking_defects(out: Any, given: Ranking, n: int) -> list[tuple[str, str]]:
    if not isinstance(out, Ranking):
        return [("type", f"returns {type(out).__name__}, not Ranking")]
    for field, a in zip(("items", "scores", "reasons", "anchors"), _fields(out), strict=True):
        if not isinstance(a, np.ndarray):  # the pipeline calls array methods on each
            return [("type", f"returns a Ranking whose {field} is a {type(a).__name__}, "
                             "not a NumPy array")]
    items, scores, reasons, anchors = _fields(out)
    if not (items.shape == scores.shape == reasons.shape == anchors.shape) or items.ndim != 1:
        return [("type", f"returns {items.size} items with {scores.size} scores")]
    found = []
    if items.size > n:
        found.append(("length", f"returns {items.size} items for n={n}"))
    new = items[~np.isin(items, given.items)]
    if new.size:
        found.append(("subset", f"returns item {int(new[0])} that was not in its input"))
    uniq, counts = np.unique(items, return_counts=True)
    if (counts > 1).any():
        found.append(("duplicates", f"returns item {int(uniq[counts > 1][0])} twice"))
    if scores.dtype.kind in "fc" and np.isnan(scores).any():
        found.append(("finite", "returns NaN"))
    elif scores.dtype.kind in "fc" and np.isinf(scores).any():
        found.append(("finite", "returns inf"))
    return found


def _copy_ranking(r: Ranking) -> Ranking:
    return Ranking(*(a.copy() for a in _fields(r)))


def check_reranker(reranker: Any, workload: Workload) -> list[Check]:
    """``rerank(user, ranking, n)``: a Ranking of at most ``n`` distinct items of its input,
    finite scores, for every standard user, n in (10, 50, 100, 0) and an empty slate."""
    f = _Findings(RERANKER_CHECKS)
    if not callable(getattr(reranker, "rerank", None)):
        f.fail("raises", "has no rerank(user, ranking, n) method")
        return f.checks()
    first: list[tuple[Callable[[], Any], Any]] = []
    for case in workload.cases:
        slate = workload.ranking(case)
        for ranking, n in ((slate, 10), (slate, 50), (slate, 100), (slate, 0),
                           (slate.take(np.empty(0, np.int64)), 10)):
            user, given = _fresh_user(case.user), _copy_ranking(ranking)
            ok, out = _call(f, case, lambda u=user, g=given, k=n: reranker.rerank(u, g, k), {
                "ranking.items": given.items, "ranking.scores": given.scores,
                "ranking.reasons": given.reasons, "ranking.anchors": given.anchors,
                "user.history": user.history, "user.seen": user.seen})
            if not ok:
                continue
            defects = _ranking_defects(out, ranking, n)
            _report(f, case, defects)
            if n == 10 and len(ranking) and not defects:
                out = _copy_ranking(out)
                if _repeats(f, out, lambda c=case, r=ranking: reranker.rerank(
                        _fresh_user(c.user), _copy_ranking(r), 10), "a different slate"):
                    first.append((lambda u=case.user, r=ranking:
                                  reranker.rerank(u, _copy_ranking(r), 10), out))
    if first:
        _in_threads(first, f)
    return f.checks()


# --- cache tier -----------------------------------------------------------------------------

CACHE_CHECKS = ("raises", "round trip", "miss", "invalidation", "mutation", "concurrency")


def _payload(i: int) -> dict[str, Any]:
    return {"user_id": str(i), "items": [{"item_id": str(i), "score": 1.5,
                                         "reasons": ["Popular"]}],
            "variant": None, "_spare": [{"item_id": str(i + 1), "score": 1.0}]}


async def _check_cache(cache: Any, f: _Findings) -> None:
    try:
        if await cache.get("kit-never-set", "kit-user") is not None:
            f.fail("miss", "returns a value for a key never set")
        for key, user in (("kit-a", "kit-user"), ("kit-b", None)):
            value = {**_payload(1), "_started": time.monotonic()}
            before = copy.deepcopy(value)
            await cache.set(key, user, value)
            if value != before:
                f.fail("mutation", "mutates its input (the value given to set)")
            got = await cache.get(key, user)
            if got is None:
                f.fail("round trip", "get after set returns None"
                       + ("" if user else " (no user)"))
            elif CacheEntry.of(got).payload != CacheEntry.of(before).payload:
                f.fail("round trip", "get returns a different payload than was set")
        await cache.invalidate_user("kit-user")
        got = await cache.get("kit-a", "kit-user")
        if got is not None and not CacheEntry.of(got).dirty:
            f.fail("invalidation", "serves a clean entry after invalidate_user")
        if getattr(cache, "checks_start_times", False):
            started = time.monotonic() - 1.0  # computed before the invalidation below
            await cache.invalidate_user("kit-late")
            await cache.set("kit-late-key", "kit-late", {**_payload(2), "_started": started})
            got = await cache.get("kit-late-key", "kit-late")
            if got is not None and not CacheEntry.of(got).dirty:
                f.fail("invalidation", "stores an answer computed before its user's "
                                       "invalidation as clean (checks_start_times)")
        keys = [f"kit-c{i}" for i in range(50)]
        await asyncio.gather(*(cache.set(k, f"kit-u{i}", _payload(i))
                               for i, k in enumerate(keys)))
        got_all = await asyncio.gather(*(cache.get(k, f"kit-u{i}") for i, k in enumerate(keys)))
        for i, got in enumerate(got_all):
            if got is not None and CacheEntry.of(got).payload != _payload(i):
                f.fail("concurrency", "returns another key's value under concurrent calls")
                break
    except Exception as exc:
        f.fail("raises", raised(exc))
    finally:
        close = getattr(cache, "close", None)
        if close is not None:
            await close()


def check_cache(factory: Callable[[Any], Any], workload: Workload) -> list[Check]:
    """``get``/``set``/``invalidate_user``: what was set comes back (marks aside), a miss is
    None, an invalidated user's entry is gone or dirty, input untouched, concurrent use."""
    f = _Findings(CACHE_CHECKS)

    async def run() -> None:
        cache = factory(None)
        await _check_cache(cache, f)

    asyncio.run(run())
    return f.checks()


# --- trainer --------------------------------------------------------------------------------

TRAINER_CHECKS = ("raises", "type", "arrays", "params", "determinism", "mutation", "artifact")


def _data_arrays(data: Any) -> dict[str, np.ndarray]:
    return {"data.matrix": data.matrix.data, "data.user_idx": data.user_idx,
            "data.item_idx": data.item_idx, "data.weights": data.weights,
            "data.timestamps": data.timestamps}


def check_trainer(trainer: Any, workload: Workload,
                  options: Mapping[str, Any] | None = None) -> list[Check]:
    """``fit(data, options)``: a ModelPart of plain NumPy arrays (no objects, no NaN), JSON
    params, the same on a second fit, data untouched, saved and loaded as an artifact.

    ``options`` are given to ``fit`` as ``rankly train`` gives its ``[plugins.<name>]``
    settings: as set, without the declared defaults."""
    from ..model import load_model, save_model

    f = _Findings(TRAINER_CHECKS)
    if not callable(getattr(trainer, "fit", None)):
        f.fail("raises", "has no fit(data, options) method")
        return f.checks()
    data = workload.data
    before = {k: v.copy() for k, v in _data_arrays(data).items()}
    try:
        part = trainer.fit(data, dict(options or {}))
    except Exception as exc:
        f.fail("raises", raised(exc))
        return f.checks()
    problem = _mutated(before, _data_arrays(data))
    if problem:
        f.fail("mutation", problem)
    if not isinstance(part, ModelPart):
        f.fail("type", f"returns {type(part).__name__}, not ModelPart")
        return f.checks()
    arrays = part.arrays if isinstance(part.arrays, Mapping) else {}
    if not isinstance(part.arrays, Mapping):
        f.fail("arrays", f"arrays are a {type(part.arrays).__name__}, not a dict of NumPy "
                         "arrays by name")
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            f.fail("arrays", f"array {name!r} is {type(arr).__name__}, not a NumPy array")
        elif arr.dtype == object:
            f.fail("arrays", f"array {name!r} holds Python objects")
        elif arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            f.fail("arrays", f"array {name!r} holds NaN or inf")
    try:
        json.dumps({"params": dict(part.params), "metrics": dict(part.metrics)})
    except (TypeError, ValueError) as exc:
        f.fail("params", f"params are not JSON: {exc}")
    try:
        again = trainer.fit(data, dict(options or {}))
        for name, arr in arrays.items():
            if name not in again.arrays or not _same(arr, again.arrays[name]):
                f.fail("determinism", f"two fits on the same data differ (array {name!r})")
                break
    except Exception as exc:
        f.fail("determinism", f"{raised(exc)} when fitted again")
    if f.found["arrays"] is None and f.found["params"] is None:
        with tempfile.TemporaryDirectory(prefix="rankly-kit-") as tmp:
            try:
                save_model(tmp, data.catalog, data.users, [part], data_fingerprint="kit")
                loaded = load_model(tmp).part(part.name) or {}
                if set(loaded) != set(part.arrays):
                    f.fail("artifact", "its arrays do not load back from an artifact")
            except Exception as exc:
                f.fail("artifact", f"cannot be saved as an artifact: {raised(exc)}")
    return f.checks()


# --- a catalog without categories -----------------------------------------------------------

_BARE = " on a catalog without categories"


def check_without_categories(name: str, kind: str, workload: Workload,
                             options: Mapping[str, Any] | None = None,
                             trainer: Any = None) -> Check:
    """The component built for the kit's model with a catalog that has no categories (all
    -1, no names: a ratings file without an item table) works, or its factory returns None;
    a trainer fits it. Scorers, generators and rerankers are called for some known users, the
    session, the cold and the anonymous user."""
    model, data = workload.bare
    try:
        if kind == "trainer":
            part = trainer.fit(data, dict(options or {}))
            ok = isinstance(part, ModelPart)
            return Check("no categories", ok, "" if ok else
                         f"returns {type(part).__name__}, not ModelPart{_BARE}")
        component = build_component(workload, name, kind, options, model=model)
    except Exception as exc:
        return Check("no categories", False,
                     ("" if kind == "trainer" else "factory ") + raised(exc) + _BARE)
    if component is None:
        return Check("no categories", True)
    n_items = len(model.catalog)
    items = workload.item_sets[0]
    cases = (*workload.known_cases[:3],
             *(c for c in workload.cases if not c.known or c.user.session))
    for case in cases:
        user = _fresh_user(case.user)
        try:
            if kind == "scorer":
                defects = _score_defects(component.score(user, items.copy()), items.size)
            elif kind == "candidate_generator":
                defects = _candidate_defects(component.generate(user, 300), 300, n_items)
            else:
                ranking = workload.ranking(case)
                defects = _ranking_defects(component.rerank(user, _copy_ranking(ranking), 10),
                                           ranking, 10)
        except Exception as exc:
            return Check("no categories", False, raised(exc) + _where(case) + _BARE)
        if defects:
            return Check("no categories", False, defects[0][1] + _where(case) + _BARE)
    return Check("no categories", True)


# --- in the pipeline ------------------------------------------------------------------------


def check_in_pipeline(name: str, kind: str, workload: Workload,
                      options: Mapping[str, Any] | None = None, cases: int = 6) -> Check:
    """Serve known users, a session and a cold user through the pipeline with the component
    selected (popular behind it), then the known users again with the store down (the
    pipeline's ``store_down`` path); a ``plugin_error``/``plugin_timeout`` answer is a defect.

    A name registered as both generator and scorer is served first in both stages as well,
    as a configuration selecting it would (the fused path, for a component that scores the
    whole catalog)."""
    from .. import pipeline
    from ..runtime import build_runtime
    from ..storage.memory_store import MemoryStore
    from ..storage.store import StoreUnavailable
    from ..types import RecommendationRequest

    class DownStore(MemoryStore):
        async def fetch_user(self, user_id: str) -> Any:
            raise StoreUnavailable("the kit's store is down")

    stage = {"candidate_generator": "candidates", "scorer": "scorers",
             "reranker": "rerankers"}[kind]
    chain = (name,) if kind == "reranker" else (name, "popular")
    plans = [({stage: chain}, "")]
    if kind != "reranker" and all(name in workload.registries[r]
                                  for r in ("candidate_generators", "scorers")):
        plans.append(({"candidates": chain, "scorers": chain},
                      " when first in pipeline.candidates and pipeline.scorers"))
    settings = workload.settings
    settings = settings.replace(
        plugins={**settings.plugins, **({name: dict(options)} if options else {})})
    catalog = workload.model.catalog
    requests = []
    for case in workload.known_cases[:cases]:
        if case.user.session:
            ids = tuple(catalog.ids(case.user.history))
            requests.append((case.label, RecommendationRequest(None, 10, session_items=ids,
                                                               request_id="kit")))
        else:
            requests.append((case.label, RecommendationRequest(case.user.user_id, 10,
                                                               request_id="kit")))
    requests.append(("a cold user", RecommendationRequest("kit-cold-user", 10,
                                                          request_id="kit")))
    known = [(label, req) for label, req in requests if req.user_id and label != "a cold user"]

    async def serve(rt: Any, asked: list, suffix: str) -> str | None:
        plan = pipeline.default_plan(rt)
        for label, req in asked:
            deadline = asyncio.get_running_loop().time() + 30.0  # the kit is not timed here
            resp = await pipeline.rank(rt, req, plan, deadline=deadline)
            if resp.get("fallback") in PLUGIN_FALLBACKS:
                return f"the pipeline fell back ({resp['fallback']}) for {label}{suffix}"
        return None

    for stages, selected in plans:
        chosen = settings.replace(pipeline=replace(settings.pipeline, **stages))
        for store, asked, suffix in ((MemoryStore(), requests, ""),
                                     (DownStore(), known, " with the store down")):
            try:
                rt = build_runtime(chosen, workload.model, workload.pm, store=store)
            except Exception as exc:
                return Check("pipeline", False,
                             f"the runtime does not start{selected}: {raised(exc)}")
            problem = asyncio.run(serve(rt, asked, suffix + selected))
            if problem:
                return Check("pipeline", False, problem)
    return Check("pipeline", True)


# --- one component, every check -------------------------------------------------------------

_CHECKERS: dict[str, Callable[[Any, Workload], list[Check]]] = {
    "scorer": check_scorer, "candidate_generator": check_candidate_generator,
    "reranker": check_reranker, "trainer": check_trainer,
}


def infer_kind(component: Any) -> str:
    """The kind of a component instance, from the method it has."""
    for method, kind in (("score", "scorer"), ("generate", "candidate_generator"),
                         ("rerank", "reranker"), ("fit", "trainer"),
                         ("invalidate_user", "cache")):
        if callable(getattr(component, method, None)):
            return kind
    raise ValueError(f"{type(component).__name__} is no rankly component (no score, generate, "
                     "rerank, fit or invalidate_user method)")


def check_one(name: str, kind: str, workload: Workload, component: Any = None,
              options: Mapping[str, Any] | None = None,
              budget_ms: float | None = DEFAULT_BUDGET_MS, latency: bool = True,
              baseline: bool = True, on_call: Callable[[float], None] | None = None) -> Report:
    """Every check of one component (``component``: an instance; else built from ``name``'s
    factory), its pipeline behaviour, and its latency next to the kind's built-in."""
    by_name = component is None
    report = Report(name, kind, [], budget_ms=None if kind == "trainer" else budget_ms)

    def build() -> Any:
        if not by_name:
            return component
        return build_component(workload, name, kind, options, store=_store_for(kind))

    trainer_options = dict(options or {})
    try:
        if kind == "trainer" and by_name:  # checked as `rankly train` checks them
            from ..plugins import component_options

            trainer_options = component_options(name, trainer_options, workload.registries)
        built = build()
    except Exception as exc:
        report.checks.append(Check("builds", False, f"factory {raised(exc)}"))
        return report
    if built is None:
        trained = ", ".join(workload.model.parts)
        hint = (f"fit the part it serves: rankly plugins check {name} --train TRAINER, or "
                "give it options: --options JSON)"
                if name not in workload.registries["trainers"] or name in workload.model.parts
                else f"its trainer is not fitted for the kit: rankly plugins check --train "
                     f"{name}, or list it in the rankly_trainers fixture)")
        report.checks.append(Check(
            "builds", False, f"factory returns None for the kit's model (trained: {trained}) "
                             f"and options {dict(options or {})}: nothing to check ({hint}"))
        return report
    report.checks.append(Check("builds", True))
    if kind == "trainer":
        report.checks += check_trainer(built, workload, trainer_options)
    elif kind == "cache":
        report.checks += check_cache(lambda _: build() if by_name else built, workload)
    else:
        report.checks += _CHECKERS[kind](built, workload)
    if by_name and kind in ("scorer", "candidate_generator", "reranker"):
        report.checks.append(check_without_categories(name, kind, workload, options))
        report.checks.append(check_in_pipeline(name, kind, workload, options))
    elif kind == "trainer":
        report.checks.append(check_without_categories(name, kind, workload, trainer_options,
                                                      trainer=built))
    if not latency:
        return report
    try:
        timed = build() if kind == "cache" else built
        report.latency = measure(name, kind, timed, workload, on_call=on_call,
                                 fit_options=trainer_options if kind == "trainer" else None)
    except Exception as exc:
        report.checks.append(Check("latency", False, f"{raised(exc)} on the timed workload"))
        return report
    base = BASELINES[kind]
    if baseline and base != name and base in workload.registries[KINDS[kind]]:
        try:
            report.baseline = measure(base, kind, build_component(
                workload, base, kind, store=_store_for(kind)), workload)
        except Exception:  # the built-in is only a reference point
            report.baseline = None
    problem = over_budget(report.latency, report.budget_ms)
    report.checks.append(Check("latency", problem is None, problem or ""))
    return report


def _store_for(kind: str) -> Any:
    if kind != "cache":
        return None
    from ..storage.memory_store import MemoryStore

    return MemoryStore()


def check_component(target: Any, kind: str | None = None, *, workload: Workload | None = None,
                    plugins: Iterable[object] = (), options: Mapping[str, Any] | None = None,
                    budget_ms: float | None = DEFAULT_BUDGET_MS, latency: bool = True,
                    baseline: bool = True) -> list[Report]:
    """Check a component: a registered name (every kind it is registered as, or ``kind``),
    a plugin name (each of its components), or a component instance (``kind`` inferred).

    ``plugins`` are registered next to the installed ones when ``workload`` is not given.
    Returns one :class:`Report` per component and kind; raises ``LookupError`` when nothing
    by that name is registered.
    """
    workload = workload or make_workload(plugins=plugins)
    if not isinstance(target, str):
        k = kind or infer_kind(target)
        name = getattr(target, "name", None) or type(target).__name__
        return [check_one(name, k, workload, component=target, budget_ms=budget_ms,
                          latency=latency, baseline=baseline)]
    pairs = [(target, k) for k in kinds_of(workload, target)]
    if not pairs:
        pairs = [(n, k) for k, reg in KINDS.items()
                 for n, owner in workload.registries[reg].owners.items() if owner == target]
    if kind is not None:
        if kind not in KINDS:
            raise LookupError(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        pairs = [(n, k) for n, k in pairs if k == kind]
    if not pairs:
        known = sorted({n for reg in workload.registries.values() for n in reg.entries})
        raise LookupError(f"no component or plugin named {target!r}"
                          + (f" of kind {kind}" if kind else "")
                          + f" (components: {', '.join(known)})")
    return [check_one(n, k, workload, options=options, budget_ms=budget_ms, latency=latency,
                      baseline=baseline) for n, k in pairs]


__all__ = ["Check", "Report", "check_component", "check_one", "check_scorer",
           "check_candidate_generator", "check_reranker", "check_cache", "check_trainer",
           "check_in_pipeline", "check_without_categories", "infer_kind"]
