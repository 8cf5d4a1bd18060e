"""The served default: a recency-aware item-item model blended with time-decayed popularity.

``score(u) = z(w_u @ B) + seq_weight * z(r_u @ T) + (g_u * pop_weight + TIE_BREAK) *
z(log1p(recent pop))`` over the whole catalog, where ``B`` is the EASE/EDLAE item-item
matrix (over the items most users touched, at most ``max_ease_items``), ``w_u`` weighs the
user's history items by recency position (``(1 - mix) + mix * 2^(-j / half_life)`` for the
j-th most recent, j = 0 newest), ``T`` holds what followed each item
(:func:`transition_matrix`) read from the newest items ``r_u``, ``g_u`` fades the
time-decayed popularity for users long inactive at training time (:func:`user_gate`), ``z``
standardizes a score row over the catalog, and :data:`TIE_BREAK` orders the items the rest
scores alike by popularity. A miss is a few
weighted sums of rows, one fused top-k and the rerankers.

The ``blend`` trainer chooses every hyper-parameter (EASE lambda and dropout, the history mix
and half-life, the sequence weight, the popularity weight, half-life and gate, the diversity
cap) on hold-outs carved from the training data
in several shapes (:data:`SHAPES`), vectorized over users through the compiled kernels
(:func:`rankly._fast.topk_batch`); see :class:`BlendTrainer` and docs/evaluation.md.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from rankly import _fast
from rankly.engine.api import (
    Candidates,
    ComponentContext,
    Model,
    ModelPart,
    Reason,
    TrainingData,
    UserFeatures,
    hookimpl,
)
from rankly.plugins.models import linear
from rankly.plugins.models.holdouts import (  # noqa: F401 (the validation toolkit, re-exported)
    SHAPES,
    Holdout,
    Outcome,
    apply_cap,
    combine,
    grid_option,
    history_matrix,
    holdout_mask,
    judge,
    make_holdout,
    personalization,
    recency,
    subset,
)
from rankly.plugins.models.linear import EaseScorer

NAME = "blend"
#: The part (and trainer) whose hyper-parameters the blend tunes and whose weights it serves.
EASE = "ease"
VALIDATIONS = ("robust", *SHAPES)
CRITERIA = ("minimax", "noninferior")

# --- serving ------------------------------------------------------------------------------


def history_weights(n: int, mix: float, half_life: float) -> np.ndarray:
    """Weights (float32 [n]) of a history's items, newest first (:func:`recency`)."""
    return recency(np.arange(n, dtype=np.float64), mix, half_life)


def znorm_rows(s: np.ndarray) -> np.ndarray:
    """Standardize each row of ``s`` (1-d or 2-d) to mean 0, std 1 in place; constant rows
    become 0. Returns ``s`` (float32)."""
    s = np.asarray(s, dtype=np.float32)
    n = max(s.shape[-1], 1)
    mean = s.sum(axis=-1, keepdims=True, dtype=np.float64) / n
    sq = np.einsum("...i,...i->...", s, s, dtype=np.float64)[..., None] / n
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    s -= mean.astype(np.float32)
    s *= np.where(std > 1e-6 * (np.abs(mean) + 1e-6), 1.0 / np.maximum(std, 1e-30), 0.0
                  ).astype(np.float32)
    return s


def popularity_z(popularity: np.ndarray) -> np.ndarray:
    """The popularity component: ``z(log1p(popularity))`` over the catalog (float32)."""
    return znorm_rows(np.log1p(np.maximum(np.asarray(popularity, dtype=np.float64), 0)
                               ).astype(np.float32))


#: Transitions count an item followed by each of the next SEQ_WINDOW items of the same user,
#: the d-th weighing 2^(1-d); a request reads its SEQ_HISTORY newest items, the j-th (j = 0
#: newest) weighing 2^-j.
SEQ_WINDOW = 3
SEQ_HISTORY = 8
SEQ_SHRINK = 5.0
_SEQ_WEIGHTS = np.exp2(-np.arange(SEQ_HISTORY, dtype=np.float32))


def transition_matrix(data: TrainingData, window: int = SEQ_WINDOW,
                      shrink: float = SEQ_SHRINK) -> sp.csr_matrix:
    """Row-normalized item-to-next-items counts (float32 CSR [n_items, n_items]).

    Each user's events in time order (ties by item index); ``T[i, j]`` sums ``2^(1-d)`` over
    every time ``j`` came ``d <= window`` events after ``i``, divided by row ``i``'s total plus
    ``shrink`` (rare items' rows stay small). The diagonal is dropped.
    """
    order = np.lexsort((data.item_idx, data.timestamps, data.user_idx))
    u, i = data.user_idx[order], data.item_idx[order]
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same = (u[d:] == u[:-d]) & (i[d:] != i[:-d])
        rows.append(i[:-d][same])
        cols.append(i[d:][same])
        vals.append(np.full(int(same.sum()), 2.0 ** (1 - d), dtype=np.float32))
    n = data.n_items
    t = sp.csr_matrix((np.concatenate(vals) if vals else np.empty(0, np.float32),
                       (np.concatenate(rows) if rows else np.empty(0, np.int64),
                        np.concatenate(cols) if cols else np.empty(0, np.int64))),
                      shape=(n, n), dtype=np.float32)
    t.sum_duplicates()
    out = np.asarray(t.sum(axis=1), dtype=np.float64).ravel() + shrink
    # an item nothing followed has an empty row: its scale is never used (0 with no shrink)
    scale = np.divide(1.0, out, out=np.zeros_like(out), where=out > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ t, dtype=np.float32)


