"""Online projections of stored events: user history/seen (in the store), decayed item
popularity and per-category trending counters (in process memory), rebuildable from the log."""

from __future__ import annotations

import collections
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Settings
from ..offline.datasets import DEFAULT_EVENT_WEIGHTS
from ..storage.store import InteractionRow, Store, StoreUnavailable
from .values import Event

if TYPE_CHECKING:
    from ..model import Catalog
    from .log import EventLog, ImpressionSlate

log = logging.getLogger("rankly.events")

#: Shift the landmark once scaled weights grow by e^RENORM (keeps float64 far from overflow).
RENORM = 50.0
#: User-state rows (history, seen) kept for the next write when the store refused them, at
#: most (the oldest beyond it are dropped: ``rankly replay`` rebuilds them from the log).
RETRY_MAX_ROWS = 10_000


class DecayedCounter:
    """Sums of weights per key, each decaying by half every ``half_life_s`` of event time.

    A weight ``w`` at time ``t`` is stored scaled as ``w * exp(rate * (t - t0))`` against a
    landmark ``t0``, so an update is O(1) and every key decays by the same factor: the order
    of keys never depends on the reading time, and :meth:`value` rescales to any time. Decay
    follows event timestamps, not the wall clock, so replaying the log gives the same counts.
    Thread-safe (generators read it from a worker thread while the loop writes).
    """

    def __init__(self, half_life_s: float) -> None:
        self.rate = math.log(2) / half_life_s
        self.t0: float | None = None
        self.latest = 0.0
        self.values: dict[str, float] = {}
        self._lock = threading.Lock()
        self._bound: tuple[Mapping[str, int], np.ndarray] | None = None

    def add(self, key: str, weight: float, t: float) -> None:
        self.add_many(((key, weight, t),))

    def add_many(self, updates: Iterable[tuple[str, float, float]]) -> None:
        """:meth:`add` for each ``(key, weight, t)`` in order, under one lock acquisition."""
        exp = math.exp
        with self._lock:
            values = self.values
            for key, weight, t in updates:
                if self.t0 is None:
                    self.t0 = t
                x = self.rate * (t - self.t0)
                if x > RENORM:
                    self._shift(t)
                    x = 0.0
                inc = weight * exp(x)
                values[key] = values.get(key, 0.0) + inc
                if t > self.latest:
                    self.latest = t
                if self._bound is not None:
                    idx = self._bound[0].get(key)
                    if idx is not None:
                        self._bound[1][idx] += inc

    def _shift(self, t: float) -> None:
        assert self.t0 is not None
        f = math.exp(-self.rate * (t - self.t0))
        for k in self.values:
            self.values[k] *= f
        if self._bound is not None:
            self._bound[1][:] *= f
        self.t0 = t

    def value(self, key: str, at: float) -> float:
        """The decayed sum of ``key`` as of time ``at``."""
        with self._lock:
            v = self.values.get(key, 0.0)
            return 0.0 if self.t0 is None else v * math.exp(self.rate * (self.t0 - at))

    def snapshot(self, at: float) -> dict[str, float]:
        """Every key's decayed sum as of ``at``."""
        with self._lock:
            if self.t0 is None:
                return {}
            f = math.exp(self.rate * (self.t0 - at))
            return {k: v * f for k, v in self.values.items()}

    def array(self, index: Mapping[str, int], size: int) -> np.ndarray:
        """float32 scores over ``index``'s positions (0 for keys without events), in units of
        the latest event time. The array is kept up to date incrementally while ``index`` is
        the bound one, so a read is one copy, not a pass over every key."""
        with self._lock:
            if self._bound is None or self._bound[0] is not index:
                self._bind(index, size)
            if self.t0 is None:
                return np.zeros(size, dtype=np.float32)
            f = math.exp(self.rate * (self.t0 - self.latest))
            return (self._bound[1] * f).astype(np.float32)

    def array_at(self, index: Mapping[str, int], size: int, positions: np.ndarray
                 ) -> np.ndarray:
        """``array(index, size)[positions]`` (float64) without copying the whole array: what
        an impression logs of a few items (feedback/served.py)."""
        with self._lock:
            if self._bound is None or self._bound[0] is not index:
                self._bind(index, size)
            if self.t0 is None:
                return np.zeros(len(positions))
            assert self._bound is not None
            out = self._bound[1][positions]
            out *= math.exp(self.rate * (self.t0 - self.latest))
            return out

    def _bind(self, index: Mapping[str, int], size: int) -> None:
        arr = np.zeros(size, dtype=np.float64)
        for k, v in self.values.items():
            i = index.get(k)
            if i is not None and i < size:
                arr[i] = v
        self._bound = (index, arr)

    def clear(self) -> None:
        with self._lock:
            self.t0 = None
            self.latest = 0.0
            self.values.clear()
            self._bound = None


