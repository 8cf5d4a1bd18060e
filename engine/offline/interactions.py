"""Interaction logs and item tables as columns, and their encoding into training data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..model import Catalog, UserTable


@dataclass(frozen=True)
class Interactions:
    """One row per event: who touched what, how strongly, when (all arrays the same length).

    ``weights`` are implicit-feedback strengths (a rating, or an event type's weight);
    ``timestamps`` are Unix seconds; ``categories`` optionally carries an item category per row
    (events CSV / Taobao), empty string when unknown.
    """

    user_ids: np.ndarray  # str
    item_ids: np.ndarray  # str
    weights: np.ndarray  # float32
    timestamps: np.ndarray  # int64
    event_types: np.ndarray | None = None  # str
    categories: np.ndarray | None = None  # str

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def take(self, mask_or_index: np.ndarray) -> Interactions:
        pick = lambda a: None if a is None else a[mask_or_index]  # noqa: E731
        return Interactions(
            self.user_ids[mask_or_index], self.item_ids[mask_or_index],
            self.weights[mask_or_index], self.timestamps[mask_or_index],
            pick(self.event_types), pick(self.categories),
        )


@dataclass(frozen=True)
class ItemTable:
    """Item metadata: ids, titles and (possibly several) category names per item."""

    item_ids: np.ndarray  # str
    titles: np.ndarray  # str
    categories: Sequence[tuple[str, ...]]  # first one is the primary category


@dataclass(frozen=True)
class TrainingData:
    """Interactions encoded against a catalog and a user table.

    ``matrix`` is users x items (CSR, float32, summed weights of duplicate pairs).
    ``user_idx``/``item_idx``/``weights``/``timestamps`` keep the individual events, sorted by
    time (ties by item index), for time-aware models.
    """

    catalog: Catalog
    users: UserTable
    matrix: sp.csr_matrix
    user_idx: np.ndarray
    item_idx: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def binary_matrix(self) -> sp.csr_matrix:
        """Return the users x items matrix with every interacted pair set to 1 (float32 CSR)."""
        m = self.matrix.tocsr(copy=True)
        m.data = np.ones_like(m.data, dtype=np.float32)
        return m

    def item_mass(self, half_life_days: float = 0.0, binary: bool = True) -> np.ndarray:
        """Return each item's interaction mass (float32 [n_items]), halved every
        ``half_life_days``.

        Age is measured from the newest event of the data (the training "now"); a half-life <= 0
        means no decay. ``binary`` counts each (user, item) pair once, with its newest event.
        """
        w = np.ones_like(self.weights, dtype=np.float64) if binary else self.weights.astype(
            np.float64)
        if half_life_days > 0 and self.timestamps.size:
            age_days = (self.timestamps.max() - self.timestamps) / 86400.0
            w = w * np.exp2(-age_days / half_life_days)
        if binary:
            # one unit per distinct (user, item), keeping the most recent (largest) decay weight
            key = self.user_idx.astype(np.int64) * max(self.n_items, 1) + self.item_idx
            order = np.lexsort((-w, key))
            _, first = np.unique(key[order], return_index=True)
            pick = order[first]
            scores = np.bincount(self.item_idx[pick], weights=w[pick], minlength=self.n_items)
        else:
            scores = np.bincount(self.item_idx, weights=w, minlength=self.n_items)
        return scores.astype(np.float32)


def build_catalog(item_ids: np.ndarray, items: ItemTable | None,
                  event_categories: dict[str, str] | None = None) -> Catalog:
    """Return a catalog over ``item_ids`` (sorted), using ``items`` metadata where known."""
    meta_title: dict[str, str] = {}
    meta_cats: dict[str, tuple[str, ...]] = {}
    if items is not None:
        for iid, title, cats in zip(items.item_ids.tolist(), items.titles.tolist(),
                                    items.categories, strict=True):
            meta_title[str(iid)] = str(title)
            meta_cats[str(iid)] = tuple(cats)
    if event_categories:
        for iid, cat in event_categories.items():
            if cat and iid not in meta_cats:
                meta_cats[iid] = (cat,)
    names: dict[str, int] = {}
    primary = np.full(item_ids.size, -1, dtype=np.int32)
    indptr = [0]
    indices: list[int] = []
    for i, iid in enumerate(item_ids.tolist()):
        cats = meta_cats.get(iid, ())
        for c in cats:
            indices.append(names.setdefault(c, len(names)))
        if cats:
            primary[i] = names[cats[0]]
        indptr.append(len(indices))
    return Catalog(
        item_ids=np.asarray(item_ids, dtype=str),
        titles=np.array([meta_title.get(i, "") for i in item_ids.tolist()], dtype=str),
        categories=primary,
        category_names=tuple(names),
        cat_indptr=np.asarray(indptr, dtype=np.int64),
        cat_indices=np.asarray(indices, dtype=np.int32),
    )


def _natural_sort(ids: np.ndarray) -> np.ndarray:
    """Sort ids numerically when they all are integers (MovieLens), else lexicographically."""
    uniq = np.unique(ids)
    try:
        return uniq[np.argsort(uniq.astype(np.int64), kind="stable")]
    except (ValueError, OverflowError):  # not all integers, or one past 64 bits
        return uniq


def build_training_data(interactions: Interactions, items: ItemTable | None = None,
                        include_all_items: bool = True) -> TrainingData:
    """Encode ``interactions`` into a catalog, a user table with histories, and a CSR matrix.

    The catalog holds every interacted item plus (``include_all_items``) every item of
    ``items``. Histories list each user's distinct items, most recent interaction first.
    Events that weigh nothing (an impression at its default weight 0, a type weighed 0 with
    ``--event-weights``) carry no interest: their items enter the catalog, but they enter no
    user's history or matrix, as the serving projections leave them out of the online
    history.
    """
    event_item_ids = np.asarray(interactions.item_ids, dtype=str)
    all_ids = event_item_ids
    if items is not None and include_all_items:
        all_ids = np.concatenate([event_item_ids, np.asarray(items.item_ids, dtype=str)])
    item_ids = _natural_sort(all_ids)
    event_cats = None
    if interactions.categories is not None:
        event_cats = dict(zip(event_item_ids.tolist(), interactions.categories.tolist(),
                              strict=True))
    catalog = build_catalog(item_ids, items, event_cats)
    interest = np.asarray(interactions.weights) > 0
    if not interest.all():
        interactions = interactions.take(interest)
        event_item_ids = event_item_ids[interest]
    user_ids = _natural_sort(np.asarray(interactions.user_ids, dtype=str))
    user_pos = {v: k for k, v in enumerate(user_ids.tolist())}
    u = np.fromiter((user_pos[x] for x in np.asarray(interactions.user_ids, dtype=str).tolist()),
                    dtype=np.int64, count=len(interactions))
    i = catalog.lookup(event_item_ids.tolist())
    u = np.asarray(u, dtype=np.int64)
    ts = np.asarray(interactions.timestamps, dtype=np.int64)
    w = np.asarray(interactions.weights, dtype=np.float32)
    order = np.lexsort((i, ts))
    u, i, ts, w = u[order], i[order], ts[order], w[order]
    matrix = sp.csr_matrix((w, (u, i)), shape=(user_ids.size, item_ids.size), dtype=np.float32)
    matrix.sum_duplicates()
    # histories: distinct items per user, most recent first
    rev = np.lexsort((-i, -ts, u))
    ru, ri = u[rev], i[rev]
    key = ru * max(item_ids.size, 1) + ri
    _, first = np.unique(key, return_index=True)
    keep = np.sort(first)
    ru, ri = ru[keep], ri[keep]
    counts = np.bincount(ru, minlength=user_ids.size)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    users = UserTable(user_ids=user_ids, history_indptr=indptr, history_items=ri.astype(np.int64))
    return TrainingData(catalog, users, matrix, u, i, w, ts)