class SequenceBase:
    """What tends to come next after the user's newest items (:func:`transition_matrix`)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 n_items: int) -> None:
        self.t = sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices),
                                np.asarray(indptr)), shape=(n_items, n_items))

        # the arrays the compiled row sum reads, converted once
        self.indptr = np.ascontiguousarray(self.t.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(self.t.indices, dtype=np.int64)
        self.data = np.ascontiguousarray(self.t.data, dtype=np.float32)
        self.n_items = n_items

    def rows(self, h: np.ndarray) -> np.ndarray:
        """Float32 [n_items] scores from distinct history items ``h``, newest first."""
        h = h[:SEQ_HISTORY]
        return _fast.csr_weighted_rows(self.indptr, self.indices, self.data, h,
                                       _SEQ_WEIGHTS[:h.size], self.n_items)


@dataclass(frozen=True)
class BlendParams:
    """What the trainer chose (see the module docstring for the formula)."""

    mix: float = 0.0
    half_life: float = 0.0  # history positions
    seq_weight: float = 0.0
    pop_weight: float = 0.0
    pop_half_life_days: float = 0.0
    pop_gate_days: float = 0.0  # 0: every user gets the popularity term in full
    lambda_scale: float = 1.0  # of the EASE lambda tuned on the first hold-out
    age_half_life_days: float = 0.0  # EASE training pairs decay with age (0: no decay)
    #: share of a second EASE, fitted with a lambda ``low_lambda_factor`` times smaller, in
    #: the served item-item weights (0: one lambda)
    low_share: float = 0.0

    @property
    def model(self) -> tuple[float, float, float]:
        """What the item-item weights depend on: (lambda scale, age half-life, low share)."""
        return (self.lambda_scale, self.age_half_life_days, self.low_share)

    def label(self) -> str:
        return (f"lambda x{self.lambda_scale:g} (share {self.low_share:g} at a smaller "
                f"lambda), training-pair half-life "
                f"{self.age_half_life_days:g} days, history mix {self.mix:g} (half-life "
                f"{self.half_life:g} items), sequence "
                f"{self.seq_weight:g}, popularity {self.pop_weight:g} (half-life "
                f"{self.pop_half_life_days:g} days, user gate {self.pop_gate_days:g} days)")


class BlendScorer:
    """Scores the whole catalog for a user; also a candidate generator (top-n with reasons)."""

    def __init__(self, base: EaseScorer, params: BlendParams,
                 pop_z: np.ndarray | None, seq: SequenceBase | None = None,
                 user_gate: np.ndarray | None = None,
                 trained_lengths: np.ndarray | None = None) -> None:
        self.base = base
        self.params = params
        self.seq = seq if params.seq_weight else None
        self.n_items = base.n_items
        self.pop_z = None if pop_z is None or params.pop_weight == 0 else (
            np.asarray(pop_z, dtype=np.float32) * np.float32(params.pop_weight))
        self.tie_z = None if pop_z is None else (
            np.asarray(pop_z, dtype=np.float32) * np.float32(TIE_BREAK))
        # both popularity terms in one vector: one pass over the catalog per miss for the
        # users who get all of the validated term (gate 1)
        self.pop_tie_z = None if self.pop_z is None or self.tie_z is None else (
            self.pop_z + self.tie_z)
        # the popularity term's weight per trained user (2^(-days since their last event at
        # training / pop_gate_days)); users active since (longer history) or unknown get 1
        self.user_gate = None if user_gate is None or params.pop_gate_days <= 0 else (
            np.asarray(user_gate, dtype=np.float32))
        self.trained_lengths = trained_lengths
        # recency weights by history position, computed once (grown for longer histories)
        self._weights = history_weights(1024, params.mix, params.half_life)
        # NOTE: the pipeline asks the generator, then the scorer, about the same user (the
        # same history array, on one worker thread); the row the generator computed is kept
        # per thread so the scorer does not compute it again
        self._last = threading.local()

    def gate(self, user: UserFeatures) -> float:
        """How much of the popularity term ``user`` gets: 1 for users active since training
        (or never seen), else what their inactivity at training time left of it."""
        if self.user_gate is None or not 0 <= user.row < self.user_gate.size:
            return 1.0
        if self.trained_lengths is not None and user.history.size > self.trained_lengths[user.row]:
            return 1.0
        return float(self.user_gate[user.row])

    def _history(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct usable history items, their recency weights, all distinct items), newest
        first; a repeated item counts at its newest position."""
        h = np.asarray(history, dtype=np.int64)
        h = h[(h >= 0) & (h < self.n_items)]
        _, first = np.unique(h, return_index=True)
        first.sort()
        if h.size > self._weights.size:
            self._weights = history_weights(2 * h.size, self.params.mix, self.params.half_life)
        w = self._weights[first]
        h = h[first]
        ok = self.base.usable(h)
        return h[ok], w[ok], h

    def _scores(self, h: np.ndarray, w: np.ndarray, distinct: np.ndarray,
                gate: float) -> np.ndarray:
        # z(item-item row) + seq_weight * z(next-item row), standardized by the compiled
        # kernel (the same arithmetic as :func:`znorm_rows`, without its temporaries)
        s = _fast.add_standardized(np.zeros(self.n_items, dtype=np.float32),
                                   self.base.rows(h, w))
        if self.seq is not None:
            _fast.add_standardized(s, self.seq.rows(distinct), self.params.seq_weight)
        if self.pop_tie_z is not None and gate == 1.0:
            s += self.pop_tie_z
            return s
        if self.pop_z is not None and gate > 0:
            s += self.pop_z if gate == 1.0 else np.float32(gate) * self.pop_z
        if self.tie_z is not None:
            s += self.tie_z
        return s

    def full_scores(self, history: np.ndarray, gate: float = 1.0) -> np.ndarray:
        """Float32 scores over the catalog for item indices ``history`` (newest first);
        ``gate`` scales the popularity term (:meth:`gate`)."""
        return self._scores(*self._history(history), gate)

    def _user_row(self, user: UserFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(read-only scores over the catalog, usable history, its weights) for ``user``."""
        last = getattr(self._last, "row", None)
        if last is not None and last[0] is user.history:
            return last[1:]
        h, w, distinct = self._history(user.history)
        s = self._scores(h, w, distinct, self.gate(user))
        s.flags.writeable = False
        self._last.row = (user.history, s, h, w)
        return s, h, w

    def score(self, user: UserFeatures, items: np.ndarray) -> np.ndarray:
        return self._user_row(user)[0][np.asarray(items, dtype=np.int64)]

    def catalog_scores(self, user: UserFeatures) -> np.ndarray:
        """Read-only float32 scores of every catalog item for ``user`` (the fused path)."""
        return self._user_row(user)[0]

    def explain(self, user: UserFeatures, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reasons, anchors) of ``items``: BECAUSE_YOU_LIKED with the history item that adds
        most to the item's score (the first such item of the history on a tie), FOR_YOU when
        none adds a positive amount or the item has no weights."""
        _, h, w = self._user_row(user)
        items = np.asarray(items, dtype=np.int64)
        reasons = np.full(items.size, int(Reason.FOR_YOU), dtype=np.int8)
        anchors = np.full(items.size, -1, dtype=np.int64)
        cols = self.base.pos[items]
        if h.size == 0 or items.size == 0:
            return reasons, anchors
        # only the asked columns of the history rows: an [H, len(items)] gather
        contrib = self.base.weights[np.ix_(self.base.pos[h], np.maximum(cols, 0))]
        contrib *= w[:, None]
        best = contrib.argmax(axis=0)
        liked = (contrib[best, np.arange(items.size)] > 0) & (cols >= 0)
        reasons[liked] = int(Reason.BECAUSE_YOU_LIKED)
        anchors[liked] = h[best[liked]]
        return reasons, anchors

    def generate(self, user: UserFeatures, n: int) -> Candidates:
        """Top ``n`` unseen items with their reasons (:meth:`explain`)."""
        s, h, _ = self._user_row(user)
        if h.size == 0:
            return Candidates.empty()
        idx, _ = _fast.topk(s, n, exclude=user.seen)
        return Candidates(idx, *self.explain(user, idx))


def build(model: Model) -> BlendScorer | None:
    """The blend of ``model`` (None without a blend part or without its EASE part)."""
    part = model.part(NAME)
    base = EaseScorer.from_model(model, EASE)
    if part is None or base is None:
        return None
    p = model.params(NAME)
    params = BlendParams(float(p.get("mix", 0.0)), float(p.get("half_life", 0.0)),
                         float(p.get("seq_weight", 0.0)), float(p.get("pop_weight", 0.0)),
                         float(p.get("pop_half_life_days", 0.0)),
                         float(p.get("pop_gate_days", 0.0)))
    seq = None
    if "seq_indptr" in part:
        seq = SequenceBase(part["seq_indptr"], part["seq_indices"], part["seq_data"],
                           len(model.catalog))
    return BlendScorer(base, params, part["popularity_z"] if "popularity_z" in part else None,
                       seq, part["user_gate"] if "user_gate" in part else None,
                       np.diff(model.users.history_indptr))


# --- training: choose every hyper-parameter on hold-outs ------------------------------------

#: EASE lambdas tried (a walk from the middle outwards), EDLAE dropouts tried at the best one.
LAMBDAS = (15.0, 30.0, 60.0, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)
LAMBDA_START = 250.0
#: how many (lambda, dropout) pairs a round of the walk fits at once
_SIDE_BY_SIDE = 2
DROPOUTS = (0.0, 0.25, 0.5, 0.7)
DROPOUT_START = 0.25
#: RLAE diagonal bounds tried (upwards from EASE's 0) at the chosen lambda and dropout
DIAGONAL_BOUNDS = (0.0, 0.1, 0.2, 0.4, 0.6)
#: Multiples of the first hold-out's EASE lambda tried on every shape. Next-item shapes favour
#: less regularization than the random one that tuned it, but on MovieLens no smaller lambda
#: passed the random shape's test (benchmarks/protocols.py), so by default only 1 is tried;
#: the ``lambda_scales`` option widens it (each value costs one EASE fit per hold-out).
LAMBDA_SCALES = (1.0,)
#: Shares of a second EASE, fitted with a lambda LOW_LAMBDA_FACTOR times the tuned one, in the
#: item-item weights (one matrix: ``(1 - share) * B(lambda) + share * B(factor * lambda)``).
#: Next-item shapes favour a smaller lambda than the random shape that tuned it. On the
#: protocols of benchmarks/protocols.py the shares gained on some cells and lost badly on one
#: (docs/evaluation.md), so none is tried by default; the ``low_lambda_shares`` option turns
#: the search on (the smaller-lambda fit costs one EASE fit per hold-out).
LOW_LAMBDA_SHARES: tuple[float, ...] = ()
LOW_LAMBDA_FACTOR = 0.2
#: Half-lives (days) of the EASE training pairs' age decay tried besides 0 (no decay); values
#: longer than the data's time span are left out. Each costs one EASE fit per hold-out, and on
#: MovieLens (90 and 365 days) none passed the random shape's test, so none is tried by
#: default; the ``age_half_lives`` option turns the search on.
AGE_HALF_LIVES: tuple[float, ...] = ()
#: The age half-lives searched instead when the temporal shape alone is judged (``--validation
#: temporal``) and ``age_half_lives`` is not set: "what is current" is what that shape
#: measures, and there is no random shape for the decay to lose on.
TEMPORAL_AGE_HALF_LIVES = (30.0, 90.0, 365.0)
#: History recency: the share of recency weight and its half-life in history positions. The
#: grids of this and of SEQ_WEIGHTS reach far enough for ``--validation last``, whose best
#: next-item weights lie above what the robust rule lets past the random shape.
MIXES = (0.15, 0.3, 0.6, 0.9)
HISTORY_HALF_LIVES = (2.0, 8.0)
#: The most NDCG a candidate may lose on any hold-out shape against the plain model (at the
#: lower confidence bound, relative to its mean): the price of robustness. A tighter bound
#: let no time-aware candidate past the random shape, so next-item protocols got nothing; the
#: measured trade-off is in docs/evaluation.md.
MAX_LOSS = 0.01
#: The training report names a shape's own best candidate when it beats the chosen blend there
#: by more than this share of NDCG (``Search.given_up``)
SHAPE_GAIN_SHOWN = 0.02
#: Random hold-outs (folds) carved for the random shape. A second fold narrows the random
#: shape's confidence bound at the cost of a fourth of the validation work; one fold served
#: a better mean on benchmarks/protocols.py (docs/evaluation.md has both runs).
RANDOM_FOLDS = 1
#: Diversity caps (items per primary category in the top k) validated, tightest first.
DIVERSITY_CAPS = (2, 3, 4, 5)
#: Weight of the (standardized) next-item score next to the item-item one.
SEQ_WEIGHTS = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8)
#: Popularity: weight next to the (standardized) item-item score, and half-lives in days.
POP_WEIGHTS = (0.1, 0.3, 0.8)
#: The popularity term's weight for every user on top of the validated one: it only orders
#: items that the rest scores (nearly) alike, such as the whole catalog for a user whose
#: history has no item-item weights (items outside the EASE part), who would otherwise get
#: the lowest item indices. Validation scores candidates with it too.
TIE_BREAK = 1e-3
POP_HALF_LIVES = (0.0, 30.0, 365.0)
#: A user's popularity weight halves with every this many days they had been inactive when
#: the model was trained (0: no gate). Users active since training always get all of it.
POP_GATES = (0.0, 30.0)


