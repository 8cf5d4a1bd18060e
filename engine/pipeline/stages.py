"""The stages of a computation, in order: features, candidates, filter, score, order, rerank.

:func:`select` runs them (in a worker thread, or on the loop for built-in plans) and falls
back to the popularity ranking when a stage has nothing; each stage times itself in the
request's :class:`Trace` and isolates the plugins it calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rankly import _fast

from ..model import Model
from ..storage.store import EMPTY_USER, OnlineUser, StoreUnavailable
from ..types import (
    Candidates,
    CatalogScorer,
    Ranking,
    Reason,
    RecommendationRequest,
    UserFeatures,
)
from .plan import Plan

if TYPE_CHECKING:
    from ..runtime import Components, Runtime

log = logging.getLogger("rankly.pipeline")
MIN_RERANK_DEPTH = 50


@dataclass
class Trace:
    """What happened while computing one answer: the fallback reason, each component call's
    outcome ("ok", "error", "invalid", "timeout") for its breaker, and stage timings."""

    fallback: str | None = None
    current: str = ""
    spares: Ranking | None = None  # the ranked items after the slate (cache.spare_items)
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    stages: list[tuple[str, str, float]] = field(default_factory=list)

    #: a component the general path leaves out (its fused call just failed)
    skip: str = ""
    #: (name, component) that explains a fused pool's items (see :func:`explained`)
    explainer: tuple[str, Any] | None = None

    #: what the served slate's impressions log (feedback/served.py), held by reference: the
    #: ranking before the rerankers, the component that scored it, each generator's list
    pool: Ranking | None = None
    scorer: str | None = None
    sources: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def ok(self, component: str) -> None:
        self.outcomes.append((component, "ok"))

    def fail(self, component: str, kind: str, fallback: str) -> None:
        self.outcomes.append((component, kind))
        self.fallback = self.fallback or fallback


async def fetch_features(rt: Runtime, model: Model, req: RecommendationRequest,
                         trace: Trace) -> UserFeatures:
    """Merge the user's trained history with online state from the store (one round trip)."""
    start = time.perf_counter()
    online: OnlineUser = EMPTY_USER
    if req.user_id is not None:
        try:
            async with asyncio.timeout(rt.settings.deadlines.store_ms / 1000.0 * 2):
                online = await rt.store.fetch_user(req.user_id)
        except (StoreUnavailable, TimeoutError, OSError):
            trace.fallback = "store_down"
    row = model.users.row(req.user_id)
    catalog = model.catalog
    # ``seen`` is what the user must not be shown: nothing when ``pipeline.exclude_seen`` is
    # off (every generator, the fused path and the fallback exclude exactly that set)
    keep_seen = rt.settings.pipeline.exclude_seen
    if not req.session_items and not online.history and not online.seen:
        # the trained history alone: already distinct item indices, newest first
        history = model.users.history(row)
        trace.stages.append(("features", rt.store.kind, time.perf_counter() - start))
        return UserFeatures(req.user_id, row, history,
                            np.sort(history) if keep_seen else history[:0])
    parts = []
    if req.session_items:
        parts.append(catalog.lookup(req.session_items))
    if online.history:
        parts.append(catalog.lookup(online.history))
    parts.append(model.users.history(row))
    history = _unique_in_order(np.concatenate(parts))
    seen = history
    if online.seen:
        seen = np.concatenate([seen, catalog.lookup(tuple(online.seen))])
    seen = np.unique(seen[seen >= 0]) if keep_seen else history[:0]
    trace.stages.append(("features", rt.store.kind, time.perf_counter() - start))
    return UserFeatures(req.user_id, row, history, seen, session=bool(req.session_items))


def select(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
           user: UserFeatures, trace: Trace) -> Ranking:
    """Candidates -> filter -> score -> order -> rerank (runs in a worker thread)."""
    depth = max(req.n * rt.settings.pipeline.rerank_depth, MIN_RERANK_DEPTH)
    if user.is_cold:  # popularity, still diversity-capped like every other slate
        trace.fallback = trace.fallback or "cold_start"
        pool = fallback_ranking(comps, user, req, depth)
        trace.pool, trace.scorer = pool, rt.settings.pipeline.fallback
        ranking = rerank(rt, comps, plan, user, pool, req.n, trace)
        trace.spares = spare_ranking(rt, comps, plan, user, pool, ranking, req.n)
        return ranking
    pool = fused_pool(rt, comps, req, plan, user, depth, trace)
    if pool is None:
        pool = chain_pool(rt, comps, req, plan, user, depth, trace)
        if pool is None:
            trace.fallback = trace.fallback or "no_candidates"
            return fallback_ranking(comps, user, req, req.n)
    trace.pool = pool
    ranking = rerank(rt, comps, plan, user, pool, req.n, trace)
    if len(ranking) < req.n:
        return backfill(comps, user, req, explained(ranking, user, trace))
    trace.spares = spare_ranking(rt, comps, plan, user, pool, ranking, req.n)
    if trace.spares is not None:
        trace.spares = explained(trace.spares, user, trace)
    return explained(ranking, user, trace)

