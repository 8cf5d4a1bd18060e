"""Logged slates joined with their outcomes: what off-policy estimates and the learned ranker
read from an event log (impressions, clicks, add-to-carts, purchases)."""

from __future__ import annotations

import bisect
import json
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..events.values import Event
from ..pipeline.served import FEATURE_FIELDS

#: Outcome types; a click is any of them on the item (an add-to-cart or purchase straight
#: from the slate counts as a click too), a conversion is a purchase.
CLICK_TYPES = frozenset(("click", "add_to_cart", "purchase"))
CONVERSION_TYPES = frozenset(("purchase",))
#: Events that put an item into the user's online history (what the store projects), so
#: a ranking recomputed for a logged request sees what the server saw.
HISTORY_TYPES = frozenset(("view", "click", "add_to_cart", "purchase", "rating"))
SEEN_TYPES = frozenset(("purchase", "rating"))
DEFAULT_WINDOW_S = 1800.0
#: What an impression logs of its own position; the rest of its context is the slate's.
POSITION_FIELDS = frozenset(("position", "propensity", "base_position", "features", "sources"))


@dataclass
class Slate:
    """One served slate: shown items by position, their logging propensities, outcomes.

    ``base_positions[k]`` is where the serving ranking had the item shown at ``k`` before
    exploration moved it (``k`` itself when the slate was not explored). ``features[k]``:
    what its impression logged of the item at serve time (pipeline/served.py), float64 in
    ``FEATURE_FIELDS`` order, NaN where unknown; None for a log from before them. The
    slate's own fields (``history_length``, ``scorer``) are in ``context``; ``sources[k]``
    is the generators' ranks of the item, when logged.
    """

    request_id: str
    user_id: str
    timestamp: float
    items: list[str]
    propensities: np.ndarray  # float64, per position
    base_positions: np.ndarray  # int64, per position
    context: dict[str, Any]
    clicks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    conversions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    features: np.ndarray | None = None
    sources: list[dict[str, int]] | None = None

    def base_items(self) -> list[str]:
        """The slate the serving ranking chose, before exploration."""
        out = list(self.items)
        for item, j in zip(self.items, self.base_positions.tolist(), strict=True):
            if 0 <= j < len(out):
                out[j] = item
        return out

    def head(self) -> int:
        """How many leading positions exploration could shuffle (propensity < 1)."""
        n = 0
        for p in self.propensities.tolist():
            if p >= 1.0:
                break
            n += 1
        return n


@dataclass
class Feedback:
    """Slates in time order, and each user's history events (time order) for features."""

    slates: list[Slate]
    history: dict[str, list[tuple[float, str, str]]]  # user -> [(ts, item, type)]
    unattributed: int = 0  # outcomes that matched no slate

    def history_before(self, user_id: str, ts: float) -> list[tuple[float, str, str]]:
        """The user's history events strictly before ``ts``, oldest first."""
        events = self.history.get(user_id, [])
        return events[:bisect.bisect_left(events, ts, key=_event_time)]


def _event_time(event: tuple[float, str, str]) -> float:
    return event[0]