#: The keys of ``[plugins.blend]`` (the trainer reads them; serving reads none) and defaults.
OPTIONS: dict[str, Any] = {
    "validation": "robust", "criterion": "noninferior", "random_folds": RANDOM_FOLDS,
    "validation_fraction": 0.2, "max_users": 2000, "max_cells": 8e6, "seed": 0, "alpha": 0.25,
    "k": 10, "max_loss": MAX_LOSS, "degenerate_margin": 0.10, "diversity_caps": DIVERSITY_CAPS,
    "diversity_max_loss": None, "max_validation_items": 3000, "validation_mass": 0.99,
    "max_ease_items": 6000,
    "mixes": MIXES, "history_half_lives": HISTORY_HALF_LIVES, "seq_weights": SEQ_WEIGHTS,
    "pop_weights": POP_WEIGHTS, "pop_half_lives": POP_HALF_LIVES, "pop_gates": POP_GATES,
    "lambda_scales": LAMBDA_SCALES, "age_half_lives": AGE_HALF_LIVES, "blas_threads": 1,
    "low_lambda_shares": LOW_LAMBDA_SHARES, "low_lambda_factor": LOW_LAMBDA_FACTOR,
    "threads": 0, "diagonal_bounds": DIAGONAL_BOUNDS,
}


