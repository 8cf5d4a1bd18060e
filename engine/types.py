"""Small immutable values passed between pipeline stages, and the component protocols.

The bottom of the engine: it imports nothing of the engine, so every module may import it.
What a component factory receives (``ComponentContext``) is in ``plugins.py``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: What a user or item id may not contain, wherever it comes from (an HTTP request, an events
#: CSV): C0 and C1 control characters, DEL, and lone surrogates (only a JSON ``\ud800`` escape
#: can carry one). Any other text is an id, so what the API stored trains as it was sent.
FORBIDDEN_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

#: ``register(name, component_or_factory, options=None)``: the callback every contribution
#: hook receives. ``options`` declares the option keys the component accepts (an iterable of
#: keys, or a mapping of key to default); unknown keys in its ``[plugins.<name>]`` table then
#: stop the server at start. Without it the component's options are not checked.
Register = Callable[..., None]

IntArray = np.ndarray  # int64, 1-D, item indices into the model's catalog
FloatArray = np.ndarray  # float32, 1-D


class Reason(enum.IntEnum):
    """Why an item is in a slate; rendered to text only for the returned items."""

    POPULAR = 0
    BECAUSE_YOU_LIKED = 1  # anchor: a history item index
    SIMILAR_TO = 2  # anchor: the item the request is about / a session item
    TRENDING_IN = 3  # anchor: a category index
    NEW = 4
    FOR_YOU = 5  # latent-factor match, no single anchor
    BOOSTED = 6  # anchor: -1; promoted by a business rule


EMPTY_INDEX = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """What the pipeline knows about the requesting user, fetched in one store round trip.

    ``history``: item indices, most recent first (training history followed by nothing older,
    online events prepended). ``seen``: sorted unique item indices the user must not be shown
    again (history plus online views/purchases). ``row``: the user's row in the model's user
    tables, or -1 for a user the model never saw (cold or anonymous).
    """

    user_id: str | None
    row: int
    history: IntArray
    seen: IntArray
    session: bool = False

    @property
    def is_cold(self) -> bool:
        return self.history.size == 0


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidate item indices with one reason (and anchor) each; parallel arrays."""

    items: IntArray
    reasons: np.ndarray  # int8 Reason codes
    anchors: IntArray  # int64 item/category index, -1 for none

    @classmethod
    def of(cls, items: np.ndarray, reason: Reason, anchors: np.ndarray | None = None) -> Candidates:
        items = np.asarray(items, dtype=np.int64)
        return cls(
            items=items,
            reasons=np.full(items.size, int(reason), dtype=np.int8),
            anchors=(
                np.full(items.size, -1, dtype=np.int64)
                if anchors is None
                else np.asarray(anchors, dtype=np.int64)
            ),
        )

    @classmethod
    def empty(cls) -> Candidates:
        return cls.of(EMPTY_INDEX, Reason.POPULAR)

    def __len__(self) -> int:
        return int(self.items.size)

    def take(self, positions: np.ndarray) -> Candidates:
        return Candidates(self.items[positions], self.reasons[positions], self.anchors[positions])


def anchored_reasons(history: IntArray, contrib_rows: np.ndarray, cols: np.ndarray
                     ) -> tuple[np.ndarray, IntArray]:
    """Return (reasons, anchors) for candidates from per-history-item contributions.

    ``contrib_rows`` is [H, M] (row h: history item ``history[h]``); ``cols`` picks each
    candidate's column (negative: no column, so no anchor). Reason ``BECAUSE_YOU_LIKED`` with
    the history item of the largest positive contribution as anchor, else ``FOR_YOU`` with
    anchor -1. The result is ready for ``Candidates(items, reasons, anchors)``.
    """
    n = cols.size
    reasons = np.full(n, int(Reason.FOR_YOU), dtype=np.int8)
    anchors = np.full(n, -1, dtype=np.int64)
    ok = np.flatnonzero(cols >= 0)
    if ok.size and history.size:
        c = contrib_rows[:, cols[ok]]
        best = np.argmax(c, axis=0)
        positive = c[best, np.arange(ok.size)] > 0
        reasons[ok[positive]] = int(Reason.BECAUSE_YOU_LIKED)
        anchors[ok[positive]] = history[best[positive]]
    return reasons, anchors


@dataclass(frozen=True, slots=True)
class Ranking:
    """A slate in descending score order: candidates plus their scores."""

    items: IntArray
    scores: FloatArray
    reasons: np.ndarray
    anchors: IntArray

    def __len__(self) -> int:
        return int(self.items.size)

    def take(self, positions: np.ndarray) -> Ranking:
        return Ranking(
            self.items[positions], self.scores[positions], self.reasons[positions],
            self.anchors[positions],
        )


