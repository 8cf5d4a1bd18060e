"""Logged slates joined with their outcomes: what off-policy estimates and the learned ranker
read from an event log (impressions, clicks, add-to-carts, purchases)."""

from __future__ import annotations

import bisect
import json
import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    #: requests whose impressions are not one slate, left out, by reason (see :func:`join`)
    skipped: dict[str, int] = field(default_factory=dict)

    def history_before(self, user_id: str, ts: float) -> list[tuple[float, str, str]]:
        """The user's history events strictly before ``ts``, oldest first."""
        events = self.history.get(user_id, [])
        return events[:bisect.bisect_left(events, ts, key=_event_time)]


def _event_time(event: tuple[float, str, str]) -> float:
    return event[0]


class LogError(ValueError):
    """A line of an event log that is not an event: names the file, the line and why."""


#: The deepest position an impression may log: far beyond any slate the server answers
#: (``limits.max_n``); a larger one is a damaged line, not a slate.
MAX_POSITION = 100_000


def read_events(path: str | Path) -> Iterator[Event]:
    """Events of a JSON-lines file: the event log's own lines (``events.jsonl``, or
    ``rankly export-events --format jsonl``) or ``POST /events`` objects.

    A last line without its newline that does not parse is skipped: the log was still being
    written (the file log cuts such a line off when it next opens). Any other line that is
    not an event, or an impression whose position or propensity cannot be right, raises
    :class:`LogError` naming the file and the line: an estimate or a ranker built around it
    would be silently wrong.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                event = _parse_line(raw)
            except ValueError as exc:
                if not raw.endswith(b"\n"):
                    return  # a torn tail
                raise LogError(f"{path} line {number}: {exc}") from None
            if event is not None:
                yield event


def _parse_line(raw: bytes) -> Event | None:
    """One line as an :class:`Event` (None when blank); ValueError says what is wrong."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer literal too long to convert
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if "t" in doc:  # the log's own line
        names = ("id", "u", "i", "t", "ts", "v", "r", "c")
    else:  # a POST /events object
        names = ("event_id", "user_id", "item_id", "type", "timestamp", "value",
                 "request_id", "context")
    ids = [_text(doc.get(name), name) for name in names[:4]]
    ts = _timestamp(doc.get(names[4]), names[4], required=names[4] == "ts")
    value = doc.get(names[5])
    if value is not None and not _is_number(value):
        raise ValueError(f"{names[5]!r} is not a number")
    request_id = doc.get(names[6])
    if request_id is not None:
        request_id = _text(request_id, names[6])
    context = doc.get(names[7]) or {}
    if not isinstance(context, dict):
        raise ValueError(f"{names[7]!r} is not a JSON object")
    if ids[3] == "impression":
        _check_impression(context)
    return Event(ids[0], ids[1], ids[2], ids[3], ts,
                 None if value is None else float(value), request_id or None, context)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def _text(value: Any, name: str) -> str:
    if value is None:
        raise ValueError(f"no {name!r} field")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{name!r} is not a string")


def _timestamp(value: Any, name: str, required: bool) -> float:
    """Unix seconds, or ISO 8601 text (a ``POST /events`` object may carry either, or none:
    0, so such events keep the file's order)."""
    if value is None and not required:
        return 0.0
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"{name!r} is not unix seconds or an ISO 8601 time")


def _position(value: Any, name: str) -> None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or \
            not 0 <= value < MAX_POSITION:
        raise ValueError(f"impression {name} {value!r} is not an integer in "
                         f"[0, {MAX_POSITION})")


