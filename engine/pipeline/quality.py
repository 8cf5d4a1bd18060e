"""Recommendation quality over a rolling window, kept incrementally in a ring of time buckets.

A served slate is queued on the request path (one append); it is folded into the current
bucket in O(slate size) off that path, by the window's exporter thread (every
``EXPORT_SECONDS``) or by any read. A bucket leaving the window is subtracted in O(items it
saw). Nothing ever rescans the window's slates. The window is a ring of
``window_seconds / bucket_seconds`` buckets (default 15 one-minute buckets).

Definitions (all over the slates of the window):

- catalog coverage: share of catalog items recommended at least once;
- intra-list diversity: per slate of 2+ items, ``1 - same-category pairs / all pairs``
  (items without a category are never "same"), averaged over those slates;
- popularity: mean over served items of ``pop / mean(pop)`` (1 = an average catalog item);
- novelty: mean over served items of ``-log2(pop / sum(pop))``, with a popularity of 0 counted
  as half the smallest positive one so that unseen items have a finite novelty;
- cold-start share: slates served to users without any history / all slates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics

if TYPE_CHECKING:
    from ..model import Model
    from ..runtime import Runtime

log = logging.getLogger("rankly.quality")

DEFAULT_WINDOW_SECONDS = 15 * 60.0
DEFAULT_BUCKET_SECONDS = 60.0
EXTRAS_KEY = "quality"
#: How often a serving process folds queued slates in and refreshes its gauges.
EXPORT_SECONDS = 1.0
#: Slates queued at most between two folds; older ones are dropped (and counted) beyond it.
MAX_PENDING = 1 << 16
#: Slates folded per vectorized batch.
DRAIN_BATCH = 4096


@dataclass
class Bucket:
    """Aggregates of the slates served during one bucket interval."""

    start: int  # bucket number: floor(time / bucket_seconds)
    seen: np.ndarray  # bool over the catalog: recommended at least once in this bucket
    slates: int = 0
    cold: int = 0
    diverse_slates: int = 0  # slates of 2+ items (the diversity denominator)
    diversity_sum: float = 0.0
    items: int = 0
    popularity_sum: float = 0.0
    novelty_sum: float = 0.0

    def summary(self, bucket_seconds: float) -> dict[str, float]:
        n = max(self.seen.size, 1)
        return {
            "t": self.start * bucket_seconds,
            "slates": self.slates,
            "coverage": float(np.count_nonzero(self.seen)) / n,
            "diversity": _ratio(self.diversity_sum, self.diverse_slates),
            "popularity": _ratio(self.popularity_sum, self.items),
            "novelty": _ratio(self.novelty_sum, self.items),
            "cold_start_share": _ratio(self.cold, self.slates),
        }


@dataclass
class QualityWindow:
    """Rolling-window quality of served slates for one catalog (one model version).

    ``categories`` is each item's primary category index (-1 for none) and ``popularity`` each
    item's popularity (any non-negative scale); both are arrays over the catalog.
    """

    categories: np.ndarray
    popularity: np.ndarray
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    bucket_seconds: float = DEFAULT_BUCKET_SECONDS
    clock: Callable[[], float] = time.time
    version: str = ""
    buckets: list[Bucket] = field(default_factory=list)  # oldest first

    def __post_init__(self) -> None:
        if self.bucket_seconds <= 0 or self.window_seconds < self.bucket_seconds:
            raise ValueError("need 0 < bucket_seconds <= window_seconds")
        self.categories = np.asarray(self.categories, dtype=np.int64)
        pop = np.maximum(np.asarray(self.popularity, dtype=np.float64), 0.0)
        n = self.categories.size
        total = float(pop.sum())
        if pop.size != n or total <= 0:
            pop = np.ones(n)  # no usable popularity: every item counts as average
            total = float(n)
        self._rel_pop = pop / (total / max(n, 1))
        floor = pop[pop > 0].min() / 2
        self._novelty = -np.log2(np.maximum(pop, floor) / total)
        self._n_buckets = max(1, round(self.window_seconds / self.bucket_seconds))
        # how many live buckets saw each item: coverage is the count of non-zero entries
        self._bucket_hits = np.zeros(n, dtype=np.int32)
        self._covered = 0
        self._totals = Bucket(-1, np.zeros(0, dtype=bool))
        self._lock = threading.Lock()
        self._pending: deque[tuple[np.ndarray, bool, float]] = deque(maxlen=MAX_PENDING)
        self.dropped = 0  # slates dropped because MAX_PENDING were already queued

    # --- the request path ---

    def record(self, items: np.ndarray, cold: bool = False, now: float | None = None) -> None:
        """Queue one served slate (O(1)); it counts from the next :meth:`drain` on. ``items``
        must not be modified afterwards."""
        if len(self._pending) == MAX_PENDING:
            self.dropped += 1
        self._pending.append((items, cold, self.clock() if now is None else now))

    def drain(self) -> None:
        """Fold every queued slate into the window (reads call it first), a batch of the
        slates of one time bucket at a time, vectorized: a second of traffic costs a few
        NumPy calls, not one pass per slate."""
        while self._pending:
            batch = []
            while self._pending and len(batch) < DRAIN_BATCH:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:
                    break
            start = 0
            for end in range(1, len(batch) + 1):
                # consecutive slates of one bucket (slates come in time order)
                if end == len(batch) or (math.floor(batch[end][2] / self.bucket_seconds)
                                         != math.floor(batch[start][2] / self.bucket_seconds)):
                    self.observe_batch([b[0] for b in batch[start:end]],
                                       [b[1] for b in batch[start:end]], batch[end - 1][2])
                    start = end

    def observe_batch(self, slates: list[np.ndarray], colds: list[bool], now: float) -> None:
        """Count several served slates of one time bucket at once (:meth:`observe` each)."""
        if not slates:
            return
        lengths = np.fromiter((len(x) for x in slates), dtype=np.int64, count=len(slates))
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in slates])
        slate_of = np.repeat(np.arange(len(slates)), lengths)
        ok = (items >= 0) & (items < self.categories.size)
        items, slate_of = items[ok], slate_of[ok]
        lengths = np.bincount(slate_of, minlength=len(slates))
        delta = Bucket(-1, np.zeros(0, dtype=bool), slates=len(slates), cold=int(sum(colds)),
                       items=int(items.size))
        if items.size:
            delta.popularity_sum = float(self._rel_pop[items].sum())
            delta.novelty_sum = float(self._novelty[items].sum())
        multi = lengths >= 2
        if multi.any():
            cats = self.categories[items]
            known = cats >= 0
            # same-category pairs per slate: counts of each (slate, category)
            key = slate_of[known] * (int(self.categories.max(initial=0)) + 1) + cats[known]
            keys, counts = np.unique(key, return_counts=True)
            same = np.bincount(keys // (int(self.categories.max(initial=0)) + 1),
                               weights=counts * (counts - 1) / 2.0, minlength=len(slates))
            pairs = lengths * (lengths - 1) / 2.0
            delta.diverse_slates = int(multi.sum())
            delta.diversity_sum = float((1.0 - same[multi] / pairs[multi]).sum())
        with self._lock:
            bucket = self._advance(now)
            fresh = np.unique(items[~bucket.seen[items]])
            bucket.seen[fresh] = True
            self._bucket_hits[fresh] += 1
            self._covered += int(np.count_nonzero(self._bucket_hits[fresh] == 1))
            _add(bucket, delta, 1)
            _add(self._totals, delta, 1)

    # --- updates ---

    def observe(self, items: np.ndarray, cold: bool = False, now: float | None = None) -> None:
        """Count one served slate (catalog indices, any order; out-of-range ids are ignored)."""
        self.observe_batch([items], [cold], self.clock() if now is None else now)

    def expire(self, now: float | None = None) -> None:
        """Drop the buckets that left the window (observe() also does this)."""
        self.drain()
        with self._lock:
            self._advance(self.clock() if now is None else now)

    def _advance(self, now: float) -> Bucket:
        current = math.floor(now / self.bucket_seconds)
        oldest_kept = current - self._n_buckets + 1
        while self.buckets and self.buckets[0].start < oldest_kept:
            self._drop(self.buckets.pop(0))
        if not self.buckets or self.buckets[-1].start < current:
            self.buckets.append(Bucket(current, np.zeros(self.categories.size, dtype=bool)))
        # a clock that went backwards keeps writing into the newest bucket
        return self.buckets[-1]

    def _drop(self, bucket: Bucket) -> None:
        idx = np.flatnonzero(bucket.seen)
        self._bucket_hits[idx] -= 1
        self._covered -= int(np.count_nonzero(self._bucket_hits[idx] == 0))
        _add(self._totals, bucket, -1)

    # --- reads ---

    def snapshot(self) -> dict[str, float]:
        """The window's current values (ratios are 0 while the window is empty)."""
        self.drain()
        t = self._totals
        with self._lock:
            return {
                "slates": t.slates,
                "coverage": self._covered / max(self.categories.size, 1),
                "diversity": _ratio(t.diversity_sum, t.diverse_slates),
                "popularity": _ratio(t.popularity_sum, t.items),
                "novelty": _ratio(t.novelty_sum, t.items),
                "cold_start_share": _ratio(t.cold, t.slates),
            }

    def history(self) -> list[dict[str, float]]:
        """Per-bucket values, oldest first (``t`` is the bucket's start, Unix seconds)."""
        self.drain()
        with self._lock:
            return [b.summary(self.bucket_seconds) for b in self.buckets]

    def export(self) -> None:
        """Set the Prometheus quality gauges from the window."""
        s = self.snapshot()
        metrics.QUALITY_SLATES.set(s["slates"])
        metrics.QUALITY_COVERAGE.set(s["coverage"])
        metrics.QUALITY_DIVERSITY.set(s["diversity"])
        metrics.QUALITY_POPULARITY.set(s["popularity"])
        metrics.QUALITY_NOVELTY.set(s["novelty"])
        metrics.QUALITY_COLD_START.set(s["cold_start_share"])


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def _add(into: Bucket, delta: Bucket, sign: int) -> None:
    into.slates += sign * delta.slates
    into.cold += sign * delta.cold
    into.diverse_slates += sign * delta.diverse_slates
    into.diversity_sum += sign * delta.diversity_sum
    into.items += sign * delta.items
    into.popularity_sum += sign * delta.popularity_sum
    into.novelty_sum += sign * delta.novelty_sum


