"""Independent evaluation report: the served default against tuned peers on three protocols.

Everything that decides a number lives in this file: loading, splits, peer models, tuning and
metrics. Nothing of ``rankly.engine.offline.evaluation`` is reused; rankly is only reached
through its public CLI (``rankly train`` / ``rankly recommend``, no model flags), as a user would.
``rankly-matched`` is the same with one flag, ``rankly train --validation`` set to the shape of
the protocol under test (random, last, temporal): the default, which cannot know the protocol,
next to what a team that knows it gets.

    python benchmarks/protocols.py [--variants ml100k,ml100k-pos,mlsmall]
        [--protocols random,loo,temporal] [--seeds 0,1,2]
        [--models pop,...,rankly,rankly-matched] [--no-rankly]
        [--out benchmarks/results/protocols]

Data come from ``$RANKLY_DATASETS`` (default ``../shared/datasets`` next to the repository).
Peer results are cached under ``/tmp/rankly-protocols-cache`` keyed by (variant, protocol, seed,
model, grid, data file, harness version), so ``--models rankly`` re-evaluates only rankly and
reads the peers back. Progress goes to stderr; the Markdown report to stdout and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

K = 10
VERSION = 2  # bump when a split, model or metric changes: it keys the peer cache
REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(tempfile.gettempdir()) / "rankly-protocols-cache"
VARIANTS = ("ml100k", "ml100k-pos", "mlsmall")
PROTOCOLS = ("random", "loo", "temporal")
PEERS = ("pop", "ease", "ease-recency", "itemknn", "als", "bpr")
#: rankly as shipped (no flags), and rankly trained with ``--validation`` set to the shape of
#: the protocol under test: what a team that knows its protocol gets
RANKLY_MODELS = ("rankly", "rankly-matched")
MODELS = (*PEERS, *RANKLY_MODELS)
#: The ``rankly train --validation`` shape of each protocol (for rankly-matched)
MATCHED_VALIDATION = {"random": "random", "loo": "last", "temporal": "temporal"}
DAY = 86400.0

#: Every peer's tuning grid (at most 6 configurations each). ease-recency takes the lambda
#: tuned for plain EASE on the same validation split; None (no decay) is plain EASE at it.
#: The ALS and BPR ranges come from wider searches on validation splits only (ML-100K random
#: and leave-last-one-out, ML-latest-small random, seed 0): regularization 3-10 with alpha 1-2
#: for ALS, learning rate 0.005-0.01 for BPR at 100 epochs were best there.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "ease": [{"lambda": lam} for lam in (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)],
    "ease-recency": [{"half_life_days": h} for h in (7.0, 30.0, 90.0, 365.0, 1095.0, None)],
    "itemknn": [{"k": k} for k in (10, 20, 50, 100, 200, 500)],
    "als": [{"factors": f, "regularization": r, "alpha": a}
            for f in (32, 64, 128) for r, a in ((3.0, 2.0), (10.0, 1.0))],
    "bpr": [{"factors": f, "learning_rate": lr, "regularization": r}
            for f in (64, 128) for lr, r in ((0.005, 0.001), (0.005, 0.01), (0.01, 0.01))],
}
FIXED = {"als": "15 iterations, random_state=0, one thread",
         "bpr": "100 iterations, random_state=0, one thread",
         "itemknn": "cosine on binary interactions, k neighbours kept per item",
         "ease-recency": "interaction weight 2^(-age/half_life), age from the newest train "
                         "timestamp, in fitting and scoring; lambda = the tuned plain-EASE "
                         "lambda x mean(weight^2), at least 1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """Positive interactions, one row per (user, item), with item metadata.

    ``user``/``item`` index ``user_ids``/``item_ids`` (raw ids as strings); ``ts`` is Unix
    seconds; ``item_rank`` orders items by raw id (numeric when ids are), for tie-breaking;
    ``genre`` is each item's primary genre.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_rank: np.ndarray
    genre: np.ndarray
    source: Path
    items_file: Path

    def subset(self, mask: np.ndarray) -> Data:
        return Data(self.user[mask], self.item[mask], self.ts[mask], self.user_ids,
                    self.item_ids, self.item_rank, self.genre, self.source, self.items_file)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def datasets_root() -> Path:
    return Path(os.environ.get("RANKLY_DATASETS") or REPO.parent / "shared" / "datasets")


def variant_files(variant: str, root: Path) -> tuple[Path, Path]:
    """The interactions and item files of ``variant`` under ``root``."""
    if variant.startswith("ml100k"):
        return root / "ml-100k" / "u.data", root / "ml-100k" / "u.item"
    if variant == "mlsmall":
        return root / "ml-latest-small" / "ratings.csv", root / "ml-latest-small" / "movies.csv"
    raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")


def _ml100k_genres(path: Path) -> dict[str, str]:
    """u.item: primary genre = the first flagged of the 19 genre columns (u.genre order)."""
    names = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western")
    out = {}
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            f = line.rstrip("\n").split("|")
            if len(f) < 24:
                continue
            flags = [i for i, v in enumerate(f[5:24]) if v == "1"]
            out[f[0]] = names[flags[0]] if flags else "unknown"
    return out


