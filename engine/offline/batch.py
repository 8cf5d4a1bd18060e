"""Batch work over users, shared by the local engine and the Ray workers (:mod:`.batch_ray`):
the runtimes, ranking one user as the server would, the JSON lines of ``rankly recommend`` and
the metric rows of ``rankly evaluate``.

:mod:`.evaluation`, :mod:`.batch_ray` (in its workers) and :mod:`.recommend` (the command,
for the local engine) import this module; it imports none of them. It stays light to load:
the pipeline and the runtime are imported by the functions that rank. The Ray driver of
``rankly recommend`` (it only hands out blocks of users) never loads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..config import CacheSettings, Settings
from ..model import Model
from ..types import RecommendationRequest, UserFeatures
from . import progress as progress_bars

if TYPE_CHECKING:
    from .. import pipeline
    from ..runtime import Runtime
    from ..types import Ranking

# --- metrics (one ranked list against one relevant set) ---------------------------------------


def _hits(ranked: Sequence[int], relevant: Iterable[int], k: int) -> np.ndarray:
    rel = set(relevant)
    return np.array([int(i) in rel for i in list(ranked)[:k]], dtype=np.float64)


def ndcg_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """Binary NDCG@k: log2 discount, ideal DCG over min(k, |relevant|) hits."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    hits = _hits(ranked, relevant, k)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return float((hits * disc[: hits.size]).sum() / disc[: min(k, len(relevant))].sum())


def recall_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """Hits in the top k divided by |relevant|."""
    relevant = set(relevant)
    return float(_hits(ranked, relevant, k).sum() / len(relevant)) if relevant else 0.0


def hit_rate_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """1.0 when at least one relevant item is in the top k, else 0.0."""
    return float(_hits(ranked, relevant, k).any())


def average_precision_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """AP@k: mean of precision@r over the ranks r of hits, divided by min(k, |relevant|)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    hits = _hits(ranked, relevant, k)
    prec = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((prec * hits).sum() / min(k, len(relevant)))


def intra_list_diversity(categories: Sequence[int]) -> float:
    """1 - the share of item pairs in one list with the same category (uncategorized = own)."""
    c = list(categories)
    pairs = len(c) * (len(c) - 1) / 2
    if pairs == 0:
        return 0.0
    same = sum(1 for a in range(len(c)) for b in range(a + 1, len(c))
               if c[a] == c[b] and c[a] >= 0)
    return 1.0 - same / pairs


def novelty(items: Sequence[int], popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information ``-log2(p_i)`` of the items, p_i = users of i / all users."""
    if len(items) == 0:
        return 0.0
    p = np.maximum(popularity[np.asarray(items, dtype=np.int64)], 1) / max(n_users, 1)
    return float(-np.log2(p).mean())


def coverage(lists: Iterable[Sequence[int]], n_items: int) -> float:
    """|union of the lists| / n_items."""
    seen: set[int] = set()
    for lst in lists:
        seen.update(int(i) for i in lst)
    return len(seen) / n_items if n_items else 0.0


def cap_compliance(categories: Sequence[int], cap: int) -> bool:
    """True when no category (>= 0) occurs more than ``cap`` times in the list."""
    c = np.asarray([x for x in categories if x >= 0], dtype=np.int64)
    return bool(c.size == 0 or np.bincount(c).max() <= cap)


# --- ranking through the serving pipeline ----------------------------------------------------


def serving_runtime(model: Model, settings: Settings, pm: Any = None) -> Runtime:
    """Build the runtime the server would build for ``model``, without cache tiers.

    Offline evaluation computes every user fresh through :func:`pipeline.select` (candidates
    -> filter -> score -> order -> rerank -> backfill), so a cache would only cost memory.
    """
    from ..runtime import build_runtime
    from ..storage.memory_store import MemoryStore

    settings = settings.replace(store_url="memory", cache=CacheSettings(tiers=()))
    return build_runtime(settings, model, pm, store=MemoryStore())


def rank_user(rt: Runtime, plan: pipeline.Plan, user: UserFeatures, n: int) -> Ranking:
    """Return the top ``n`` for ``user`` exactly as the server's pipeline selects them.

    Cold users (no history) get the server's cold-start answer: the fallback scorer's
    (popularity) order.
    """
    from .. import pipeline

    req = RecommendationRequest(user_id=user.user_id, n=n)
    return pipeline.select(rt, rt.components, req, plan, user, pipeline.Trace())


# --- the metric rows of `rankly evaluate` ---------------------------------------------------


@dataclass(frozen=True)
class MetricsJob:
    """What ranking and scoring one user needs besides the model: the plan, the cut-off,
    the cap checked by ``cap_ok``, and the train popularity (``novelty``)."""

    plan: pipeline.Plan
    k: int
    cap: int
    exclude_seen: bool
    popularity: np.ndarray
    n_users: int