def window_for(model: Model, window_seconds: float = DEFAULT_WINDOW_SECONDS,
               bucket_seconds: float = DEFAULT_BUCKET_SECONDS) -> QualityWindow:
    """A fresh window over ``model``'s catalog, popularity from its ``pop`` part if trained."""
    part = model.part("pop")
    pop = np.asarray(part["scores"]) if part is not None else np.ones(len(model.catalog))
    return QualityWindow(np.asarray(model.catalog.categories), pop, window_seconds,
                         bucket_seconds, version=model.version)


def current(rt: Runtime) -> QualityWindow:
    """The runtime's window for the live model version (a new version starts a new window)."""
    model = rt.components.model
    win = rt.extras.get(EXTRAS_KEY)
    if win is None or win.version != model.version:
        win = rt.extras[EXTRAS_KEY] = window_for(model, rt.settings.quality_window_minutes * 60)
    return win


def observe(rt: Runtime, model: Model, items: np.ndarray, cold: bool) -> None:
    """Queue one served slate of ``model`` (catalog indices); the runtime's exporter thread
    counts it and refreshes the gauges within ``EXPORT_SECONDS`` (a scrape at once)."""
    win = current(rt)
    if win.version != model.version:  # computed on a model that was swapped out meanwhile
        return
    win.record(items, cold)
    _ensure_exporter(rt)