def _movies_genres(path: Path) -> dict[str, str]:
    """movies.csv: primary genre = the first of the ``|``-separated genres."""
    with open(path, encoding="utf-8", newline="") as fh:
        return {row["movieId"]: row["genres"].split("|")[0] for row in csv.DictReader(fh)}


def load_variant(variant: str, root: Path) -> Data:
    """Load ``variant``: ml100k (every rating positive), ml100k-pos (ratings >= 4), mlsmall."""
    data_file, items_file = variant_files(variant, root)
    if variant.startswith("ml100k"):
        raw = np.loadtxt(data_file, dtype=np.int64, delimiter="\t", ndmin=2)
        users, items, ratings, ts = raw[:, 0], raw[:, 1], raw[:, 2].astype(float), raw[:, 3]
        genres = _ml100k_genres(items_file)
    else:
        raw = np.loadtxt(data_file, dtype=float, delimiter=",", skiprows=1, ndmin=2)
        users, items = raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64)
        ratings, ts = raw[:, 2], raw[:, 3].astype(np.int64)
        genres = _movies_genres(items_file)
    keep = ratings >= 4 if variant == "ml100k-pos" else np.ones(len(users), bool)
    users, items, ts = users[keep], items[keep], ts[keep]
    uid, u = np.unique(users, return_inverse=True)
    iid, i = np.unique(items, return_inverse=True)  # sorted numerically: index = id rank
    # one row per (user, item), the latest; MovieLens has no repeats but stay safe
    order = np.lexsort((-ts, i, u))
    first = np.ones(len(order), bool)
    first[1:] = (u[order][1:] != u[order][:-1]) | (i[order][1:] != i[order][:-1])
    sel = order[first]
    item_ids = iid.astype(str)
    return Data(u[sel].astype(np.int32), i[sel].astype(np.int32), ts[sel].astype(np.int64),
                uid.astype(str), item_ids, np.arange(len(iid)),
                np.array([genres.get(x, "?") for x in item_ids]), data_file, items_file)


# --- splits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A train part and per-user held-out targets (never items the user has in train)."""

    train: Data
    test_users: np.ndarray  # sorted user indices
    targets: list[np.ndarray]  # item indices per test user


def _make_split(data: Data, test_mask: np.ndarray) -> Split:
    train = data.subset(~test_mask)
    tu, ti = data.user[test_mask], data.item[test_mask]
    seen = set(zip(train.user.tolist(), train.item.tolist(), strict=True))
    has_train = np.bincount(train.user, minlength=data.n_users) > 0
    keep = np.array([has_train[a] and (a, b) not in seen
                     for a, b in zip(tu.tolist(), ti.tolist(), strict=True)], bool)
    tu, ti = tu[keep], ti[keep]
    order = np.lexsort((ti, tu))
    tu, ti = tu[order], ti[order]
    users, starts = np.unique(tu, return_index=True)
    return Split(train, users.astype(np.int32), np.split(ti, starts[1:]) if len(tu) else [])


def random_split(data: Data, seed: int, frac: float = 0.2, min_n: int = 5) -> Split:
    """Per user with >= ``min_n`` interactions, hold out round(frac * n) (at least 1) at random."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(data.user, minlength=data.n_users)
    order = np.lexsort((rng.random(len(data.user)), data.user))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - starts[data.user[order]]
    n_test = np.maximum(1, np.floor(frac * counts + 0.5)).astype(np.int64)
    test = (counts[data.user] >= min_n) & (rank < n_test[data.user])
    return _make_split(data, test)


def loo_split(data: Data, min_n: int = 5) -> Split:
    """Hold out each user's latest interaction (ties: the highest item id); users >= ``min_n``."""
    counts = np.bincount(data.user, minlength=data.n_users)
    order = np.lexsort((data.item_rank[data.item], data.ts, data.user))
    last = np.ones(len(order), bool)
    last[:-1] = data.user[order][1:] != data.user[order][:-1]
    test = np.zeros(len(order), bool)
    test[order[last]] = True
    test &= counts[data.user] >= min_n
    return _make_split(data, test)


def temporal_split(data: Data, quantile: float = 0.8) -> Split:
    """Global cut: interactions at or after the ``quantile`` timestamp are test.

    Test users are those with train history; their targets exclude items already in train.
    """
    cut = np.quantile(data.ts, quantile)
    return _make_split(data, data.ts >= cut)


def protocol_split(data: Data, protocol: str, seed: int) -> Split:
    if protocol == "random":
        return random_split(data, seed)
    if protocol == "loo":
        return loo_split(data)
    if protocol == "temporal":
        return temporal_split(data)
    raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")


def validation_split(train: Data, protocol: str, seed: int) -> Split:
    """Carve a validation split from ``train`` in the same shape as ``protocol``."""
    return protocol_split(train, protocol, 1000 + seed)