def user_metrics(rt: Runtime, job: MetricsJob, targets: Mapping[str, np.ndarray]
                 ) -> list[tuple[str, dict[str, float], np.ndarray]]:
    """Rank every user of ``targets`` (in order) with ``rt``'s model; return per user its
    group (``warm``/``cold``), its metrics at ``job.k`` and its ranked item indices."""
    categories = np.asarray(rt.components.model.catalog.categories, np.int64)
    users = rt.components.model.users
    k = job.k
    rows = []
    for uid, rel in targets.items():
        row = users.row(uid)
        hist = users.history(row)
        user = UserFeatures(uid, row, hist, np.unique(hist) if job.exclude_seen else hist[:0])
        items = rank_user(rt, job.plan, user, k).items
        cats = categories[items]
        rows.append(("cold" if user.is_cold else "warm", {
            "ndcg": ndcg_at_k(items, rel, k), "recall": recall_at_k(items, rel, k),
            "hr": hit_rate_at_k(items, rel, k), "map": average_precision_at_k(items, rel, k),
            "ild": intra_list_diversity(cats.tolist()),
            "categories": float(np.unique(cats[cats >= 0]).size),
            "novelty": novelty(items, job.popularity, job.n_users),
            "cap_ok": float(cap_compliance(cats.tolist(), job.cap)),
        }, items))
    return rows


# --- the lines of `rankly recommend` --------------------------------------------------------


#: The time budget of a batch answer (24 h). The online deadlines (request, stage) exist for
#: a caller waiting on the network; a batch job is not latency-bound, and a slow machine
#: must not turn its lists into popularity fallbacks (#15).
BATCH_DEADLINE_MS = 86_400_000.0
#: The store's budget per read in a batch: long enough for a loaded Redis, short enough that
#: a frozen one shows as ``"fallback": "store_down"`` lines instead of a hung job.
BATCH_STORE_MS = 10_000.0


def batch_settings(settings: Settings) -> Settings:
    """``settings`` for a batch job: no request or stage deadline, a patient store budget."""
    d = settings.deadlines
    return settings.replace(deadlines=dataclasses.replace(
        d, request_ms=BATCH_DEADLINE_MS, stage_ms=BATCH_DEADLINE_MS,
        store_ms=max(d.store_ms, BATCH_STORE_MS)))


def batch_runtime(model: Model, settings: Settings, exclude_seen: bool | None = None,
                  pm: Any = None) -> Runtime:
    """The runtime of a batch job: ``settings`` with :func:`batch_settings` deadlines and the
    ``--exclude-seen`` choice (None: the configured one). Build it inside the event loop that
    will use it (a Redis store binds its connections to that loop)."""
    settings = batch_settings(settings)
    if exclude_seen is not None:
        settings = settings.replace(pipeline=dataclasses.replace(settings.pipeline,
                                                                 exclude_seen=exclude_seen))
    from ..runtime import build_runtime

    return build_runtime(settings, model, pm)


async def write_recommendations(rt: Runtime, user_ids: Iterable[str], n: int, out: IO[str],
                                concurrency: int = 8, progress: IO[str] | None = None) -> int:
    """The lines of :func:`recommend` for ``user_ids``, written to ``out`` through ``rt``,
    which stays open (a Ray worker answers many blocks with one runtime); return the count.
    A bar is drawn only on a ``progress`` stream that is a terminal."""
    from .. import pipeline

    plan = pipeline.default_plan(rt)

    async def one(uid: str) -> dict[str, Any]:
        req = RecommendationRequest(user_id=uid, n=n, request_id="")
        return await pipeline.rank(rt, req, plan)

    total = len(user_ids) if isinstance(user_ids, Sized) else None
    count = 0
    batch: list[str] = []
    with progress_bars.bar(total, "recommending", progress is None, unit="user",
                           stream=progress) as meter:
        for uid in [*user_ids, None]:
            if uid is not None:
                batch.append(uid)
                if len(batch) < concurrency:
                    continue
            for uid_done, answer in zip(batch, await asyncio.gather(*map(one, batch)),
                                        strict=True):
                items = answer["items"]
                out.write(json.dumps({
                    "user_id": uid_done, "items": [it["item_id"] for it in items],
                    "scores": [it["score"] if math.isfinite(it["score"]) else 0.0
                               for it in items],
                    "fallback": answer["fallback"],
                }) + "\n")
                count += 1
            meter.update(len(batch))
            batch = []
    return count


def recommend(model: Model, user_ids: Iterable[str], n: int, settings: Settings,
              exclude_seen: bool | None = None, pm: Any = None, out: IO[str] | None = None,
              concurrency: int = 8, progress: IO[str] | None = None) -> int:
    """Write one JSON line per user (user_id, items, scores, fallback); return the count.

    Runs the server's pipeline minus HTTP: one runtime (:func:`batch_runtime`: configured
    store and cache tiers, :func:`batch_settings` deadlines) and :func:`pipeline.rank` with
    the default plan, ``concurrency`` users at a time in one event loop; lines keep the order
    of ``user_ids``. ``fallback`` is null for a personalized answer, else the pipeline's
    reason (``cold_start`` for an unknown user, who gets the cold-start answer as over HTTP;
    ``plugin_error``, ``store_down``...). A bar over the users is drawn on ``progress`` when it
    is a terminal.
    """
    async def run() -> int:
        rt = batch_runtime(model, settings, exclude_seen, pm)
        try:
            return await write_recommendations(rt, user_ids, n, out or sys.stdout,
                                               max(concurrency, 1), progress)
        finally:
            await rt.store.close()

    return asyncio.run(run())