_exporters_lock = threading.Lock()
EXPORTER_KEY = "quality_exporter"
STOPPED = "stopped"


def _ensure_exporter(rt: Runtime) -> None:
    """Start the runtime's exporter thread once: it folds queued slates and refreshes the
    gauges every ``EXPORT_SECONDS``, and ends with the runtime or at :func:`stop`."""
    if EXPORTER_KEY in rt.extras:
        return
    with _exporters_lock:
        if EXPORTER_KEY in rt.extras:
            return
        rt.extras[EXPORTER_KEY] = True
        ref = weakref.ref(rt)

        def run() -> None:
            while True:
                time.sleep(EXPORT_SECONDS)
                runtime = ref()
                if runtime is None:
                    return
                extras = runtime.extras
                del runtime  # hold the runtime only while looking its window up
                win = extras.get(EXTRAS_KEY)
                if extras.get(EXPORTER_KEY) is STOPPED:
                    return
                if win is None:
                    continue
                try:
                    win.drain()
                    if extras.get(EXPORTER_KEY) is STOPPED:  # its app stopped meanwhile
                        return
                    win.export()
                except Exception:  # never let the exporter die on one bad slate
                    log.warning("quality exporter failed", exc_info=True)

        threading.Thread(target=run, name="rankly-quality", daemon=True).start()


def stop(rt: Runtime) -> None:
    """End the runtime's exporter thread within ``EXPORT_SECONDS`` and start none after it
    (the app's shutdown), so a runtime waiting for the collector exports nothing more."""
    with _exporters_lock:
        rt.extras[EXPORTER_KEY] = STOPPED


def refresh(rt: Runtime) -> QualityWindow:
    """Expire old buckets and refresh the gauges (before a scrape, when traffic stopped)."""
    win = current(rt)
    win.expire()
    win.export()
    return win
