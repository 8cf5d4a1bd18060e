"""What a served slate logs for the learned ranker: its items' inputs as the pipeline had them.

When the pipeline computes a slate it captures (:func:`capture`) references to what it
already holds: the user's history, the scorer's pool (its ranking before the rerankers),
each candidate generator's list, and reads the live counters for the slate's items. Nothing
is recomputed and nothing is encoded then. :meth:`ServedFeatures.encoded` turns the capture
into the JSON the impression lines carry, off the request path: in the impression logger's
background flush, or when a cache tier stores the slate (:meth:`ServedFeatures.record`, its
JSON-ready form). Each item's fields are encoded then, once: the impression lines of every
answer served from that cache entry splice them in as they are (#16). A slate served from a
cache logs the record of its computation: the inputs the rerankers saw when they ordered it.

The record's fields (docs/feedback-loop.md has the table), kept short because every
impression line carries them:

- per slate: ``history_length`` (items in the user's history), ``scorer`` (the component
  whose ``rank`` and ``score`` are logged: the fused component or the first scorer that
  answered; the fallback scorer for a cold user's popularity slate)
- per item: ``features``, one array in :data:`FEATURE_FIELDS` order (null where unknown):
  ``rank`` and ``score`` in the scorer's pool (null for an item that was not in it, such as
  a backfilled one), ``popularity`` (the model's ``pop`` score), ``trending`` and
  ``category_trending`` (the live decayed popularity of the item and the live trending score
  of its category), ``category_affinity``, ``category_recency``, ``same_category_as_last``
  (0/1; :func:`~rankly.engine.feedback.ltr_features.category_features`); and ``sources``
  (with ``impressions.sources``, in the general path): each candidate generator's rank of
  the item in its own list
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from rankly import _fast

if TYPE_CHECKING:
    from ..model import Model
    from ..types import Ranking

#: The fields of a record's ``slate`` part and of each of its items; an item's ``features``
#: array holds :data:`FEATURE_FIELDS` in this order (append new ones at the end: readers
#: take what a line has, so older lines stay readable).
SLATE_FIELDS = ("history_length", "scorer")
ITEM_FIELDS = ("features", "sources")
FEATURE_FIELDS = ("rank", "score", "popularity", "trending", "category_trending",
                  "category_affinity", "category_recency", "same_category_as_last")
#: Decimals kept of a logged float: the answer's own score precision, and shorter lines.
DIGITS = 6


class ServedFeatures:
    """A computed slate's inputs, held by reference until :meth:`encoded` encodes them once."""

    __slots__ = ("model", "history", "items", "pool", "scorer", "sources", "live", "_encoded")

    def __init__(self, model: Model, history: np.ndarray, items: np.ndarray,
                 pool: Ranking | None, scorer: str | None,
                 sources: Sequence[tuple[str, np.ndarray]],
                 live: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.model = model
        self.history = history
        self.items = items
        self.pool = pool
        self.scorer = scorer
        self.sources = sources
        self.live = live
        self._encoded: tuple[dict[str, Any], dict[str, bytes]] | None = None

    def encoded(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """``(slate fields, {item_id: item fields})``, built once. An item's fields are
        pre-encoded as its impression lines carry them: a JSON object's members after a
        comma (``b',"features":[3,0.71,...],"sources":{...}'``)."""
        if self._encoded is None:
            self._encoded = self._build()
        return self._encoded

    def record(self) -> dict[str, Any]:
        """``{"slate": {...}, "items": {item_id: item fields}}``: :meth:`encoded`, JSON-ready
        as a cache tier keeps it (an item's fields as a string, without the comma)."""
        slate, items = self.encoded()
        return {"slate": slate,
                "items": {item: fields[1:].decode() for item, fields in items.items()}}

    def _build(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        # NOTE: imported here: the feedback package imports the events one, which imports
        # the offline one, which imports the pipeline
        from ..feedback.ltr_features import category_features

        model = self.model
        catalog = model.catalog
        items = self.items
        ids = catalog.id_list()
        n = items.size
        # the float columns in one array, rounded in one call (NaN: unknown): score,
        # popularity, trending, category_trending, category_affinity, category_recency
        floats = np.full((n, 6), np.nan)
        ranks: list[Any] = [None] * n
        if self.pool is not None and len(self.pool):
            at = _fast.positions(items, self.pool.items)
            found = at >= 0
            ranks = [r if r >= 0 else None for r in at.tolist()]
            floats[found, 0] = self.pool.scores[at[found]]
        pop = model.part("pop")
        if pop is not None:
            floats[:, 1] = np.asarray(pop["scores"])[items]
        if self.live is not None:
            floats[:, 2], floats[:, 3] = self.live
        affinity, recency, same = category_features(self.history, items, catalog.categories)
        floats[:, 4], floats[:, 5] = affinity, recency
        rows = np.round(floats, DIGITS).tolist()
        item_list = items.tolist()
        arrays = [[r, *row, s]
                  for r, row, s in zip(ranks, rows, same.astype(np.int64).tolist(), strict=True)]
        # NOTE: every item's array in one encoder call (which writes NaN as null), split
        # where one array ends and the next begins: they hold numbers and nulls only, so
        # "],[" occurs nowhere else
        encoded = orjson.dumps(arrays)[2:-2].split(b"],[") if n else []
        per_item = {ids[i]: b',"features":[' + a + b"]"
                    for i, a in zip(item_list, encoded, strict=True)}
        for i, found_in in zip(item_list, self._source_ranks(item_list), strict=True):
            if found_in:
                per_item[ids[i]] += b',"sources":' + orjson.dumps(found_in)
        slate: dict[str, Any] = {"history_length": int(self.history.size)}
        if self.scorer and self.pool is not None:
            slate["scorer"] = self.scorer
        return slate, per_item

    def _source_ranks(self, item_list: list[int]) -> list[dict[str, int]]:
        """Each item's rank in each candidate generator's list that has it."""
        out: list[dict[str, int]] = [{} for _ in item_list]
        for name, listed in self.sources:
            for found_in, r in zip(out, _fast.positions(self.items, listed).tolist(),
                                   strict=True):
                if r >= 0:
                    found_in[name] = r
        return out


def capture(model: Model, history: np.ndarray, items: np.ndarray, pool: Ranking | None,
            scorer: str | None, sources: Sequence[tuple[str, np.ndarray]],
            live_counters: Any, with_sources: bool) -> ServedFeatures:
    """What :meth:`ServedFeatures.record` will need, taken now: references, and the live
    counters' values of ``items`` (they move with every event). ``live_counters`` is the
    process's projections (``projections_of(store)``) or None."""
    live = None if live_counters is None else live_counters.live_of(model.catalog, items)
    return ServedFeatures(model, history, items, pool, scorer,
                          sources if with_sources else (), live)


def logged_features(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An impression's item fields by name (:data:`FEATURE_FIELDS`, and ``sources``), the
    unknown ones left out: what ``rankly train-ranker`` reads of a line."""
    out = {name: v for name, v in zip(FEATURE_FIELDS, fields.get("features") or (),
                                       strict=False) if v is not None}
    if "sources" in fields:
        out["sources"] = fields["sources"]
    return out


def impression_fields(record: Mapping[str, Any] | ServedFeatures | None,
                      item_ids: tuple[str, ...]) -> tuple[Mapping[str, Any], tuple[bytes, ...]]:
    """``(per-slate fields, per-position fields)`` of a record for the shown ``item_ids``
    (read-only); the per-position ones pre-encoded as :meth:`ServedFeatures.encoded` has them,
    ``b""`` for an item the record does not know (say one added after it). ``record``: a
    capture, or its :meth:`~ServedFeatures.record` from a cache tier."""
    if record is None:
        return {}, (b"",) * len(item_ids)
    if isinstance(record, ServedFeatures):
        slate, known = record.encoded()
        return slate, tuple([known.get(item, b"") for item in item_ids])
    # NOTE: a cached record comes back, the same object, with every hit of its entry: its
    # fields are encoded on the first one only, and its slate's on the first of each order
    memo = _CACHED_FIELDS.get(id(record))
    if memo is None or memo[0] is not record:
        stored = record.get("items") or {}
        known = {item: _item_fields(fields) for item, fields in stored.items()}
        memo = [record, known, ((), ())]
        if len(_CACHED_FIELDS) >= _CACHED_FIELDS_MAX:
            del _CACHED_FIELDS[next(iter(_CACHED_FIELDS))]
        _CACHED_FIELDS[id(record)] = memo
    last = memo[2]
    if last[0] != item_ids:
        known = memo[1]
        last = memo[2] = (item_ids, tuple([known.get(item, b"") for item in item_ids]))
    return record.get("slate") or {}, last[1]


def _item_fields(stored: str | Mapping[str, Any] | None) -> bytes:
    """A cached record's item fields as :meth:`ServedFeatures.encoded` has them (a dict: a
    record cached before they were kept encoded, by an older release sharing the L2)."""
    if not stored:
        return b""
    if isinstance(stored, str):
        return b"," + stored.encode()
    return b"," + orjson.dumps(stored)[1:-1]


#: id(cached record) -> [the record, {item: its fields encoded}, (the item ids last asked
#: for, their fields)]; the record is held, so its id is not reused while it is here. Oldest
#: first out (an entry's next hit encodes its fields again).
_CACHED_FIELDS: dict[int, list[Any]] = {}
_CACHED_FIELDS_MAX = 1 << 12