# --- metrics ---------------------------------------------------------------------------------


def ndcg_at_k(recs: Sequence[int], targets: set[int], k: int = K) -> float:
    """Binary-relevance NDCG@k; the ideal DCG puts min(k, |targets|) hits on top."""
    if not targets:
        return 0.0
    dcg = sum(1.0 / math.log2(r + 2) for r, it in enumerate(recs[:k]) if it in targets)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(targets))))
    return dcg / idcg


def recall_at_k(recs: Sequence[int], targets: set[int], k: int = K) -> float:
    """Hits in the top k over min(k, |targets|)."""
    if not targets:
        return 0.0
    return sum(1 for it in recs[:k] if it in targets) / min(k, len(targets))


def intra_list_diversity(recs: Sequence[int], genre: np.ndarray) -> float:
    """Share of pairs in the list whose primary genres differ (0 for lists shorter than 2)."""
    g = [genre[i] for i in recs]
    pairs = len(g) * (len(g) - 1) / 2
    if pairs == 0:
        return 0.0
    same = sum(c * (c - 1) / 2 for c in (g.count(x) for x in set(g)))
    return 1.0 - same / pairs


def score_lists(lists: Sequence[Sequence[int]], targets: Sequence[np.ndarray],
                catalog_size: int, genre: np.ndarray) -> dict[str, float]:
    """Mean NDCG@10, Recall@10, genre ILD over users, and catalog coverage@10.

    Coverage = distinct recommended items / ``catalog_size`` (items in the train part).
    """
    n = len(lists)
    if n == 0:
        return {"ndcg": 0.0, "recall": 0.0, "coverage": 0.0, "diversity": 0.0, "users": 0}
    sets = [set(t.tolist()) for t in targets]
    distinct = {i for recs in lists for i in recs[:K] if i >= 0}
    return {
        "ndcg": float(np.mean([ndcg_at_k(r, s) for r, s in zip(lists, sets, strict=True)])),
        "recall": float(np.mean([recall_at_k(r, s) for r, s in zip(lists, sets, strict=True)])),
        "coverage": len(distinct) / max(catalog_size, 1),
        "diversity": float(np.mean([intra_list_diversity(r[:K], genre) for r in lists])),
        "users": n,
    }


# --- peer models -----------------------------------------------------------------------------


def interaction_matrix(train: Data, values: np.ndarray | None = None) -> sp.csr_matrix:
    v = np.ones(len(train.user), np.float32) if values is None else values.astype(np.float32)
    return sp.csr_matrix((v, (train.user, train.item)), shape=(train.n_users, train.n_items))


def top_k(scores: np.ndarray, seen: sp.csr_matrix, allowed: np.ndarray, k: int = K) -> np.ndarray:
    """Top-k item indices per row, excluding ``seen`` items and items not ``allowed``.

    Ordered by score descending, ties by lower item index; rows with fewer than k eligible items
    are padded with -1.
    """
    s = np.array(scores, dtype=np.float64, copy=True)
    s[:, ~allowed] = -np.inf
    rows, cols = seen.nonzero()
    s[rows, cols] = -np.inf
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else \
        np.tile(np.arange(s.shape[1]), (s.shape[0], 1))
    ps = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -ps), axis=1)
    out = np.take_along_axis(part, order, axis=1)
    out[~np.isfinite(np.take_along_axis(ps, order, axis=1))] = -1
    return out


def ease_scores(x: sp.csr_matrix, xq: sp.csr_matrix, lambdas: Sequence[float]
                ) -> Iterator[np.ndarray]:
    """Yield EASE scores ``xq @ B`` for each lambda (B = I - P diag(1/diag P), P = (X'X + lI)^-1).

    With fewer users than items (MovieLens) the dual form is exact and cheap:
    P = (I - X'(XX' + lI)^-1 X) / l, so every lambda costs one m x m inverse, not n x n.
    """
    m, n = x.shape
    if m < n:
        a = (x @ x.T).toarray().astype(np.float64)
        xqxt = (xq @ x.T).toarray().astype(np.float64)
        xq_dense = xq.toarray().astype(np.float64)
        for lam in lambdas:
            kinv = np.linalg.inv(a + lam * np.eye(m))
            mk = np.asarray((x.T @ kinv).T)  # K X, m x n
            diag_p = (1.0 - np.asarray(x.multiply(mk).sum(axis=0)).ravel()) / lam
            xq_p = (xq_dense - xqxt @ mk) / lam
            yield (xq_dense - xq_p / diag_p).astype(np.float32)
    else:
        g = (x.T @ x).toarray().astype(np.float64)
        xq_dense = xq.toarray().astype(np.float64)
        for lam in lambdas:
            p = np.linalg.inv(g + lam * np.eye(n))
            b = -p / np.diag(p)
            np.fill_diagonal(b, 0.0)
            yield (xq_dense @ b).astype(np.float32)