def _check_impression(ctx: dict[str, Any]) -> None:
    """What :func:`join` reads of an impression's context, checked: a position, a
    propensity in (0, 1] (an estimate divides by it), the serve-time features."""
    if "position" in ctx:
        _position(ctx["position"], "position")
    if ctx.get("base_position") is not None:
        _position(ctx["base_position"], "base_position")
    if "propensity" in ctx:
        p = ctx["propensity"]
        if not _is_number(p) or not 0.0 < p <= 1.0:
            raise ValueError(f"impression propensity {p!r} is not a probability in (0, 1]")
    elif ctx.get("base_position") is not None and ctx["base_position"] != ctx.get("position"):
        # exploration moved the item: its probability there is not 1, and is not known
        raise ValueError("impression moved by exploration (base_position "
                         f"{ctx['base_position']!r}, position {ctx.get('position')!r}) "
                         "without its propensity")
    features = ctx.get("features")
    if features is not None and (not isinstance(features, list) or not all(
            v is None or _is_number(v) for v in features)):
        raise ValueError("impression features are not a list of numbers and nulls")
    sources = ctx.get("sources")
    if sources is not None and not isinstance(sources, dict):
        raise ValueError("impression sources are not a JSON object")
    if ctx.get("history_length") is not None and not _is_number(ctx["history_length"]):
        raise ValueError("impression history_length is not a number")


def join(events: Iterable[Event], window_s: float = DEFAULT_WINDOW_S) -> Feedback:
    """Group impressions into slates and credit outcomes to them.

    An outcome carrying a ``request_id`` goes to that slate's position of its item; one
    without goes to the latest slate of the same user that showed the item within
    ``window_s`` seconds before it. An outcome credits a position at most once per kind.
    An impression logged twice counts once, and so does any other event (by its id). A
    request whose impressions are not one slate (:func:`_slate_problem`) is left out and
    counted in ``Feedback.skipped``; its outcomes count as unattributed.
    """
    # per position only its own fields; the slate's (every position logs the same) once
    parts: dict[str, dict[int, tuple[Any, ...]]] = defaultdict(dict)
    shared: dict[str, dict[str, Any]] = {}
    meta: dict[str, tuple[str, float]] = {}
    outcomes: list[Event] = []
    history: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    conflicting: set[str] = set()
    # the server keeps an event id once; the same id again is the same event read twice
    seen_ids: set[str] = set()
    for e in events:
        if e.type == "impression":
            rid = e.request_id
            if not rid:
                continue
            ctx = e.context
            slots = parts[rid]
            pos = int(ctx.get("position", len(slots)))
            if (rid in meta and meta[rid][0] != e.user_id) or (
                    pos in slots and slots[pos][0] != e.item_id):
                conflicting.add(rid)
            if pos in slots:
                continue  # the same impression again (a log concatenated twice)
            slots[pos] = (e.item_id, float(ctx.get("propensity", 1.0)),
                          ctx.get("base_position"), _row(ctx.get("features")),
                          ctx.get("sources"))
            if rid not in shared:
                shared[rid] = {k: v for k, v in ctx.items() if k not in POSITION_FIELDS}
            meta.setdefault(rid, (e.user_id, e.timestamp))
            continue
        if e.type not in HISTORY_TYPES and e.type not in CLICK_TYPES:
            continue
        if e.event_id in seen_ids:
            continue
        seen_ids.add(e.event_id)
        if e.type in HISTORY_TYPES:
            history[e.user_id].append((e.timestamp, e.item_id, e.type))
        if e.type in CLICK_TYPES:
            outcomes.append(e)
    slates: list[Slate] = []
    by_id: dict[str, Slate] = {}
    skipped: dict[str, int] = defaultdict(int)
    for rid, positions in parts.items():
        rows = [positions[k] for k in sorted(positions)]
        items = [r[0] for r in rows]
        base = np.array([k if r[2] is None else int(r[2]) for k, r in enumerate(rows)],
                        dtype=np.int64)
        problem = _slate_problem(rid in conflicting, sorted(positions), items, base)
        if problem:
            skipped[problem] += 1  # and its outcomes count as unattributed
            continue
        prop = np.array([r[1] for r in rows])
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
    return Feedback(slates, dict(history), unattributed, dict(skipped))


def _slate_problem(conflicting: bool, positions: list[int], items: list[str],
                   base: np.ndarray) -> str | None:
    """Why a request's impressions are not one servable slate, or None: they came from two
    users or put two items at one position or one item at two (a request id reused by a
    client, or two logs merged), a position is missing (a cut log), or the base positions
    are not a reordering of the positions."""
    if conflicting or len(set(items)) != len(items):
        return "conflicting"
    if positions[-1] != len(positions) - 1:
        return "positions_missing"
    if sorted(base.tolist()) != positions:
        return "base_positions_invalid"
    return None


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
