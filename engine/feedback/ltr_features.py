"""The learned ranker's features of a user's candidates, the same at training and serving.

One function computes them (:func:`ranker_features`), called by the ``ltr`` reranker on live
requests and by ``rankly train-ranker`` on logged ones; both end in :func:`feature_matrix`,
which train-ranker also fills from the values an impression logged at serve time
(pipeline/served.py), so the two cannot drift apart. Where each comes from, at training time:

- from the log, as served: ``position`` (where the item was shown; held at 0 when serving,
  so the learned position effect is the same for every candidate and only corrects the
  labels: the position-bias correction, see ``rankly train-ranker``)
- logged at serve time, or for a log without them recomputed from the model at the logged
  version for the user's history at the request's time (their trained history plus the
  log's events before it): ``rank``, ``score``, ``score_gap``, ``score_z`` (the scorer's own
  ranking of its candidate pool), ``log_popularity`` (the ``pop`` part), ``log_history``,
  ``category_affinity``, ``category_recency``, ``same_category_as_last``
- from the training slice of the log, stored in the ``ltr`` part: ``item_ctr`` (the item's
  clicks over the clicks its positions predict) and ``log_item_impressions``
"""

from __future__ import annotations

import numpy as np

from rankly import _fast

FEATURES = (
    "position", "rank", "score", "score_gap", "score_z", "log_popularity", "item_ctr",
    "log_item_impressions", "log_history", "category_affinity", "category_recency",
    "same_category_as_last",
)
#: History items (newest first) the category features look at.
HISTORY_WINDOW = 200


def ranker_features(history: np.ndarray, items: np.ndarray, ranks: np.ndarray,
                    scores: np.ndarray, categories: np.ndarray, popularity: np.ndarray | None,
                    item_ctr: np.ndarray | None, item_impressions: np.ndarray | None,
                    positions: np.ndarray | float = 0.0) -> np.ndarray:
    """Return float32 features [len(items), len(FEATURES)] in :data:`FEATURES` order.

    ``history``: the user's item indices, newest first; ``items``: candidate item indices;
    ``ranks``/``scores``: each candidate's rank and score in the scorer's pool (the pool's
    scores set ``score_z``; a candidate outside the pool has rank = pool size and a score
    below the pool's); ``categories``: primary category per catalog item (-1: none);
    ``popularity``, ``item_ctr``, ``item_impressions``: per catalog item, or None.
    """
    affinity, recency, same = category_features(history, items, categories)
    return feature_matrix(
        positions, ranks, scores,
        None if popularity is None else popularity[items],
        None if item_ctr is None else item_ctr[items],
        None if item_impressions is None else item_impressions[items],
        history.size, affinity, recency, same)


def category_features(history: np.ndarray, items: np.ndarray, categories: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(category_affinity, category_recency, same_category_as_last)`` of ``items``
    (float64 each) for a user with ``history`` (item indices, newest first): the share of
    the item's category among the categorized items of the :data:`HISTORY_WINDOW` newest
    history items, ``1 / (1 + j)`` for the newest such item at ``j`` (0 newest), and whether
    the newest categorized history item shares it; 0 for an uncategorized item or a history
    without categories. The compiled kernel :func:`rankly._fast.category_features` (its
    NumPy twin is the specification), which the served impression record uses too."""
    return _fast.category_features(history, items, categories, HISTORY_WINDOW)


def feature_matrix(positions: np.ndarray | float, ranks: np.ndarray, scores: np.ndarray,
                   popularity: np.ndarray | None, item_ctr: np.ndarray | None,
                   item_impressions: np.ndarray | None, history_length: int | float,
                   affinity: np.ndarray, recency: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The float32 [len(ranks), len(FEATURES)] matrix of per-item inputs (each aligned with
    ``ranks``; ``popularity``, ``item_ctr``, ``item_impressions`` may be None): what
    :func:`ranker_features` computes from catalog arrays, and ``rankly train-ranker`` from
    an impression's logged values (feedback/served.py)."""
    n = len(ranks)
    out = np.empty((n, len(FEATURES)), dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    out[:, 0] = positions
    out[:, 1] = ranks
    out[:, 2] = scores
    top = scores.max() if n else 0.0
    out[:, 3] = top - scores
    sd = scores.std() if n > 1 else 0.0
    out[:, 4] = (scores - scores.mean()) / sd if sd > 0 else 0.0
    out[:, 5] = np.log1p(np.maximum(popularity, 0)) if popularity is not None else 0.0
    out[:, 6] = item_ctr if item_ctr is not None else 1.0
    out[:, 7] = np.log1p(item_impressions) if item_impressions is not None else 0.0
    out[:, 8] = np.log1p(history_length)
    out[:, 9] = affinity
    out[:, 10] = recency
    out[:, 11] = same
    return out