@dataclass
class EventStats:
    """Plain counts for ``rankly replay`` and the monitoring engineer's metrics. ``users``,
    the distinct user ids, only when asked for (``rankly replay``): a serving process would
    hold every user id it ever saw."""

    events: int = 0
    by_type: collections.Counter = field(default_factory=collections.Counter)
    unknown_items: int = 0
    users: set[str] | None = field(default=None, repr=False)
    #: user-state rows the store refused (each counted once, when it first failed)
    store_errors: int = 0
    #: of those, rows dropped for good: more than :data:`RETRY_MAX_ROWS` were waiting
    store_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "by_type": dict(sorted(self.by_type.items())),
                "unknown_items": self.unknown_items,
                "users": None if self.users is None else len(self.users),
                "store_errors": self.store_errors, "store_dropped": self.store_dropped}


class Projections:
    """The live projections of one serving process.

    - user history and seen set: ``store.record_interaction`` for every event that carries
      interest (weight > 0), with ``seen=True`` for ``seen_types`` (purchase, rating), at
      the place of the event's timestamp (a late event goes behind newer ones);
    - item popularity: a :class:`DecayedCounter` of event weights per item id (unknown items
      included, so a retrained model picks their counts up), half-life
      ``popularity_half_life_hours`` (24);
    - category trending: the same per category name, half-life ``trending_half_life_hours`` (1).

    Options come from ``[plugins.events]``. ``catalog`` returns the serving model's catalog
    (item -> category, which ids are known). ``count_users``: keep the distinct user ids in
    :attr:`stats` (``rankly replay`` prints their number; a server keeps none).
    """

    def __init__(self, settings: Settings, store: Store,
                 catalog: Callable[[], Catalog | None] = lambda: None, *,
                 count_users: bool = False) -> None:
        self.count_users = count_users
        opts = settings.plugin_options("events")
        self.store = store
        self.catalog = catalog
        self.weights: dict[str, float] = {**DEFAULT_EVENT_WEIGHTS, "rating": 1.0,
                                          "impression": 0.0,
                                          **{k: float(v) for k, v in settings.event_types.items()}}
        self.seen_types = frozenset(opts.get("seen_types", ("purchase", "rating")))
        self.popularity = DecayedCounter(
            float(opts.get("popularity_half_life_hours", 24.0)) * 3600.0)
        self.trending = DecayedCounter(float(opts.get("trending_half_life_hours", 1.0)) * 3600.0)
        self.stats = self._new_stats()
        #: user-state rows the store refused, written first with the next batch
        self.unwritten: collections.deque[InteractionRow] = collections.deque()

    def _new_stats(self) -> EventStats:
        return EventStats(users=set() if self.count_users else None)

    def weight(self, event: Event) -> float:
        """Interest carried by ``event``: its type's weight; a rating weighs value / 5."""
        if event.type == "rating":
            return max(0.0, (event.value or 0.0) / 5.0) * self.weights.get("purchase", 5.0)
        return self.weights.get(event.type, 1.0)

    async def apply(self, events: Sequence[Event], *, users: bool = True,
                    counters: bool = True) -> None:
        """Fold ``events`` (in log order) into the projections.

        Counters are updated synchronously first, so concurrent batches are counted in the
        order their appends completed; then user state goes to the store in log order, in
        one batch (one round trip per 500 events on Redis). A store failure is logged and
        counted, never raised: the events are already durable and ``rankly replay`` can
        rebuild the store's state.
        """
        catalog = self.catalog()
        rows: list[InteractionRow] = []  # (user, item, seen, timestamp) in log order
        # NOTE: the counters' updates are collected and applied once per batch (one lock
        # each, not one per event): an accepted batch holds the event loop while this runs (#9)
        popular: list[tuple[str, float, float]] = []
        trending: list[tuple[str, float, float]] = []
        for e in events:
            w = self.weight(e)
            if counters:
                self._count(e, w, catalog, popular, trending)
            if users and (w > 0 or e.type in self.seen_types):
                rows.append((e.user_id, e.item_id, e.type in self.seen_types, e.timestamp))
        if popular:
            self.popularity.add_many(popular)
        if trending:
            self.trending.add_many(trending)
        if rows or self.unwritten:
            await self._record(rows)

    async def _record(self, rows: list[InteractionRow]) -> None:
        """Write user-state ``rows`` to the store after those it refused before (log order:
        a user's history keeps the order of their events). A refused batch is kept for the
        next one (at most :data:`RETRY_MAX_ROWS` rows), so a store that was briefly
        unavailable (a failover, a slot in migration) catches up with the next events
        instead of serving already-bought items until ``rankly replay``."""
        waiting = list(self.unwritten)
        self.unwritten.clear()
        try:
            await self.store.record_interactions([*waiting, *rows])
        except (StoreUnavailable, OSError, TimeoutError) as exc:
            self.stats.store_errors += len(rows)
            kept = [*waiting, *rows][-RETRY_MAX_ROWS:]
            dropped = len(waiting) + len(rows) - len(kept)
            self.stats.store_dropped += dropped
            # NOTE: rows of a batch that ran concurrently and failed too may be here already
            self.unwritten.extendleft(reversed(kept))
            while len(self.unwritten) > RETRY_MAX_ROWS:
                self.unwritten.popleft()
                self.stats.store_dropped += 1
            # a retry alone (no new rows) fails quietly: the first refusal was logged
            (log.warning if rows else log.debug)(
                "could not project %d events into the store (%d kept for the next write, "
                "%d dropped): %s", len(rows), len(self.unwritten), dropped, exc)

    async def retry_unwritten(self) -> None:
        """Write the rows the store refused, when there are some (the events service calls
        this about once a second, so they do not wait for the next event)."""
        if self.unwritten:
            await self._record([])

    def _count(self, e: Event, w: float, catalog: Catalog | None,
               popular: list[tuple[str, float, float]] | None = None,
               trending: list[tuple[str, float, float]] | None = None) -> None:
        """Count ``e`` in the stats; its counter updates go to ``popular``/``trending`` when
        given (applied by the caller), else straight to the counters."""
        idx = None if catalog is None else catalog.index.get(e.item_id)
        stats = self.stats
        stats.events += 1
        stats.by_type[e.type] += 1
        if stats.users is not None:
            stats.users.add(e.user_id)
        if catalog is not None and idx is None:
            stats.unknown_items += 1
        if w > 0:
            update = (e.item_id, w, e.timestamp)
            if popular is None:
                self.popularity.add(*update)
            else:
                popular.append(update)
            if idx is not None:
                cat = catalog.categories[idx]
                if cat >= 0:
                    update = (catalog.category_names[cat], w, e.timestamp)
                    if trending is None:
                        self.trending.add(*update)
                    else:
                        trending.append(update)

    def count_impressions(self, slates: Sequence[ImpressionSlate]) -> None:
        """What :meth:`apply` with ``users=False`` does for each served slate's impressions,
        per slate instead of per item: impressions weigh nothing by default, so only the
        counts move (building one record per item for :meth:`apply` was ~11% of a cached
        answer's CPU under load, #8). A config that gives impressions a weight gets the
        per-item path, and the same counters either way."""
        catalog = self.catalog()
        weight = self.weights.get("impression", 0.0)
        if weight > 0:
            for slate in slates:
                for item in slate.item_ids:
                    e = Event("", slate.user_id, item, "impression", slate.timestamp)
                    self._count(e, weight, catalog)
            return
        stats = self.stats
        for slate in slates:
            served = len(slate.item_ids)
            stats.events += served
            stats.by_type["impression"] += served
            if stats.users is not None:
                stats.users.add(slate.user_id)
            if catalog is not None:
                known = catalog.index
                stats.unknown_items += sum(item not in known for item in slate.item_ids)

    async def rebuild(self, event_log: EventLog, *, users: bool = True,
                      batch: int = 1000) -> EventStats:
        """Recompute every projection from ``event_log`` (counters reset first)."""
        self.popularity.clear()
        self.trending.clear()
        self.stats = self._new_stats()
        self.unwritten.clear()  # the log holds them: they are projected again below
        chunk: list[Event] = []
        async for event in event_log.replay():
            chunk.append(event)
            if len(chunk) >= batch:
                await self.apply(chunk, users=users)
                chunk = []
        if chunk:
            await self.apply(chunk, users=users)
        return self.stats

    # --- reads for candidate generators ----------------------------------------------------

    def item_scores(self, catalog: Catalog) -> np.ndarray:
        """Live decayed popularity over ``catalog`` (float32, 0 for items without events)."""
        return self.popularity.array(catalog.index, len(catalog))

    def category_scores(self, catalog: Catalog) -> np.ndarray:
        """Live trending score per category index of ``catalog`` (float32)."""
        return self.trending.array(catalog.category_index, len(catalog.category_names))

    def live_of(self, catalog: Catalog, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(item_scores(catalog)[items], category_scores(catalog)[categories of items])``,
        float64, 0 for an uncategorized item: read for a few items at once."""
        # NOTE: this runs on every computed slate: the catalog's categories with -1 read as 0,
        # and whether each has one, are made once (memo), so a read is two gathers
        memo = catalog.memo.get("live_categories")
        if memo is None:
            cats = np.asarray(catalog.categories)
            memo = catalog.memo["live_categories"] = (np.maximum(cats, 0), cats >= 0)
        trending = self.trending.array_at(catalog.category_index, len(catalog.category_names),
                                          memo[0][items])
        trending *= memo[1][items]
        return self.popularity.array_at(catalog.index, len(catalog), items), trending


_LIVE: weakref.WeakKeyDictionary[Store, Projections] = weakref.WeakKeyDictionary()


def attach(store: Store, projections: Projections) -> None:
    """Make ``projections`` the live projections readers find through ``store``."""
    _LIVE[store] = projections


def projections_of(store: Store | None) -> Projections | None:
    """The live projections attached to ``store`` (None before events start, or none)."""
    return None if store is None else _LIVE.get(store)