@dataclass(frozen=True, slots=True)
class ModelPart:
    """What a trainer returns: named NumPy arrays plus JSON-safe parameters and metrics."""

    name: str
    params: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    """A validated recommendation request (see ``rankly.engine.http.validation``)."""

    user_id: str | None
    n: int
    exclude: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    session_items: tuple[str, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    request_id: str = ""


@runtime_checkable
class CandidateGenerator(Protocol):
    def generate(self, user: UserFeatures, n: int) -> Candidates:
        """Return up to ``n`` candidates for ``user`` (seen items may be included: they are
        filtered out afterwards)."""


@runtime_checkable
class Scorer(Protocol):
    def score(self, user: UserFeatures, items: IntArray) -> FloatArray:
        """Return one finite float32 score per item of ``items`` (higher is better)."""


@runtime_checkable
class CatalogScorer(Protocol):
    """A scorer that is also the first candidate generator and scores the whole catalog at
    once. When one component is both the plan's first generator and its first scorer, the
    pipeline asks it for ``catalog_scores`` and takes the exact top items itself (one fused
    top-k with the request's exclusions) instead of generating, merging, filtering and
    scoring candidates: the same list, without the intermediate steps."""

    def catalog_scores(self, user: UserFeatures) -> FloatArray:
        """Return float32 scores of every catalog item (index order) for ``user``; NaN
        marks an item that must not be recommended. Not modified by the caller."""

    def explain(self, user: UserFeatures, items: IntArray) -> tuple[np.ndarray, IntArray]:
        """Return (reasons int8, anchors int64) for ``items``, as ``generate`` would."""


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, user: UserFeatures, ranking: Ranking, n: int) -> Ranking:
        """Return at most ``n`` items of ``ranking`` (a subset, reordered or re-scored)."""


#: The pipeline's marks on a cached value (see :class:`CacheEntry`); the same strings as
#: ``pipeline.cache.REFRESH_FIELD``/``DIRTY_FIELD``/``STARTED_FIELD`` (a test keeps them equal).
_REFRESH = "_refresh"
_DIRTY = "_dirty"
_STARTED = "_started"
_MARKS = (_REFRESH, _DIRTY, _STARTED)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached answer as a cache tier sees it: the payload and the pipeline's marks.

    ``payload`` is the JSON-ready answer to store as given (it may carry the pipeline's own
    fields, such as spare items: keep them). ``started``: when its computation started,
    ``time.monotonic()`` of the computing process, or None. ``dirty``: its user had an
    invalidating event since it was computed (the pipeline serves it minus what the user has
    seen and recomputes it). ``refresh``: serve it, and recompute it in the background.

    Tiers receive and return plain dicts (``Cache.set``/``Cache.get``): read one with
    :meth:`of` and hand one back with :meth:`value`, never by the mark names.
    """

    payload: Mapping[str, Any]
    started: float | None = None
    dirty: bool = False
    refresh: bool = False

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> CacheEntry:
        """Split a value given to ``Cache.set`` (or a stored one) into payload and marks."""
        started = value.get(_STARTED)
        return cls(
            payload={k: v for k, v in value.items() if k not in _MARKS},
            started=None if started is None else float(started),
            dirty=bool(value.get(_DIRTY)),
            refresh=bool(value.get(_REFRESH)),
        )

    def value(self) -> dict[str, Any]:
        """The dict ``Cache.get`` returns for this entry."""
        out = dict(self.payload)
        if self.started is not None:
            out[_STARTED] = self.started
        if self.dirty:
            out[_DIRTY] = True
        if self.refresh:
            out[_REFRESH] = True
        return out

    @staticmethod
    def marked(value: Mapping[str, Any], *, dirty: bool = False,
               refresh: bool = False) -> dict[str, Any]:
        """``value`` (a stored payload) marked dirty and/or for refresh, without copying its
        fields one by one through :meth:`of` (the cheap form for a tier's ``get``)."""
        out = dict(value)
        if dirty:
            out[_DIRTY] = True
        if refresh:
            out[_REFRESH] = True
        return out


@runtime_checkable
class Cache(Protocol):
    """One cache tier. Values are JSON-ready response payloads (dicts); read and mark them
    through :class:`CacheEntry`, never by field name.

    Optional: a tier may return an entry marked ``dirty`` when its user had an invalidating
    event since the value was computed (the pipeline then serves it minus what the user has
    seen and recomputes it), and may set a class attribute ``checks_start_times = True`` when
    it does so from the entry's ``started`` time, which spares it the second, delayed
    invalidation the events service sends otherwise.
    """

    def get(self, key: str, user_id: str | None = None) -> Awaitable[dict[str, Any] | None]:
        """The cached payload of ``key`` (``user_id`` lets a tier find per-user storage)."""

    def set(self, key: str, user_id: str | None, value: dict[str, Any]) -> Awaitable[None]: ...

    def invalidate_user(self, user_id: str) -> Awaitable[None]: ...


class DataRefused(ValueError):
    """A trainer's answer to data it does not suit (a catalog too large for a dense inverse,
    too few events): ``rankly train`` skips that part with this message and serves the
    others. Any other error, a bad option value included, fails training."""


@runtime_checkable
class Trainer(Protocol):
    def fit(self, data: Any, options: Mapping[str, Any]) -> ModelPart:
        """Fit on ``TrainingData`` (``rankly.engine.api``) and return arrays to save; raise
        :class:`DataRefused` when the data does not suit the trainer."""