def read_events(path: str | Path) -> Iterator[Event]:
    """Events of a JSON-lines file: the event log's own lines (``events.jsonl``, or
    ``rankly export-events --format jsonl``) or ``POST /events`` objects."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            doc = json.loads(line)
            if "t" in doc:
                yield Event.from_json(doc)
            else:
                yield Event(str(doc["event_id"]), str(doc["user_id"]), str(doc["item_id"]),
                            str(doc["type"]), float(doc.get("timestamp") or 0.0),
                            doc.get("value"), doc.get("request_id"), doc.get("context") or {})


def join(events: Iterable[Event], window_s: float = DEFAULT_WINDOW_S) -> Feedback:
    """Group impressions into slates and credit outcomes to them.

    An outcome carrying a ``request_id`` goes to that slate's position of its item; one
    without goes to the latest slate of the same user that showed the item within
    ``window_s`` seconds before it. An outcome credits a position at most once per kind.
    """
    # per position only its own fields; the slate's (every position logs the same) once
    parts: dict[str, dict[int, tuple[Any, ...]]] = defaultdict(dict)
    shared: dict[str, dict[str, Any]] = {}
    meta: dict[str, tuple[str, float]] = {}
    outcomes: list[Event] = []
    history: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    for e in events:
        if e.type == "impression":
            if not e.request_id:
                continue
            ctx = e.context
            pos = int(ctx.get("position", len(parts[e.request_id])))
            parts[e.request_id][pos] = (e.item_id, float(ctx.get("propensity", 1.0)),
                                        ctx.get("base_position"), _row(ctx.get("features")),
                                        ctx.get("sources"))
            if e.request_id not in shared:
                shared[e.request_id] = {k: v for k, v in ctx.items()
                                        if k not in POSITION_FIELDS}
            meta.setdefault(e.request_id, (e.user_id, e.timestamp))
            continue
        if e.type in HISTORY_TYPES:
            history[e.user_id].append((e.timestamp, e.item_id, e.type))
        if e.type in CLICK_TYPES:
            outcomes.append(e)
    slates: list[Slate] = []
    by_id: dict[str, Slate] = {}
    for rid, positions in parts.items():
        rows = [positions[k] for k in sorted(positions)]
        items = [r[0] for r in rows]
        prop = np.array([r[1] for r in rows])
        base = np.array([k if r[2] is None else int(r[2]) for k, r in enumerate(rows)],
                        dtype=np.int64)
        features = None
        if any(r[3] is not None for r in rows):
            features = np.full((len(rows), len(FEATURE_FIELDS)), np.nan)
            for k, r in enumerate(rows):
                if r[3] is not None:
                    features[k, :len(r[3])] = r[3]
        sources = [r[4] or {} for r in rows] if any(r[4] is not None for r in rows) else None
        user, ts = meta[rid]
        s = Slate(rid, user, ts, items, prop, base, shared[rid],
                  np.zeros(len(items), dtype=bool), np.zeros(len(items), dtype=bool), features,
                  sources)
        slates.append(s)
        by_id[rid] = s
    slates.sort(key=lambda s: (s.timestamp, s.request_id))
    for h in history.values():
        # by time only: the sort is stable, so events of the same timestamp keep the log's
        # order, which is the order the store applied them in (a recency-weighted history
        # reads it)
        h.sort(key=_event_time)
    per_user: dict[str, list[Slate]] = defaultdict(list)
    for s in slates:
        per_user[s.user_id].append(s)
    times = {u: [s.timestamp for s in ss] for u, ss in per_user.items()}
    unattributed = 0
    for e in outcomes:
        target = by_id.get(e.request_id) if e.request_id else None
        if target is None and not e.request_id:
            ss = per_user.get(e.user_id, [])
            hi = bisect.bisect_right(times.get(e.user_id, []), e.timestamp)
            for s in reversed(ss[:hi]):
                if e.timestamp - s.timestamp > window_s:
                    break
                if e.item_id in s.items:
                    target = s
                    break
        if target is None or e.item_id not in target.items:
            unattributed += 1
            continue
        k = target.items.index(e.item_id)
        target.clicks[k] = True
        if e.type in CONVERSION_TYPES:
            target.conversions[k] = True
    return Feedback(slates, dict(history), unattributed)


def _row(features: Any) -> array | None:
    """An impression's logged ``features`` as compact floats (NaN for null), at most
    ``FEATURE_FIELDS`` of them (a newer writer may append more), or None."""
    if not features:
        return None
    return array("d", (np.nan if v is None else float(v)
                       for v in features[:len(FEATURE_FIELDS)]))


def load_feedback(path: str | Path, window_s: float = DEFAULT_WINDOW_S) -> Feedback:
    """:func:`join` over the events of ``path`` (see :func:`read_events`)."""
    return join(read_events(path), window_s)
