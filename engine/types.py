"""Small immutable values passed between pipeline stages, and the component protocols."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from rankly.engine.config import Settings
    from rankly.engine.model import Model
    from rankly.engine.store import Store

#: ``register(name, component_or_factory)``: the callback every contribution hook receives.
Register = Callable[[str, Any], None]

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
class ComponentContext:
    """What a component factory receives: the loaded model, its options and the store."""

    name: str
    model: Model
    options: Mapping[str, Any]
    settings: Settings
    store: Store | None = None


@dataclass(frozen=True, slots=True)
class ModelPart:
    """What a trainer returns: named NumPy arrays plus JSON-safe parameters and metrics."""

    name: str
    params: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    """A validated recommendation request (see ``rankly.engine.validation``)."""

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
class Reranker(Protocol):
    def rerank(self, user: UserFeatures, ranking: Ranking, n: int) -> Ranking:
        """Return at most ``n`` items of ``ranking`` (a subset, reordered or re-scored)."""


@runtime_checkable
class Cache(Protocol):
    """One cache tier. Values are JSON-ready response payloads (dicts).

    Fields starting with "_" in a value are the pipeline's (spare items, the computation's
    start time, ``_refresh``/``_dirty`` marks a tier may add on ``get``); store them as given.
    Optional: a tier may return a value with ``"_dirty": True`` when its user had an
    invalidating event since the value was computed (the pipeline then serves it minus what
    the user has seen and recomputes it), and may set a class attribute
    ``checks_start_times = True`` when it does so from the ``"_started"`` time it was given,
    which spares it the second, delayed invalidation the events service sends otherwise.
    """

    def get(self, key: str, user_id: str | None = None) -> Awaitable[dict[str, Any] | None]:
        """The cached payload of ``key`` (``user_id`` lets a tier find per-user storage)."""

    def set(self, key: str, user_id: str | None, value: dict[str, Any]) -> Awaitable[None]: ...

    def invalidate_user(self, user_id: str) -> Awaitable[None]: ...


@runtime_checkable
class Trainer(Protocol):
    def fit(self, data: Any, options: Mapping[str, Any]) -> ModelPart:
        """Fit on ``rankly.engine.interactions.TrainingData`` and return arrays to save."""