@dataclass
class Search:
    """Per-shape validation results of every candidate tried, and the selection rule."""

    shapes: Sequence[str]
    max_loss: float
    degenerate_margin: float
    alpha: float = 0.05
    #: "minimax": the best worst-case NDCG ratio to the best candidate of each shape;
    #: "noninferior": non-inferior to the plain model on every shape, then the best mean gain
    criterion: str = "noninferior"
    results: dict[BlendParams, dict[str, Outcome]] = field(default_factory=dict)

    def baseline(self) -> dict[str, Outcome]:
        return self.results[BlendParams()]

    def ratios(self, c: BlendParams) -> np.ndarray:
        base = self.baseline()
        return np.array([self.results[c][s].ndcg / max(base[s].ndcg, 1e-12)
                         for s in self.shapes])

    def degenerate(self, c: BlendParams) -> bool:
        """(Nearly) the same list for every user, or half the plain model's coverage."""
        base = self.baseline()
        return any(self.results[c][s].personalization < 0.5
                   or self.results[c][s].coverage < 0.5 * base[s].coverage
                   for s in self.shapes)

    def lower_bounds(self, c: BlendParams) -> np.ndarray:
        """Per shape, the one-sided lower confidence bound (normal approximation at level
        ``alpha``) of the candidate's paired per-user NDCG change relative to the plain model's
        mean NDCG: a non-inferiority test."""
        return self.bound(self.baseline(), self.results[c])

    def bound(self, base: Mapping[str, Outcome], other: Mapping[str, Outcome]) -> np.ndarray:
        """:meth:`lower_bounds` of ``other`` against ``base`` (per-shape outcomes)."""
        z = statistics.NormalDist().inv_cdf(1.0 - self.alpha)
        out = []
        for s in self.shapes:
            b, a = base[s].per_user, other[s].per_user
            d = (a - b) / max(float(b.mean()), 1e-12)
            se = float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else 0.0
            out.append(float(d.mean()) - z * se)
        return np.array(out)

    def regrets(self, c: BlendParams) -> np.ndarray:
        """Per shape, the candidate's NDCG over the best NDCG any candidate reached."""
        return np.array([self.results[c][s].ndcg
                         / max(max(o[s].ndcg for o in self.results.values()), 1e-12)
                         for s in self.shapes])

    def given_up(self, chosen: BlendParams, min_gain: float | None = None
                 ) -> dict[str, BlendParams]:
        """Per shape, the candidate tried that scored best there when it beats ``chosen`` there
        by more than ``min_gain`` (relative NDCG; default :data:`SHAPE_GAIN_SHOWN`) and is not
        degenerate: what validating on that shape alone would at least find, and what the rule
        gave up for the others."""
        if len(self.shapes) < 2:
            return {}
        min_gain = SHAPE_GAIN_SHOWN if min_gain is None else min_gain
        fair = [c for c in self.results if not self.degenerate(c)]
        out = {}
        for s in self.shapes:
            top = max(fair, key=lambda c: self.results[c][s].ndcg, default=chosen)
            if self.results[top][s].ndcg > (1.0 + min_gain) * self.results[chosen][s].ndcg:
                out[s] = top
        return out

    def value(self, c: BlendParams) -> float:
        """The selection objective (higher is better; -inf: not eligible).

        "minimax": the worst shape's NDCG ratio to the best candidate on that shape, plus a
        hundredth of the mean log ratio to the plain model to break near-ties; "noninferior":
        the mean log NDCG ratio to the plain model, -inf unless the candidate is non-inferior
        on every shape (its change's lower bound is at least ``-max_loss``). Either way a
        degenerate candidate that does not win every shape by ``degenerate_margin`` is -inf.
        """
        r = self.ratios(c)
        if self.degenerate(c) and r.min() < 1.0 + self.degenerate_margin:
            return -math.inf
        gain = float(np.mean(np.log(np.maximum(r, 1e-12))))
        if self.criterion == "minimax":
            return float(self.regrets(c).min()) + 0.01 * gain
        if c != BlendParams() and self.lower_bounds(c).min() < -self.max_loss:
            return -math.inf
        return gain