#: The reason of a fused pool's items until :func:`explained` asks for them (after the
#: rerankers, so only the served items and spares are explained).
UNEXPLAINED = -1


def explained(ranking: Ranking, user: UserFeatures, trace: Trace) -> Ranking:
    """``ranking`` with the reasons of its unexplained items (a fused pool's) filled in by
    the fused component's ``explain``; a failure leaves them FOR_YOU without an anchor."""
    if trace.explainer is None:
        return ranking
    todo = np.flatnonzero(ranking.reasons == UNEXPLAINED)
    if todo.size == 0:
        return ranking
    reasons = ranking.reasons.copy()
    anchors = ranking.anchors.copy()
    name, comp = trace.explainer
    try:
        r, a = comp.explain(user, ranking.items[todo])
        r, a = np.asarray(r, dtype=np.int8), np.asarray(a, dtype=np.int64)
        if r.shape != todo.shape or a.shape != todo.shape:
            raise ValueError("explain returned arrays of another length")
    except Exception:
        log.warning("%s could not explain its items", name, exc_info=True)
        trace.fail(name, "error", "plugin_error")
        r = np.full(todo.size, int(Reason.FOR_YOU), dtype=np.int8)
        a = np.full(todo.size, -1, dtype=np.int64)
    reasons[todo] = r
    anchors[todo] = a
    return Ranking(ranking.items, ranking.scores, reasons, anchors)


def chain_pool(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
               user: UserFeatures, depth: int, trace: Trace) -> Ranking | None:
    """The general path: every generator's candidates, merged and filtered, scored by the
    first scorer that answers, the ``depth`` best in order (None: no candidates)."""
    cands = generate_candidates(rt, comps, plan, user, trace)
    cands = filter_candidates(rt, comps, req, user, cands, trace)
    if len(cands) == 0:
        return None
    scores = score_candidates(rt, comps, plan, user, cands, trace)
    return order(cands, scores, depth)


def fused_component(comps: Components, plan: Plan) -> tuple[str, CatalogScorer] | None:
    """The plan's first generator when it is also its first scorer and scores the whole
    catalog (:class:`CatalogScorer`); else None."""
    if not plan.candidates or not plan.scorers or plan.candidates[0] != plan.scorers[0]:
        return None
    name = plan.candidates[0]
    comp = comps.generators.get(name)
    # NOTE: attribute checks, not isinstance on the runtime-checkable protocol: this runs on
    # every miss, and the protocol check costs several microseconds
    if (comp is None or comp is not comps.scorers.get(name)
            or not hasattr(comp, "catalog_scores") or not hasattr(comp, "explain")):
        return None
    return name, comp


def fused_pool(rt: Runtime, comps: Components, req: RecommendationRequest, plan: Plan,
               user: UserFeatures, depth: int, trace: Trace) -> Ranking | None:
    """The ``depth`` best items of the fused path, or None to take the general path.

    When the plan's first generator is also its first scorer and scores the whole catalog,
    the general path would generate its top items, add the other generators' candidates,
    drop seen, excluded and off-category ones, and score them all with that same component:
    its best allowed items, whenever its own top items outnumber the dropped ones. Here they
    come from one compiled top-k over its catalog scores with every exclusion at once (exact
    even when many are dropped). A failure or invalid output counts against the component's
    breaker and the request takes the general path, with its fallbacks.
    """
    found = fused_component(comps, plan)
    if found is None or not rt.settings.pipeline.exclude_seen:
        return None
    name, comp = found
    if not rt.breakers[name].allow():
        return None
    trace.current = name
    start = time.perf_counter()
    try:
        scores = np.asarray(comp.catalog_scores(user), dtype=np.float32)
        if scores.shape != (len(comps.model.catalog),):
            raise ValueError(f"catalog_scores returned shape {scores.shape}")
        if req.categories:
            scores = np.where(comps.category_mask(req.categories), scores, np.float32(np.nan))
        exclude = user.seen
        if req.exclude:
            exclude = np.concatenate([exclude, comps.model.catalog.lookup(req.exclude)])
        idx, vals = _fast.topk(scores, depth, exclude=exclude)
        if not np.isfinite(vals).all():
            raise ValueError("catalog_scores returned infinite scores")
        # reasons come after the rerankers, for the items they keep (:func:`explained`)
        pool = Ranking(idx, vals, np.full(idx.size, UNEXPLAINED, dtype=np.int8),
                       np.full(idx.size, -1, dtype=np.int64))
        trace.explainer = (name, comp)
        trace.scorer = name  # the only source too: its rank is the pool's
    except Exception:
        log.warning("fused ranking by %s failed; taking the general path", name, exc_info=True)
        trace.fail(name, "error", "plugin_error")
        trace.skip = name  # the general path does not ask it again
        return None
    finally:
        trace.current = ""
        elapsed = time.perf_counter() - start
        trace.stages.append(("fused", name, elapsed))
    if elapsed > rt.settings.deadlines.stage_ms / 1000.0:
        trace.fail(name, "timeout", "plugin_timeout")
    else:
        trace.ok(name)
    return pool if len(pool) else None