def recency_weights(train: Data, half_life_days: float | None) -> np.ndarray:
    """2^(-age / half-life) per interaction, age from the newest train timestamp (None: 1)."""
    if half_life_days is None:
        return np.ones(len(train.ts))
    age = (train.ts.max() - train.ts) / DAY
    return np.exp2(-age / half_life_days)


def recency_lambda(weights: np.ndarray, lam: float) -> float:
    """Scale the plain-EASE lambda by the mean squared weight (at least 1).

    Decay shrinks the Gram matrix by about mean(w^2); scaling lambda alike keeps the same
    regularization relative to the data (on ML-100K leave-last-one-out validation it lands
    within one grid step of the best lambda for each half-life).
    """
    return max(lam * float(np.mean(weights ** 2)), 1.0)


def itemknn_neighbours(x: sp.csr_matrix, k_max: int, block: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine item-item similarities: per item (column), its ``k_max`` nearest other items.

    Returns (indices, sims), both k_max x n, sorted by similarity descending per column.
    """
    xb = x.copy()
    xb.data[:] = 1.0
    xc = xb.tocsc()
    norms = np.sqrt(np.asarray(xb.multiply(xb).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    n = x.shape[1]
    k_max = min(k_max, n - 1)
    idx = np.empty((k_max, n), np.int32)
    sim = np.empty((k_max, n), np.float32)
    xt = xc.T.tocsr()
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        c = (xt @ xc[:, lo:hi]).toarray().astype(np.float32)
        c /= norms[:, None]
        c /= norms[None, lo:hi]
        c[np.arange(lo, hi), np.arange(hi - lo)] = -np.inf
        part = np.argpartition(-c, k_max - 1, axis=0)[:k_max]
        vals = np.take_along_axis(c, part, axis=0)
        order = np.argsort(-vals, axis=0, kind="stable")
        idx[:, lo:hi] = np.take_along_axis(part, order, axis=0)
        sim[:, lo:hi] = np.take_along_axis(vals, order, axis=0)
    sim[~np.isfinite(sim)] = 0.0
    return idx, sim


def itemknn_scores(xq: sp.csr_matrix, idx: np.ndarray, sim: np.ndarray, k: int) -> np.ndarray:
    n = idx.shape[1]
    k = min(k, idx.shape[0])
    cols = np.tile(np.arange(n), k)
    s = sp.csr_matrix((sim[:k].ravel(), (idx[:k].ravel(), cols)), shape=(n, n))
    xb = xq.copy()
    xb.data[:] = 1.0
    return np.asarray((xb @ s).toarray(), dtype=np.float32)


def factor_scores(model_name: str, config: dict[str, Any], x: sp.csr_matrix,
                  query: np.ndarray) -> np.ndarray:
    """Fit implicit's ALS or BPR on ``x`` (one thread) and score ``query`` user rows."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        if model_name == "als":
            model: Any = AlternatingLeastSquares(
                factors=config["factors"], regularization=config["regularization"],
                alpha=config["alpha"], iterations=15, random_state=0, num_threads=1)
        else:
            model = BayesianPersonalizedRanking(
                factors=config["factors"], learning_rate=config["learning_rate"],
                regularization=config["regularization"], iterations=100, random_state=0,
                num_threads=1)
        model.fit(x, show_progress=False)
        return np.asarray(model.user_factors[query] @ model.item_factors.T, dtype=np.float32)


def peer_score_fn(model: str, train: Data, query: np.ndarray, fixed: dict[str, Any]
                  ) -> Callable[[list[dict[str, Any]]], Iterator[np.ndarray]]:
    """Return f(configs) yielding a users x items score matrix for ``query`` per config.

    ``fixed`` carries values tuned elsewhere (ease-recency reads ``lambda``). Configurations
    that can share work (EASE lambdas, kNN neighbour lists) share it.
    """
    x = interaction_matrix(train)

    def run(configs: list[dict[str, Any]]) -> Iterator[np.ndarray]:
        if model == "pop":
            counts = np.bincount(train.item, minlength=train.n_items).astype(np.float32)
            for _ in configs:
                yield np.tile(counts, (len(query), 1))
        elif model == "ease":
            yield from ease_scores(x, x[query], [c["lambda"] for c in configs])
        elif model == "ease-recency":
            for c in configs:
                w = recency_weights(train, c["half_life_days"])
                xw = interaction_matrix(train, w)
                yield from ease_scores(xw, xw[query], [recency_lambda(w, fixed["lambda"])])
        elif model == "itemknn":
            idx, sim = itemknn_neighbours(x, max(c["k"] for c in configs))
            for c in configs:
                yield itemknn_scores(x[query], idx, sim, c["k"])
        elif model in ("als", "bpr"):
            for c in configs:
                yield factor_scores(model, c, x, query)
        else:
            raise ValueError(f"unknown peer {model!r}")

    return run


def recommend_peer(model: str, configs: list[dict[str, Any]], split: Split,
                   fixed: dict[str, Any]) -> Iterator[list[list[int]]]:
    """Yield top-10 lists (train-seen items excluded) for the split's test users per config."""
    train = split.train
    x = interaction_matrix(train)
    allowed = np.bincount(train.item, minlength=train.n_items) > 0
    seen = x[split.test_users]
    for scores in peer_score_fn(model, train, split.test_users, fixed)(configs):
        top = top_k(scores, seen, allowed)
        yield [[int(i) for i in row if i >= 0] for row in top]


def catalog_size(train: Data) -> int:
    return int(np.count_nonzero(np.bincount(train.item, minlength=train.n_items)))


def tune_and_test(model: str, split: Split, val: Split, fixed: dict[str, Any]
                  ) -> dict[str, Any]:
    """Pick the config with the best validation NDCG@10, refit on the whole train, test it."""
    grid = GRIDS[model]
    t0 = time.perf_counter()
    val_ndcg = []
    for lists in recommend_peer(model, grid, val, fixed):
        val_ndcg.append(score_lists(lists, val.targets, catalog_size(val.train),
                                    val.train.genre)["ndcg"])
    best = int(np.argmax(val_ndcg))
    t1 = time.perf_counter()
    lists = next(recommend_peer(model, [grid[best]], split, fixed))
    t2 = time.perf_counter()
    metrics = score_lists(lists, split.targets, catalog_size(split.train), split.train.genre)
    config = {**grid[best], **fixed}
    if model == "ease-recency":
        w = recency_weights(split.train, config["half_life_days"])
        config["lambda_scaled"] = round(recency_lambda(w, config["lambda"]), 2)
    return {**metrics, "config": config, "val_ndcg": val_ndcg,
            "tune_seconds": round(t1 - t0, 2), "fit_seconds": round(t2 - t1, 2)}


# --- the served default, through the CLI -----------------------------------------------------


def rankly_command() -> list[str]:
    exe = Path(sys.executable).with_name("rankly")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("rankly")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from rankly.engine.cli import main; "
            "sys.exit(main())"]


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def evaluate_rankly(split: Split, timeout: float = 3600.0, validation: str | None = None,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train rankly on the train part (CSV ``user,item,timestamp`` + the dataset's item file)
    with no model flags (``validation``: with ``--validation`` set to it; ``env``: variables
    added to both commands' environment), ask ``rankly recommend --n 10`` for the test users,
    score the lists. ``blend`` holds the trained blend's validation NDCG@10 per shape, chosen
    and plain, as its manifest records them."""
    train = split.train
    env = {**os.environ, **(env or {})}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    cmd = rankly_command()
    commit = _commit()
    with tempfile.TemporaryDirectory(prefix="rankly-protocols-") as tmp:
        csv_path, users_path, art = Path(tmp) / "train.csv", Path(tmp) / "users.txt", \
            Path(tmp) / "artifacts"
        with open(csv_path, "w", encoding="utf-8", newline="") as fh:
            fh.write("user,item,timestamp\n")
            order = np.argsort(train.ts, kind="stable")
            for u, i, t in zip(train.user_ids[train.user[order]], train.item_ids[train.item[order]],
                               train.ts[order].tolist(), strict=True):
                fh.write(f"{u},{i},{t}\n")
        users_path.write_text("".join(f"{train.user_ids[u]}\n" for u in split.test_users))
        train_cmd = [*cmd, "train", "--interactions", str(csv_path), "--format", "events-csv",
                     "--items", str(train.items_file), "--out", str(art),
                     *(["--validation", validation] if validation else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(train_cmd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        train_seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": f"rankly train exited {proc.returncode}: {_tail(proc.stderr)}",
                    "commit": commit, "train_seconds": round(train_seconds, 2)}
        rec_cmd = [*cmd, "recommend", "--artifacts", str(art), "--users", str(users_path),
                   "--n", str(K)]
        t1 = time.perf_counter()
        rec = subprocess.run(rec_cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rec_seconds = time.perf_counter() - t1
        if rec.returncode != 0:
            return {"error": f"rankly recommend exited {rec.returncode}: {_tail(rec.stderr)}",
                    "commit": commit, "train_seconds": round(train_seconds, 2)}
        blend = json.loads((art / "manifest.json").read_text())["parts"].get("blend", {})
    item_index = {s: j for j, s in enumerate(train.item_ids.tolist())}
    by_user: dict[str, dict[str, Any]] = {}
    for line in rec.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            by_user[str(row["user_id"])] = row
    x = interaction_matrix(train)
    lists, missing, fallbacks, seen_leaks, unknown = [], 0, 0, 0, 0
    for u in split.test_users:
        row = by_user.get(str(train.user_ids[u]))
        if row is None:
            missing += 1
            lists.append([])
            continue
        fallbacks += bool(row.get("fallback"))
        seen = set(x[u].indices.tolist())
        items = []
        for s in row["items"][:K]:
            j = item_index.get(str(s), -1)
            unknown += j < 0
            seen_leaks += j in seen
            items.append(j)
        lists.append(items)
    metrics = score_lists(lists, split.targets, catalog_size(train), _with_unknown(train.genre))
    return {**metrics, "commit": commit, "train_seconds": round(train_seconds, 2),
            "recommend_seconds": round(rec_seconds, 2), "missing_users": missing,
            "fallback_lines": fallbacks, "seen_items_returned": seen_leaks,
            "unknown_items_returned": unknown, "train_log": _tail(proc.stdout + proc.stderr, 12),
            "blend": {k: blend.get("metrics", {}).get(k) for k in ("validation_ndcg",
                                                                    "plain_ndcg")}}


def _with_unknown(genre: np.ndarray) -> np.ndarray:
    # index -1 (an item id rankly returned that the data do not have) reads this "?" genre
    return np.append(genre, "?")


# --- cache, cells, report --------------------------------------------------------------------


def cache_path(variant: str, protocol: str, seed: int, model: str, data: Data) -> Path:
    """The peer cache entry of a cell: keyed by the data file's content (not its path or
    mtime, which a fresh copy of the same data changes), the grid and :data:`VERSION`."""
    key = json.dumps([VERSION, variant, protocol, seed, model, GRIDS[model],
                      GRIDS["ease"] if model == "ease-recency" else None,
                      _content_digest(data.source)], default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return CACHE_DIR / f"{variant}-{protocol}-{seed}-{model}-{digest}.json"


@functools.cache
def _content_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cell(variant: str, protocol: str, seed: int, data: Data, models: Sequence[str],
             peers_from_cache: Sequence[str]) -> dict[str, Any]:
    """Evaluate ``models`` (and cached ``peers_from_cache``) on one split of ``data``."""
    t0 = time.perf_counter()
    split = protocol_split(data, protocol, seed)
    val = validation_split(split.train, protocol, seed)
    cell: dict[str, Any] = {
        "variant": variant, "protocol": protocol, "seed": seed if protocol == "random" else None,
        "train_interactions": len(split.train.user), "catalog_items": catalog_size(split.train),
        "test_users": len(split.test_users),
        "test_targets": int(sum(len(t) for t in split.targets)),
        "val_users": len(val.test_users), "models": {},
    }
    log(f"{variant}/{protocol}/seed {seed}: {cell['train_interactions']} train interactions, "
        f"{cell['test_users']} test users, {cell['val_users']} validation users "
        f"({time.perf_counter() - t0:.1f} s)")
    fixed: dict[str, dict[str, Any]] = {}
    order = [m for m in PEERS if m in models or m in peers_from_cache]
    if "ease-recency" in order and "ease" not in order:
        order.insert(order.index("ease-recency"), "ease")
    for model in order:
        path = cache_path(variant, protocol, seed, model, data)
        if path.exists():
            result = json.loads(path.read_text())
            result["cached"] = True
        elif model in models or (model == "ease" and "ease-recency" in models):
            t = time.perf_counter()
            result = tune_and_test(model, split, val, fixed.get(model, {}))
            result["seconds"] = round(time.perf_counter() - t, 2)
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
            result["cached"] = False
        else:
            log(f"  {model}: not in the cache, skipped")
            continue
        if model == "ease":
            fixed["ease-recency"] = {"lambda": result["config"]["lambda"]}
        if model in models or model in peers_from_cache:
            cell["models"][model] = result
            how = "cached" if result["cached"] else f"{result['seconds']} s"
            log(f"  {model}: NDCG@10 {result['ndcg']:.4f} config {result['config']} ({how})")
    for name in RANKLY_MODELS:
        if name not in models:
            continue
        validation = MATCHED_VALIDATION[protocol] if name == "rankly-matched" else None
        log(f"  {name}: training on {cell['train_interactions']} interactions"
            + (f" (--validation {validation})" if validation else "") + " ...")
        try:
            result = evaluate_rankly(split, validation=validation)
        except (OSError, subprocess.SubprocessError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        cell["models"][name] = result
        if "error" in result:
            log(f"  {name}: ERROR {result['error']}")
        else:
            log(f"  {name}: NDCG@10 {result['ndcg']:.4f} (train {result['train_seconds']} s)")
    cell["seconds"] = round(time.perf_counter() - t0, 2)
    return cell


METRICS = ("ndcg", "recall", "coverage", "diversity")


def mean_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over the random protocol's seeds, per model and metric."""
    out: dict[str, Any] = {"variant": cells[0]["variant"], "protocol": "random",
                           "seed": "mean", "test_users": cells[0]["test_users"], "models": {}}
    names = {m for c in cells for m in c["models"]}
    for m in names:
        rows = [c["models"].get(m, {}) for c in cells]
        if all("ndcg" in r for r in rows):
            out["models"][m] = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
            if m in RANKLY_MODELS:
                out["models"][m]["train_seconds"] = float(np.mean([r["train_seconds"]
                                                                   for r in rows]))
        else:
            out["models"][m] = {"error": next((r["error"] for r in rows if "error" in r),
                                              "missing seed")}
    return out


def add_ratios(row: dict[str, Any]) -> None:
    peers = {m: r for m, r in row["models"].items() if m in PEERS and "ndcg" in r}
    if not peers:
        return
    best = max(peers, key=lambda m: peers[m]["ndcg"])
    row["best_peer"] = best
    r = row["models"].get("rankly", {})
    if "ndcg" in r and peers[best]["ndcg"] > 0:
        row["ratio"] = r["ndcg"] / peers[best]["ndcg"]
        row["coverage_ratio"] = r["coverage"] / max(peers[best]["coverage"], 1e-12)
    r = row["models"].get("rankly-matched", {})
    if "ndcg" in r and peers[best]["ndcg"] > 0:
        row["matched_ratio"] = r["ndcg"] / peers[best]["ndcg"]


def report_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells in display order, with a mean row after each variant's random seeds."""
    rows: list[dict[str, Any]] = []
    for variant in dict.fromkeys(c["variant"] for c in cells):
        for protocol in PROTOCOLS:
            group = [c for c in cells if c["variant"] == variant and c["protocol"] == protocol]
            rows.extend(group)
            if protocol == "random" and len(group) > 1:
                rows.append(mean_cells(group))
    for row in rows:
        add_ratios(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Min and mean rankly/best-peer NDCG over (variant, protocol) cells (random: seed mean)."""
    def counted(r: dict[str, Any]) -> bool:
        seeds = [x for x in rows if x["variant"] == r["variant"] and x["protocol"] == "random"]
        return r["protocol"] != "random" or r["seed"] == "mean" or len(seeds) == 1

    cells = [r for r in rows if counted(r)]
    ratios = [r["ratio"] for r in cells if "ratio" in r]
    matched = [r["matched_ratio"] for r in cells if "matched_ratio" in r]
    out: dict[str, Any] = {"cells": len(cells), "cells_with_ratio": len(ratios)}
    if ratios:
        out.update(min_ratio=min(ratios), mean_ratio=float(np.mean(ratios)),
                   min_coverage_ratio=min(r["coverage_ratio"] for r in cells if "ratio" in r))
    if matched:
        out.update(cells_with_matched_ratio=len(matched), min_matched_ratio=min(matched),
                   mean_matched_ratio=float(np.mean(matched)))
    return out


def _label(row: dict[str, Any]) -> str:
    if row["protocol"] != "random":
        return row["protocol"]
    return "random mean" if row["seed"] == "mean" else f"random s{row['seed']}"


def markdown(rows: list[dict[str, Any]], models: Sequence[str], summ: dict[str, Any],
             meta: dict[str, Any]) -> str:
    names = [m for m in MODELS if any(m in r["models"] for r in rows) and
             (m in models or m in PEERS)]
    peer_runs = [x for r in rows if r.get("seed") != "mean"
                 for m, x in r["models"].items() if m in PEERS]
    cached = sum(1 for x in peer_runs if x.get("cached"))
    commits = sorted({x["commit"] for r in rows for m, x in r["models"].items()
                      if m in RANKLY_MODELS and "commit" in x})
    out = [f"# Evaluation report ({meta['started']})", "",
           f"Command: `{meta['command']}`; wall time {meta['seconds']:.0f} s on "
           f"{meta['machine']} (load average at the end {meta['load_average_end'][0]:.1f}).",
           f"rankly commit(s) evaluated: {', '.join(f'`{c}`' for c in commits) or '-'}.",
           f"Peers: tuning and refit took {sum(x.get('seconds', 0) for x in peer_runs):.0f} s "
           f"in all when computed; {cached} of {len(peer_runs)} peer results were read from "
           f"the cache ({CACHE_DIR}).", ""]
    titles = {"ndcg": "NDCG@10", "recall": "Recall@10", "coverage": "Catalog coverage@10",
              "diversity": "Genre intra-list diversity@10 (share of pairs with different "
                           "primary genres)"}
    for metric in METRICS:
        out += [f"## {titles[metric]}", ""]
        head = ["variant", "protocol", *names]
        if metric == "ndcg":
            head += ["best peer", "rankly / best",
                     *(["matched / best"] if "rankly-matched" in names else []), "test users"]
        elif metric == "coverage":
            head += ["rankly / best-NDCG peer"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            vals = []
            for m in names:
                x = r["models"].get(m)
                vals.append("-" if x is None else "error" if "error" in x else f"{x[metric]:.4f}")
            line = [r["variant"], _label(r), *vals]
            if metric == "ndcg":
                line += [r.get("best_peer", "-"),
                         f"{r['ratio']:.2f}x" if "ratio" in r else "-",
                         *([f"{r['matched_ratio']:.2f}x" if "matched_ratio" in r else "-"]
                           if "rankly-matched" in names else []),
                         str(r["test_users"])]
            elif metric == "coverage":
                line += [f"{r['coverage_ratio']:.2f}x" if "coverage_ratio" in r else "-"]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    if "min_ratio" in summ:
        out += [f"**Summary** over {summ['cells_with_ratio']} (variant, protocol) cells "
                f"(random = mean of seeds): rankly / best peer NDCG@10 min "
                f"{summ['min_ratio']:.2f}x, mean {summ['mean_ratio']:.2f}x; coverage vs the "
                f"best peer's, min {summ['min_coverage_ratio']:.2f}x.", ""]
    if "min_matched_ratio" in summ:
        out += [f"rankly-matched (`rankly train --validation` set to the protocol's shape: "
                f"{', '.join(f'{p} -> {v}' for p, v in MATCHED_VALIDATION.items())}) / best "
                f"peer NDCG@10 over {summ['cells_with_matched_ratio']} cells: min "
                f"{summ['min_matched_ratio']:.2f}x, mean {summ['mean_matched_ratio']:.2f}x.", ""]
    out += ["## Chosen configurations and times", "",
            "| variant | protocol | model | chosen config | tune s | refit s | rankly train s |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("seed") == "mean":
            continue
        for m, x in r["models"].items():
            if m in RANKLY_MODELS:
                extra = x.get("error", "")[:120] if "error" in x else (
                    f"fallback lines {x['fallback_lines']}, seen items returned "
                    f"{x['seen_items_returned']}")
                out.append(f"| {r['variant']} | {_label(r)} | {m} | {extra} | | | "
                           f"{x.get('train_seconds', '-')} |")
            else:
                out.append(f"| {r['variant']} | {_label(r)} | {m} | {_fmt_config(x['config'])}"
                           f" | {x['tune_seconds']} | {x['fit_seconds']} | |")
    out += ["", "## Grids (same budget: at most 6 configurations per peer)", ""]
    for m in PEERS:
        out.append(f"- `{m}`: {'; '.join(f'({_fmt_config(c)})' for c in GRIDS[m])}"
                   + (f"; {FIXED[m]}" if m in FIXED else ""))
    out += ["", "Splits: random = per user with >= 5 interactions, round(20%) held out at random "
            "(seed s); loo = each such user's latest interaction (ties: highest item id); "
            "temporal = all interactions at or after the 80% timestamp quantile, for users with "
            "train history. Validation is carved from the train part in the same shape "
            "(random with seed 1000+s); the best validation NDCG@10 picks the configuration, "
            "which is then refit on the whole train part. Candidates are the items of the "
            "train part minus the user's train items. Coverage = distinct recommended items / "
            "items in the train part.", ""]
    return "\n".join(out)


def _fmt_config(c: dict[str, Any]) -> str:
    if not c:
        return "-"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items())


def rankly_environment() -> list[str]:
    """The ``RANKLY_*`` settings in this process's environment as ``KEY='value'`` words (they
    reach every ``rankly`` command, so a report names them in its command line)."""
    return [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
            if k.startswith("RANKLY_")]


def _commit() -> str:
    """HEAD, with "+dirty" when tracked files differ: others may change rankly mid-run."""
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _csv_list(text: str, allowed: Sequence[str]) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise SystemExit(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random protocol")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="models to run; peers left out are read from the cache if there")
    parser.add_argument("--no-rankly", action="store_true", help="run only the peers")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "protocols"),
                        help="output path without extension (.json and .md are written)")
    args = parser.parse_args(argv)
    variants = _csv_list(args.variants, VARIANTS)
    protocols = _csv_list(args.protocols, PROTOCOLS)
    models = [m for m in _csv_list(args.models, MODELS)
              if not (args.no_rankly and m in RANKLY_MODELS)]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cached_peers = [m for m in PEERS if m not in models]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    root = datasets_root()
    cells = []
    for variant in variants:
        data_file, items_file = variant_files(variant, root)
        if not (data_file.exists() and items_file.exists()):
            log(f"{variant}: skipped, {data_file} or {items_file} is missing "
                f"(set RANKLY_DATASETS to the folder holding ml-100k/ and ml-latest-small/)")
            continue
        data = load_variant(variant, root)
        log(f"{variant}: {len(data.user)} positives, {data.n_users} users, "
            f"{data.n_items} items")
        for protocol in protocols:
            for seed in seeds if protocol == "random" else [0]:
                cells.append(run_cell(variant, protocol, seed, data, models, cached_peers))
    rows = report_rows(cells)
    summ = summary(rows)
    meta = {"command": " ".join([*rankly_environment(), "python", "benchmarks/protocols.py",
                                 *(argv or sys.argv[1:])]),
            "started": started, "seconds": time.perf_counter() - t0,
            "commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "load_average_end": os.getloadavg(), "python": platform.python_version(),
            "numpy": np.__version__, "datasets": str(root)}
    try:
        import implicit
        meta["implicit"] = implicit.__version__
    except ImportError:
        pass
    text = markdown(rows, models, summ, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "grids": GRIDS, "fixed": FIXED, "summary": summ, "rows": rows},
        indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    log(f"done in {meta['seconds']:.0f} s; wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