class BlendTrainer:
    """Choose the served default's hyper-parameters on hold-outs of the training events.

    Options:
    ``validation``: "robust" (default: hold-outs of every shape in :data:`SHAPES`), or one
    shape. ``random_folds`` (:data:`RANDOM_FOLDS`), ``validation_fraction`` (0.2),
    ``max_users`` (2000 per
    hold-out, fewer when users x catalog would exceed ``max_cells``, 8e6), ``seed`` (0),
    ``alpha`` (0.25),
    ``k`` (10), ``diversity_caps`` (:data:`DIVERSITY_CAPS`),
    ``max_loss`` (:data:`MAX_LOSS`), ``degenerate_margin`` (0.10), ``max_validation_items``
    (3000: EASE during validation keeps the most popular items), ``validation_mass`` (0.99:
    and no more of them than hold this share of the events; an inverse costs the cube of its
    items, and the long tail barely moves which candidate wins), ``max_ease_items`` (6000:
    the served EASE keeps the items with the fewest users out until at most this many are
    left), the grids
    (``mixes``, ``history_half_lives``, ``seq_weights``, ``pop_weights``, ``pop_half_lives``,
    ``pop_gates``, ``lambda_scales``, ``age_half_lives``, ``low_lambda_shares`` with
    ``low_lambda_factor``), ``criterion`` ("noninferior" or
    "minimax", :class:`Search`) and ``blas_threads`` (1).

    Procedure (each step in the training report):

    1. Hold-outs: one per shape (``random_folds`` for "random"), carved from the training data
       only; sub-models are refit on each hold-out's validation-train part.
    2. EASE: lambda walks :data:`LAMBDAS` from 250 towards the better neighbour while NDCG@k
       improves and is served at the smoothed peak of the walk (:func:`smoothed_peak`), then
       the EDLAE dropout walks :data:`DROPOUTS` at that lambda, on the first hold-out
       ("random" for robust: the protocol with no recency to exploit, so the one a
       time-aware model can only lose on).
    3. Blend: coordinate ascent over the lambda scale, the age decay of the EASE training
       pairs (:data:`AGE_HALF_LIVES`), the history (mix, half-life), the
       sequence weight, the popularity (weight, half-life, gate), then the history and the
       sequence again, scored on every hold-out. The plain model (no recency, sequence or
       popularity) is the baseline; a candidate is eligible only if it is non-inferior to it
       on *every* shape (:meth:`Search.value`), and among eligible candidates the best mean
       log NDCG ratio to the baseline wins (the geometric-mean gain). So time-awareness is
       bought where a shape rewards it and never paid for on a shape that does not.
    4. No degenerate default: a candidate whose lists are nearly the same for every user
       (personalization < 0.5) or whose coverage is below half the baseline's is refused
       unless it beats the baseline by ``degenerate_margin`` on every shape.
    5. Diversity: the tightest cap of :data:`DIVERSITY_CAPS` (walked from the loosest, stopping
       at the first that fails) that is non-inferior to the
       uncapped blend on every shape (same test, ``diversity_max_loss``) is served as the
       diversity reranker's default (``serving_options``; an explicit
       ``[plugins.diversity] cap`` wins); none qualifies: no cap.
    """

    def fit(self, data: TrainingData, options: Mapping[str, Any]) -> ModelPart:
        # NOTE: validation is many mid-sized BLAS calls; OpenBLAS threads spinning against each
        # other (or against other processes) cost far more than they gain there.
        # Hold-outs are independent: one Python thread per core works on them side by side
        # (BLAS, LAPACK and the kernels release the GIL), which degrades gracefully on a busy
        # machine where spinning BLAS threads do not. ``threads`` 0: one per core.
        threads = int(options.get("threads", 0)) or (os.cpu_count() or 1)
        with threadpool_limits(int(options.get("blas_threads", 1)), "blas"), \
                ThreadPoolExecutor(max(1, threads), thread_name_prefix="blend-fit") as pool:
            return self._fit(data, options, pool, 1 if threads > 1 else None)

    def _fit(self, data: TrainingData, options: Mapping[str, Any], pool: ThreadPoolExecutor,
             kernel_threads: int | None) -> ModelPart:
        started = time.perf_counter()
        how = str(options.get("validation", "robust"))
        if how not in VALIDATIONS:
            raise ValueError(f"blend: validation must be one of {', '.join(VALIDATIONS)}, "
                             f"not {how!r}")
        criterion = str(options.get("criterion", "noninferior"))
        if criterion not in CRITERIA:
            raise ValueError(f"blend: criterion must be one of {', '.join(CRITERIA)}, "
                             f"not {criterion!r}")
        shapes = SHAPES if how == "robust" else (how,)
        fraction = float(options.get("validation_fraction", 0.2))
        max_users = int(options.get("max_users", 2000))
        seed = int(options.get("seed", 0))
        k = int(options.get("k", 10))
        # the blend is chosen uncapped; the diversity cap is validated for it afterwards
        cap = None
        caps = [int(c) for c in grid_option(options, "diversity_caps", DIVERSITY_CAPS)]
        if data.catalog.categories.max(initial=-1) < 0:
            caps = []
        categories = np.asarray(data.catalog.categories, dtype=np.int64)
        max_ease_items = int(options.get("max_ease_items", 6000))
        report: list[str] = []

        # the served EASE keeps the items with at least min_count users: the smallest count
        # that leaves at most max_ease_items of them
        users_per_item = np.sort(np.diff(data.matrix.tocsc().indptr))[::-1]
        max_val_items = validation_item_limit(users_per_item, options)
        min_count = 1 if (users_per_item > 0).sum() <= max_ease_items else int(
            users_per_item[max_ease_items]) + 1

        folds = int(options.get("random_folds", RANDOM_FOLDS))
        # NOTE: validation holds a few dense [users x catalog] float32 matrices per hold-out;
        # on a large catalog fewer users keep them within ``max_cells`` each
        max_users = min(max_users, max(200, int(float(options.get("max_cells", 8e6))
                                                // max(data.n_items, 1))))
        specs = [(s, seed + f) for s in shapes for f in range(folds if s == "random" else 1)]
        holds = list(pool.map(lambda spec: make_holdout(data, spec[0], fraction, max_users,
                                                        spec[1]), specs))
        holds = [h for h in holds if h.rows.size]
        if not holds:
            # too little data to validate anything: serve the plain model with the trainers'
            # own defaults rather than no blend at all
            return ModelPart(
                name=NAME, params={**asdict(BlendParams()),
                                   "validation": how, "shapes": [], "tuned_options": {},
                                   "serving_options": {}},
                arrays={"popularity_z": popularity_z(data.item_mass(0.0))},
                metrics={"report": ["no validation users (too little data): the plain model "
                                    "with default hyper-parameters"],
                         "tune_seconds": round(time.perf_counter() - started, 2)})
        shapes = tuple(dict.fromkeys(h.shape for h in holds))
        report.append("hold-outs: " + ", ".join(
            f"{s} ({sum(h.shape == s for h in holds)} x "
            f"{max(h.rows.size for h in holds if h.shape == s)} users)" for s in shapes)
            + f"; EASE fitted there on the {max_val_items} most popular of "
              f"{int((users_per_item > 0).sum())} items")

        # step 2: the base model's own hyper-parameters, on the first hold-out
        tuned: dict[str, dict[str, Any]] = {}
        lam, dropout, walk, fitted, plain_scores = self._tune_ease(
            holds[0], k, categories, max_val_items, pool, kernel_threads)
        bound, bound_walk, fitted, plain_scores = self._tune_bound(
            holds[0], fitted, plain_scores, k, categories, kernel_threads,
            grid_option(options, "diagonal_bounds", DIAGONAL_BOUNDS))
        tuned[EASE] = {"lambda": lam, "dropout": dropout, "diagonal_bound": bound,
                       "min_count": min_count}
        report.append(f"ease on the first {holds[0].shape} hold-out: " + ", ".join(
            f"lambda {lm:g} dropout {d:g}: {v:.4f}" for (lm, d), v in walk.items())
            + f" -> lambda {lam:g}, dropout {dropout:g}")
        report.append("ease diagonal bound (RLAE) there: " + ", ".join(
            f"{b:g}: {v:.4f}" for b, v in bound_walk.items()) + f" -> {bound:g}")
        # raw fits by (hold-out, lambda multiple, age); served models by (hold-out, model)
        raws: dict[tuple[int, float, float], EaseScorer] = {(0, 1.0, 0.0): fitted}
        bases: dict[tuple[int, tuple[float, float, float]], EaseScorer] = {}
        low_factor = float(options.get("low_lambda_factor", LOW_LAMBDA_FACTOR))

        # step 3: the blend, by coordinate ascent on every hold-out at once
        search = Search(shapes, float(options.get("max_loss", MAX_LOSS)),
                        float(options.get("degenerate_margin", 0.10)),
                        float(options.get("alpha", 0.25)), criterion)
        cache: dict[tuple[int, float, tuple[float, float, float]], np.ndarray] = {
            (0, 0.0, BlendParams().model): plain_scores}

        def raw(i: int, multiple: float, age: float) -> EaseScorer:
            """Hold-out ``i``'s EASE at the tuned lambda times ``multiple``, training pairs
            decaying with half-life ``age`` days."""
            if (i, multiple, age) not in raws:
                raws[(i, multiple, age)] = self._ease_base(
                    holds[i].train, lam * multiple, dropout, max_val_items, age, bound)
            return raws[(i, multiple, age)]

        def raw_keys(i: int, model: tuple[float, float, float]) -> list[tuple[int, float, float]]:
            scale, age, low = model
            return [(i, scale, age)] + ([(i, scale * low_factor, age)] if low else [])

        def base(i: int, model: tuple[float, float, float]) -> EaseScorer:
            """Hold-out ``i``'s item-item model: EASE at the lambda times the model's scale,
            with the model's share of the one at ``low_factor`` times that lambda."""
            if (i, model) not in bases:
                fits = [raw(*key) for key in raw_keys(i, model)]
                if len(fits) == 1:
                    bases[(i, model)] = fits[0]
                else:
                    bases[(i, model)] = EaseScorer(
                        fits[0].items,
                        linear.mix_weights(fits[0].weights, fits[1].weights, model[2]),
                        fits[0].n_items)
            return bases[(i, model)]

        def base_scores(i: int, half_life: float, model: tuple[float, float, float]
                        ) -> np.ndarray:
            key = (i, half_life, model)
            if key not in cache:
                h = holds[i]
                # a recency-weighted history is a handful of items: past 16 half-lives the
                # weights are below 2^-16, so the product stays sparse and cheap
                limit = None if half_life <= 0 else int(np.ceil(16 * half_life))
                hist = history_matrix(h.train.users, h.rows, data.n_items,
                                      1.0 if half_life > 0 else 0.0, half_life, limit)
                cache[key] = base(i, model).batch(hist)
            return cache[key]

        normed: dict[tuple[int, float, float, tuple[float, float, float]], np.ndarray] = {}
        # NOTE: a standardized mix is a dense [users x catalog] matrix per hold-out; only those
        # of the plain model and of the current best are kept (the others are used by one
        # candidate each, in the history step), which bounds validation memory on a large
        # catalog
        pinned: set[tuple[int, float, float, tuple[float, float, float]]] = set()

        def normed_key(i: int, c: BlendParams
                       ) -> tuple[int, float, float, tuple[float, float, float]]:
            return (i, c.mix, c.half_life, c.model)

        def pin(*cands: BlendParams) -> None:
            """Keep only the standardized mixes of ``cands`` from now on."""
            pinned.clear()
            pinned.update(normed_key(i, c) for c in cands for i in range(len(holds)))
            for key in [key for key in normed if key not in pinned]:
                del normed[key]

        def history_scores(i: int, mix: float, half_life: float,
                           model: tuple[float, float, float]) -> np.ndarray:
            """z of the item-item scores of hold-out ``i`` (read-only; kept when pinned)."""
            key = (i, mix, half_life, model)
            if key in normed:
                return normed[key]
            s = base_scores(i, 0.0, model)
            if mix > 0 and half_life > 0:
                s = (1.0 - mix) * s + mix * base_scores(i, half_life, model)
            out = znorm_rows(np.array(s, dtype=np.float32))
            if key in pinned:
                normed[key] = out
            return out

        pops: dict[tuple[int, float], np.ndarray] = {}

        def pop_scores(i: int, days: float) -> np.ndarray:
            if (i, days) not in pops:
                pops[(i, days)] = popularity_z(holds[i].train.item_mass(days))
            return pops[(i, days)]

        seqs: dict[int, np.ndarray] = {}

        def seq_scores(i: int) -> np.ndarray:
            if i not in seqs:
                h = holds[i]
                hist = history_matrix(h.train.users, h.rows, data.n_items, 1.0, 1.0,
                                      SEQ_HISTORY)
                seqs[i] = znorm_rows(np.asarray((hist @ transition_matrix(h.train)).toarray(),
                                                dtype=np.float32))
            return seqs[i]

        def scores(c: BlendParams, i: int) -> np.ndarray:
            s = history_scores(i, c.mix, c.half_life, c.model).copy()
            if c.seq_weight:
                s += np.float32(c.seq_weight) * seq_scores(i)
            s += np.float32(TIE_BREAK) * pop_scores(i, c.pop_half_life_days)
            if c.pop_weight:
                pop = np.float32(c.pop_weight) * pop_scores(i, c.pop_half_life_days)
                if c.pop_gate_days > 0:
                    gate = user_gate(holds[i].train, c.pop_gate_days)[holds[i].rows]
                    s += gate[:, None] * pop[None, :]
                else:
                    s += pop
            return s

        def prepare(cands: Sequence[BlendParams]) -> None:
            """Fill the per-hold-out caches ``cands`` read, a layer at a time (the models,
            their scores, the standardized mixes), each layer's distinct entries side by side
            on ``pool``: no two threads ever compute one entry, and a long entry of one
            hold-out does not leave the other core idle while short ones wait."""
            pairs = [(i, c) for c in cands for i in range(len(holds))]
            fits = {key for i, c in pairs for key in raw_keys(i, c.model)}
            list(pool.map(lambda key: raw(*key), sorted(fits - raws.keys())))
            models = {(i, c.model) for i, c in pairs}
            list(pool.map(lambda key: base(*key), sorted(models - bases.keys())))
            layer: set[tuple[str, tuple[Any, ...]]] = set()
            for i, c in pairs:
                layer.add(("base", (i, 0.0, c.model)))
                if c.mix > 0 and c.half_life > 0:
                    layer.add(("base", (i, c.half_life, c.model)))
                if c.seq_weight:
                    layer.add(("seq", (i,)))
            todo = sorted(e for e in layer
                          if (e[1] not in cache if e[0] == "base" else e[1][0] not in seqs))
            list(pool.map(lambda e: base_scores(*e[1]) if e[0] == "base" else seq_scores(
                *e[1]), todo))
            shared = {normed_key(i, c) for i, c in pairs} & pinned
            list(pool.map(lambda key: history_scores(*key), sorted(shared - normed.keys())))

        def outcomes_many(cands: Sequence[BlendParams], cap: int | None
                          ) -> list[dict[str, Outcome]]:
            """Per candidate, its outcome on each shape; every (candidate, hold-out) is judged
            side by side once the caches it reads are filled."""
            prepare(cands)
            pairs = [(c, i) for c in cands for i in range(len(holds))]
            judged = list(pool.map(lambda ci: judge(scores(ci[0], ci[1]), holds[ci[1]], k, cap,
                                                    categories, threads=kernel_threads),
                                   pairs))
            out: list[dict[str, Outcome]] = []
            for j in range(len(cands)):
                per: dict[str, list[Outcome]] = {}
                for h, o in zip(holds, judged[j * len(holds):(j + 1) * len(holds)],
                                strict=True):
                    per.setdefault(h.shape, []).append(o)
                out.append({shape: combine(o) for shape, o in per.items()})
            return out

        def outcomes(c: BlendParams, cap: int | None) -> dict[str, Outcome]:
            return outcomes_many([c], cap)[0]

        def evaluate_all(cands: Sequence[BlendParams]) -> None:
            todo = [c for c in dict.fromkeys(cands) if c not in search.results]
            for c, o in zip(todo, outcomes_many(todo, None), strict=True):
                search.results[c] = o

        def evaluate(c: BlendParams) -> float:
            evaluate_all([c])
            return search.value(c)

        best = BlendParams()
        pin(best)
        evaluate(best)
        span_days = float(np.ptp(data.timestamps)) / 86400.0 if data.timestamps.size else 0.0
        mixes = grid_option(options, "mixes", MIXES)
        history_half_lives = grid_option(options, "history_half_lives", HISTORY_HALF_LIVES)
        pop_weights = grid_option(options, "pop_weights", POP_WEIGHTS)
        pop_half_lives = [d for d in grid_option(options, "pop_half_lives", POP_HALF_LIVES)
                          if d == 0 or d <= max(span_days, 1.0)]
        seq_weights = grid_option(options, "seq_weights", SEQ_WEIGHTS)
        pop_gates = grid_option(options, "pop_gates", POP_GATES)
        scales = grid_option(options, "lambda_scales", LAMBDA_SCALES)
        low_shares = [a for a in grid_option(options, "low_lambda_shares", LOW_LAMBDA_SHARES)
                      if 0 < a < 1]
        ages = [d for d in grid_option(options, "age_half_lives", TEMPORAL_AGE_HALF_LIVES
                                       if shapes == ("temporal",) else AGE_HALF_LIVES)
                if 0 < d <= max(span_days, 1.0)]
        changed = {"lambda": True, "age": True, "history": True, "sequence": True,
                   "popularity": True}
        for step in ("lambda", "age", "history", "sequence", "popularity", "history",
                     "sequence"):
            if not any(v for k, v in changed.items() if k != step):
                break  # nothing else moved since this step last ran
            before = best
            if step == "history":
                grid = [replace(best, mix=0.0, half_life=0.0)] + [
                    replace(best, mix=m, half_life=hl)
                    for m in mixes if m > 0 for hl in history_half_lives]
            elif step == "sequence":
                grid = [replace(best, seq_weight=w) for w in [0.0, *seq_weights]]
            elif step == "lambda":
                grid = [replace(best, lambda_scale=x, low_share=a) for x in scales
                        for a in [0.0, *low_shares]]
            elif step == "age":
                grid = [replace(best, age_half_life_days=d) for d in [0.0, *ages]]
            else:
                grid = [replace(best, pop_weight=0.0, pop_half_life_days=0.0,
                                pop_gate_days=0.0)] + [
                    replace(best, pop_weight=w, pop_half_life_days=d, pop_gate_days=g)
                    for w in pop_weights if w > 0 for d in pop_half_lives
                    for g in pop_gates]
            evaluate_all(grid)  # side by side; then compared in the walk's order
            for c in grid:
                if evaluate(c) > evaluate(best):
                    best = c
            changed[step] = best != before
            pin(BlendParams(), best)
        # the best shape scores grew during the walk: judge every candidate tried again
        best = max(search.results, key=search.value)
        pin(best)  # the diversity caps are judged on it
        chosen, plain = search.results[best], search.baseline()
        report.append(f"blend ({len(search.results)} candidates): {best.label()}")
        report.append(f"validation NDCG@{k} chosen vs plain: " + ", ".join(
            f"{s} {chosen[s].ndcg:.4f} vs {plain[s].ndcg:.4f}" for s in shapes))
        given_up = {s: (alt, {t: search.results[alt][t].ndcg for t in shapes})
                    for s, alt in search.given_up(best).items()}
        for s, (alt, ndcg) in given_up.items():
            report.append(
                f"best on {s} of the candidates tried: {alt.label()}; validation NDCG@{k} "
                + ", ".join(f"{t} {v:.4f}" for t, v in ndcg.items())
                + f" (`--validation {s}` chooses on that shape alone)")
        refused = sum(1 for c in search.results if search.degenerate(c))
        report.append(f"coverage@{k} " + ", ".join(f"{s} {chosen[s].coverage:.3f}"
                                                   for s in shapes)
                      + f"; personalization {min(chosen[s].personalization for s in shapes):.3f}"
                      + f"; {refused} degenerate candidates refused")

        # step 5: the tightest diversity cap that costs the chosen blend nothing measurable
        cap_cost: dict[str, dict[str, float]] = {}
        max_cap_loss = float(options.get("diversity_max_loss", search.max_loss))
        # loosest first: a tighter cap costs at least as much, so the walk stops at the first
        # cap that fails and keeps the last one that passed
        for c in sorted(caps, reverse=True):
            capped = outcomes(best, c)
            bound = search.bound(chosen, capped)
            cap_cost[str(c)] = {s: round(1.0 - capped[s].ndcg / max(chosen[s].ndcg, 1e-12), 4)
                                for s in shapes}
            if bound.min() < -max_cap_loss:
                break
            cap = c
        if caps:
            report.append("diversity cap: " + ("none" if cap is None else str(cap))
                          + f" (NDCG cost by cap {cap_cost}; a cap must not cost more than "
                            f"{max_cap_loss:.1%} at the {1 - search.alpha:.0%} level)")

        tuned[EASE]["lambda"] = lam * best.lambda_scale
        tuned[EASE]["age_half_life_days"] = best.age_half_life_days
        tuned[EASE]["low_lambda_share"] = best.low_share
        tuned[EASE]["low_lambda_factor"] = low_factor
        arrays = {"popularity_z": popularity_z(data.item_mass(best.pop_half_life_days))}
        if best.pop_weight and best.pop_gate_days > 0:
            arrays["user_gate"] = user_gate(data, best.pop_gate_days)
        if best.seq_weight:
            t = transition_matrix(data)
            arrays.update(seq_indptr=t.indptr.astype(np.int64),
                          seq_indices=t.indices.astype(np.int64), seq_data=t.data)
        return ModelPart(
            name=NAME,
            params={"mix": best.mix, "half_life": best.half_life,
                    "seq_weight": best.seq_weight, "pop_weight": best.pop_weight,
                    "lambda_scale": best.lambda_scale,
                    "age_half_life_days": best.age_half_life_days,
                    "low_share": best.low_share,
                    "pop_half_life_days": best.pop_half_life_days,
                    "pop_gate_days": best.pop_gate_days,
                    "validation": how, "shapes": list(shapes),
                    "tuned_options": tuned,
                    "serving_options": {"diversity": {"cap": cap}} if caps else {}},
            arrays=arrays,
            metrics={
                "validation_ndcg": {s: round(chosen[s].ndcg, 5) for s in shapes},
                "plain_ndcg": {s: round(plain[s].ndcg, 5) for s in shapes},
                "validation_coverage": {s: round(chosen[s].coverage, 4) for s in shapes},
                "validation_personalization": {s: round(chosen[s].personalization, 4)
                                               for s in shapes},
                "candidates": len(search.results), "degenerate_refused": refused,
                "given_up": {s: {t: round(v, 5) for t, v in ndcg.items()}
                             for s, (_, ndcg) in given_up.items()},
                "diversity_cap_cost": cap_cost,
                "report": report, "tune_seconds": round(time.perf_counter() - started, 2)},
        )

    @staticmethod
    def _ease_base(train: TrainingData, lam: float, dropout: float, max_items: int,
                   age_half_life_days: float = 0.0, bound: float = 0.0) -> EaseScorer:
        x = train.binary_matrix()
        items = linear.active_items(x, 1, max_items)
        xd, factor = linear.decayed_matrix(train, age_half_life_days)
        xa = xd[:, items]
        return EaseScorer(items, linear.item_weights(linear.gram(xa), lam * factor,
                                                   dropout, bound), train.n_items)

    @staticmethod
    def _tune_bound(hold: Holdout, fitted: tuple[EaseScorer, np.ndarray], plain: np.ndarray,
                    k: int, categories: np.ndarray, kernel_threads: int | None,
                    bounds: Sequence[float]
                    ) -> tuple[float, dict[float, float], EaseScorer, np.ndarray]:
        """Walk RLAE's diagonal bound upwards from the first of ``bounds`` while NDCG@k on
        ``hold`` improves. A bound only rescales the columns of the chosen model's weights
        (:func:`linear.relaxed_columns`), so each step rescales its scores for ``hold`` too:
        no inverse, no product. Returns (bound, NDCG of every bound tried, the model and its
        plain scores at that bound)."""
        model, leverage = fitted
        bounds = sorted(dict.fromkeys(bounds)) or [0.0]

        def columns(bound: float) -> np.ndarray:
            """The bound's factor per catalog item (1 for items without weights)."""
            factors = np.ones(model.n_items, dtype=np.float32)
            factors[model.items] = linear.relaxed_columns(leverage, bound)
            return factors

        tried: dict[float, float] = {}
        at = 0
        for j, bound in enumerate(bounds):
            tried[bound] = judge(znorm_rows(plain * columns(bound)[None, :]), hold, k, None,
                                 categories, threads=kernel_threads).ndcg
            if j and not tried[bound] > tried[bounds[at]]:
                break
            at = j
        chosen = bounds[at]
        if chosen == 0.0:
            return chosen, tried, model, plain
        f = columns(chosen)
        return (chosen, tried, EaseScorer(model.items, model.weights * f[model.items][None, :],
                                          model.n_items), plain * f[None, :])

    @staticmethod
    def _tune_ease(hold: Holdout, k: int, categories: np.ndarray, max_items: int,
                   pool: ThreadPoolExecutor, kernel_threads: int | None = None
                   ) -> tuple[float, float, dict[tuple[float, float], float],
                              tuple[EaseScorer, np.ndarray], np.ndarray]:
        """Walk lambda from :data:`LAMBDA_START` towards the better neighbour while NDCG@k on
        ``hold`` improves (dropout :data:`DROPOUT_START`), take the smoothed peak of the walk
        (:func:`smoothed_peak`, between the best grid lambda's neighbours), then walk the
        dropout the same way at that lambda (smaller first; ties keep the current one).

        Each round fits two pairs side by side on ``pool``: the next step of the walk and the
        one after it (or both neighbours), so a walk costs about half its steps in wall time.
        The choice is the same as a one-at-a-time walk's: a speculative fit only adds an entry
        to the report.

        Returns (lambda, dropout, NDCG of every pair tried, the chosen model with its
        ``L_jj P_jj`` (for :meth:`_tune_bound`) and its plain scores for ``hold``, for
        reuse).
        """
        x = hold.train.binary_matrix()
        items = linear.active_items(x, 1, max_items)
        xa = x[:, items]
        gram = linear.gram(xa)
        hist = history_matrix(hold.train.users, hold.rows, hold.train.n_items, 0, 0)
        seen: dict[tuple[float, float], float] = {}
        # the model and plain scores of the walk's current pair (and of the last round)
        fitted: dict[tuple[float, float], tuple[tuple[EaseScorer, np.ndarray], np.ndarray]] = {}

        def fit(pair: tuple[float, float]
                ) -> tuple[float, tuple[EaseScorer, np.ndarray], np.ndarray]:
            weights, leverage = linear.ease_leverage(gram, pair[0], pair[1])
            model = EaseScorer(items, weights, hold.train.n_items)
            plain = model.batch(hist)
            return judge(znorm_rows(plain.copy()), hold, k, None, categories,
                         threads=kernel_threads).ndcg, (model, leverage), plain

        def run(pairs: list[tuple[float, float]], keep: tuple[float, float]) -> None:
            """Fit the first :data:`_SIDE_BY_SIDE` of ``pairs`` not tried yet, side by side;
            keep the models of ``keep`` and of this round only."""
            todo = [p for p in dict.fromkeys(pairs) if p not in seen][:_SIDE_BY_SIDE]
            for stale in [p for p in fitted if p != keep]:
                del fitted[stale]
            for pair, (value, model, plain) in zip(todo, pool.map(fit, todo), strict=True):
                seen[pair] = value
                fitted[pair] = (model, plain)

        def walk(grid: Sequence[float], at: int, pair: Any, order: tuple[int, int]) -> int:
            """Hill-climb ``grid`` from index ``at`` while the score improves, trying the
            directions in ``order``; ``pair(value)`` is the pair a grid value stands for. A
            round fits the next step and, beside it, the step after (a guess that costs no
            wall time on a second core)."""
            run([pair(grid[j]) for j in (at, at + order[0], at + order[1])
                 if 0 <= j < len(grid)], pair(grid[at]))
            for step in order:
                while 0 <= at + step < len(grid):
                    if pair(grid[at + step]) not in seen:
                        run([pair(grid[j]) for j in (at + step, at + 2 * step)
                             if 0 <= j < len(grid)], pair(grid[at]))
                    if not seen[pair(grid[at + step])] > seen[pair(grid[at])]:
                        break
                    at += step
            return at

        # lambda: upwards first (the larger neighbour decides the direction); dropout:
        # smaller first, ties keep the current one
        at = walk(LAMBDAS, LAMBDAS.index(LAMBDA_START), lambda v: (v, DROPOUT_START), (1, -1))
        lam = smoothed_peak(LAMBDAS, at, [seen.get((v, DROPOUT_START)) for v in LAMBDAS])
        # dropout walks the same way from DROPOUT_START: NDCG is unimodal in it in practice
        dropout = DROPOUTS[walk(DROPOUTS, DROPOUTS.index(DROPOUT_START), lambda v: (lam, v),
                                (-1, 1))]
        model, plain = fitted.get((lam, dropout)) or (None, None)
        if model is None:  # defensive: the walk keeps its current pair's model
            _, model, plain = fit((lam, dropout))
        return lam, dropout, seen, model, plain


def validation_item_limit(users_per_item: np.ndarray, options: Mapping[str, Any]) -> int:
    """How many of the most popular items the EASE fits of validation keep: those that hold
    ``validation_mass`` of the events, at most ``max_validation_items``."""
    return min(int(options.get("max_validation_items", OPTIONS["max_validation_items"])),
               linear.items_holding(users_per_item, float(options.get(
                   "validation_mass", OPTIONS["validation_mass"]))))


def smoothed_peak(grid: Sequence[float], at: int, scores: Sequence[float | None]) -> float:
    """The grid value to serve when ``grid[at]`` scored best: the vertex of the parabola in
    ``log(value)`` through it and its two neighbours, kept between the neighbours.

    A validation curve is noisy and a geometric grid coarse: the best point alone moves by a
    whole grid step on a difference within the noise, and the vertex of the three points
    around it follows the curve's shape rather than its noisiest point. ``grid[at]`` when a
    neighbour was not scored (an edge of the grid) or the three are not concave."""
    if not 0 < at < len(grid) - 1:
        return float(grid[at])
    ys = [scores[at - 1], scores[at], scores[at + 1]]
    if any(y is None for y in ys):
        return float(grid[at])
    xs = np.log([grid[at - 1], grid[at], grid[at + 1]])
    a, b, _ = np.polyfit(xs, np.asarray(ys, dtype=np.float64), 2)
    if not a < 0:
        return float(grid[at])
    return float(np.exp(np.clip(-b / (2 * a), xs[0], xs[2])))


def user_gate(data: TrainingData, gate_days: float) -> np.ndarray:
    """``2^(-days from each user's last event to the newest event / gate_days)`` (float32
    [n_users]; users without events get 1)."""
    last = np.full(data.n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, data.user_idx, data.timestamps)
    now = data.timestamps.max(initial=0)
    days = np.where(last > np.iinfo(np.int64).min, (now - last) / 86400.0, 0.0)
    return np.exp2(-days / gate_days).astype(np.float32)


@hookimpl
def register_trainers(register):
    register(NAME, BlendTrainer(), options=OPTIONS)


#: (weak reference to the model, its scorer) of the last build: the generator and the scorer
#: registrations share one object, so the pipeline can take its fused path (one call per miss)
_built: tuple[Any, BlendScorer | None] = (lambda: None, None)
_built_lock = threading.Lock()


def _factory(ctx: ComponentContext) -> BlendScorer | None:
    global _built
    with _built_lock:
        ref, scorer = _built
        if ref() is not ctx.model:
            scorer = build(ctx.model)
            _built = (weakref.ref(ctx.model), scorer)
        return scorer


@hookimpl
def register_candidate_generators(register):
    register(NAME, _factory, options=OPTIONS)


@hookimpl
def register_scorers(register):
    register(NAME, _factory, options=OPTIONS)