def spare_ranking(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                  pool: Ranking, ranking: Ranking, n: int) -> Ranking | None:
    """The ``cache.spare_items`` items the rerankers rank right after the slate.

    The rerankers run again for ``n + spare_items`` slots (a diversity cap then holds over
    slate and spares together); the spares are that longer slate's items not in ``ranking``,
    in its order. Outcomes of this second pass are not counted: the slate's pass counted them.
    """
    m = rt.settings.cache.spare_items
    if m <= 0 or not rt.caches or len(pool) <= len(ranking):
        return None
    longer = rerank(rt, comps, plan, user, pool, n + m, Trace())  # isolates the plugins
    taken = set(ranking.items.tolist())
    rest = [i for i, item in enumerate(longer.items.tolist()) if item not in taken]
    return longer.take(np.asarray(rest[:m], dtype=np.int64))


def generate_candidates(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                        trace: Trace) -> Candidates:
    per = rt.settings.pipeline.candidates_per_generator
    n_items = len(comps.model.catalog)
    found: list[Candidates] = []
    trace.sources = []  # an empty fused pool came first: this path starts over
    for name in plan.candidates:
        gen = comps.generators.get(name)
        if gen is None or name == trace.skip or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            c = gen.generate(user, per)
            items = np.asarray(c.items, dtype=np.int64)
            if items.ndim != 1 or len(c.reasons) != items.size or len(c.anchors) != items.size:
                raise ValueError("candidate arrays of different lengths")
            ok = (items >= 0) & (items < n_items)
            if not ok.all():
                trace.fail(name, "invalid", "plugin_error")
                c = Candidates(items[ok], np.asarray(c.reasons)[ok], np.asarray(c.anchors)[ok])
            found.append(c)
            trace.sources.append((name, np.asarray(c.items, dtype=np.int64)))
        except Exception:
            log.warning("candidate generator %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
        trace.stages.append(("candidates", name, time.perf_counter() - start))
    trace.current = ""
    if not found:
        return Candidates.empty()
    items = np.concatenate([c.items for c in found])
    first = _first_occurrences(items)  # keep the first generator's reason for a repeat
    return Candidates(
        items[first],
        np.concatenate([np.asarray(c.reasons, dtype=np.int8) for c in found])[first],
        np.concatenate([np.asarray(c.anchors, dtype=np.int64) for c in found])[first],
    )


def filter_candidates(rt: Runtime, comps: Components, req: RecommendationRequest,
                      user: UserFeatures, cands: Candidates, trace: Trace) -> Candidates:
    """Drop already-seen items, the request's explicit excludes, and items outside categories."""
    start = time.perf_counter()
    keep = np.ones(len(cands), dtype=bool)
    if rt.settings.pipeline.exclude_seen and user.seen.size:
        keep &= ~np.isin(cands.items, user.seen, assume_unique=False)
    if req.exclude:
        keep &= ~np.isin(cands.items, comps.model.catalog.lookup(req.exclude))
    if req.categories:
        keep &= comps.category_mask(req.categories)[cands.items]
    trace.stages.append(("filter", "builtin", time.perf_counter() - start))
    return cands.take(np.flatnonzero(keep))


def score_candidates(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures,
                     cands: Candidates, trace: Trace) -> np.ndarray:
    """Score with the first scorer of the chain whose output is valid; else the fallback."""
    stage_budget = rt.settings.deadlines.stage_ms / 1000.0
    for name in plan.scorers:
        scorer = comps.scorers.get(name)
        if scorer is None or name == trace.skip or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            scores = np.asarray(scorer.score(user, cands.items), dtype=np.float32)
        except Exception:
            log.warning("scorer %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
            continue
        finally:
            elapsed = time.perf_counter() - start
            trace.stages.append(("score", name, elapsed))
            trace.current = ""
        if scores.shape != cands.items.shape or not np.isfinite(scores).all():
            log.warning("scorer %s returned invalid scores (shape %s)", name, scores.shape)
            trace.fail(name, "invalid", "plugin_error")
            continue
        if elapsed > stage_budget:
            trace.fail(name, "timeout", "plugin_timeout")
        else:
            trace.ok(name)
        trace.scorer = name
        return np.ascontiguousarray(scores)
    trace.fallback = trace.fallback or "plugin_error"
    trace.scorer = rt.settings.pipeline.fallback
    return comps.fallback_scores[cands.items]


def order(cands: Candidates, scores: np.ndarray, depth: int) -> Ranking:
    """The ``depth`` best candidates in descending score order (compiled top-k)."""
    pos, vals = _fast.topk(scores, depth)
    return Ranking(cands.items[pos], vals, cands.reasons[pos], cands.anchors[pos])


def rerank(rt: Runtime, comps: Components, plan: Plan, user: UserFeatures, ranking: Ranking,
           n: int, trace: Trace) -> Ranking:
    current = ranking
    for name in plan.rerankers:
        rr = comps.rerankers.get(name)
        if rr is None or not rt.breakers[name].allow():
            continue
        trace.current = name
        start = time.perf_counter()
        try:
            out = rr.rerank(user, current, max(n, 1))
            # NOTE: sets, not np.isin/np.unique: a slate is 10-100 ids, where NumPy's call
            # overhead is 6x the work (#8)
            got = out.items.tolist()
            distinct = set(got)
            if not (len(distinct) == len(got) and distinct.issubset(current.items.tolist())
                    and np.isfinite(out.scores).all()):
                raise ValueError("reranker returned items it was not given, duplicates or NaN")
            current = out
            trace.ok(name)
        except Exception:
            log.warning("reranker %s failed", name, exc_info=True)
            trace.fail(name, "error", "plugin_error")
        trace.stages.append(("rerank", name, time.perf_counter() - start))
    trace.current = ""
    return current.take(np.arange(min(n, len(current))))


def fallback_ranking(comps: Components, user: UserFeatures, req: RecommendationRequest,
                     n: int, exclude_more: np.ndarray | None = None) -> Ranking:
    """Best items by the fallback scorer, honouring seen, exclude and category filters."""
    scores = comps.fallback_scores
    if req.categories:
        scores = np.where(comps.category_mask(req.categories), scores, np.float32(np.nan))
    parts = [user.seen]
    if req.exclude:
        parts.append(comps.model.catalog.lookup(req.exclude))
    if exclude_more is not None:
        parts.append(exclude_more)
    idx, vals = _fast.topk(scores, n, exclude=np.concatenate(parts))
    if req.categories:
        reasons = np.full(idx.size, int(Reason.TRENDING_IN), dtype=np.int8)
        anchors = comps.model.catalog.categories[idx].astype(np.int64)
    else:
        reasons = np.full(idx.size, int(Reason.POPULAR), dtype=np.int8)
        anchors = np.full(idx.size, -1, dtype=np.int64)
    return Ranking(idx, vals, reasons, anchors)


def backfill(comps: Components, user: UserFeatures, req: RecommendationRequest,
             ranking: Ranking) -> Ranking:
    """Top up a short slate with fallback items ranked below it (scores kept monotone)."""
    more = fallback_ranking(comps, user, req, req.n - len(ranking), exclude_more=ranking.items)
    if len(more) == 0:
        return ranking
    floor = float(ranking.scores[-1]) if len(ranking) else 0.0
    shifted = (floor - 1.0 - np.arange(len(more), dtype=np.float32)).astype(np.float32)
    return Ranking(
        np.concatenate([ranking.items, more.items]),
        np.concatenate([ranking.scores, shifted]),
        np.concatenate([ranking.reasons, more.reasons]),
        np.concatenate([ranking.anchors, more.anchors]),
    )


def _unique_in_order(idx: np.ndarray) -> np.ndarray:
    idx = idx[idx >= 0]
    return idx[_first_occurrences(idx)]


def _first_occurrences(items: np.ndarray) -> np.ndarray:
    """Ascending positions of the first occurrence of each distinct value of ``items``.

    ``np.unique(items, return_index=True)`` then a sort, with less call overhead (a stable
    argsort and one comparison of neighbours): ~30% cheaper on a few hundred ids (#8).
    """
    order = np.argsort(items, kind="stable")
    ordered = items[order]
    keep = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    first = order[keep]
    first.sort()
    return first
