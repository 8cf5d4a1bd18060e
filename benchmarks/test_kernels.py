"""Benchmarks of the rankly._fast kernels against their NumPy twins and peers.

Run (about 3 minutes):

    pytest benchmarks/test_kernels.py --benchmark-json benchmarks/results/kernels.json

then print the ratio table that benchmarks/README.md quotes:

    python benchmarks/test_kernels.py benchmarks/results/kernels.json

Every group times one problem size, cycling through ``POOL`` distinct inputs (see ``POOL``);
names say who is timed:
`ours` (compiled kernel, one thread unless noted), `numpy` (argpartition + stable sort of the
k, or X @ u first), `reference` (the lexsort twin in rankly._fast.reference), `floor` (np.max,
the cost of reading the scores once; for score_topk, of reading the item factors once),
`implicit` (implicit.cpu.topk.topk, one thread; for plain top-k it scores N x 1 items against
a 1 x 1 query), `faiss` (faiss-cpu IndexFlatIP.search with `faiss.omp_set_num_threads` 1 or 2,
index built outside the timing; its ids are checked against ours wherever the exact scores
are separated).

The faiss-only run quoted in benchmarks/README.md:

    OPENBLAS_NUM_THREADS=1 pytest benchmarks/test_kernels.py -k score_topk \
        --benchmark-json benchmarks/results/kernels-faiss.json
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys

import numpy as np
import pytest

from rankly._fast import reference

fast_topk = importlib.import_module("rankly._fast.topk")
fast_diversity = importlib.import_module("rankly._fast.diversity")

try:
    from implicit.cpu.topk import topk as implicit_topk
except ImportError:  # pragma: no cover - optional peer
    implicit_topk = None
try:
    import faiss
except ImportError:  # pragma: no cover - optional peer
    faiss = None

SIZES = [1_000, 10_000, 100_000, 1_000_000]
KS = [10, 100]
SEED = 20240601


def numpy_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The usual NumPy top-k: argpartition, then a stable sort of the k by score."""
    if k >= scores.shape[0]:
        top = np.arange(scores.shape[0])
    else:
        top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top, scores[top]


def numpy_topk_batch(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(picked, order, axis=1)


def numpy_diverse(scores, categories, k, cap, fill=True):
    """NumPy "top-M then greedy walk": M grows x4 until the walk keeps k (or covers all)."""
    n = scores.shape[0]
    m = min(n, 4 * k + 64)
    while True:
        top, _ = numpy_topk(scores, m)
        counts: dict[int, int] = {}
        kept, skipped = [], []
        for position, item in enumerate(top.tolist()):
            category = int(categories[item])
            if category < 0 or counts.get(category, 0) < cap:
                counts[category] = counts.get(category, 0) + 1
                kept.append(position)
                if len(kept) == k:
                    break
            else:
                skipped.append(position)
        if len(kept) == k or m == n:
            break
        m = min(n, 4 * m)
    within = np.ones(len(kept), dtype=bool)
    if fill and len(kept) < k:
        extra = skipped[: k - len(kept)]
        positions = np.array(kept + extra)
        within = np.concatenate([within, np.zeros(len(extra), dtype=bool)])
        order = np.argsort(positions, kind="stable")
        positions, within = positions[order], within[order]
    else:
        positions = np.array(kept, dtype=np.int64)
    picked = top[positions]
    return picked, scores[picked], within


def assert_same_topk(items, queries, got_ids, want_ids, k):
    """`got_ids` equals `want_ids` at every rank whose score is separated from its neighbours.

    Scores come from one BLAS product; ranks closer than a relative 1e-4 to the rank above or
    below (including rank k + 1) may legitimately swap, so there only the scores must agree.
    """
    scores = np.atleast_2d(queries @ items.T)
    got_ids, want_ids = np.atleast_2d(got_ids), np.atleast_2d(want_ids)
    for row, got, want in zip(scores, got_ids, want_ids, strict=True):
        _, best = numpy_topk(row, k + 1)
        tol = 1e-4 * max(1.0, float(np.abs(best).max()))
        gaps = -np.diff(best)
        above = np.concatenate([[np.inf], gaps[: k - 1]])
        separated = (above > tol) & (gaps[:k] > tol)
        np.testing.assert_array_equal(got[separated], want[separated])
        np.testing.assert_allclose(row[got], best[:k], rtol=0, atol=tol)
        np.testing.assert_allclose(row[want], best[:k], rtol=0, atol=tol)


def faiss_index(items: np.ndarray, threads: int):
    """A faiss IndexFlatIP over `items`, with faiss's OpenMP pool set to `threads`."""
    if faiss is None:
        pytest.skip("faiss not installed (pip install faiss-cpu)")
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index


def random_scores(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(n).astype(np.float32)


#: Distinct inputs a timed call cycles through. Timing one input over and over lets the
#: branch predictor learn it: for k=100 that made a selection 2-3x faster than on fresh data
#: (n=1e3-1e5, measured), which flattered branchy code such as a heap. Every contender of a
#: group gets the same pool, in the same order.
POOL = 32


def score_pool(n: int) -> list[np.ndarray]:
    """``POOL`` distinct score vectors; the first is ``random_scores(n)``."""
    rng = np.random.default_rng(SEED + 7)
    return [random_scores(n)] + [rng.standard_normal(n).astype(np.float32)
                                 for _ in range(POOL - 1)]


def cycling(func, pool, *rest):
    """A zero-argument call of ``func(next input of pool, *rest)``."""
    inputs = itertools.cycle(pool)
    return lambda: func(next(inputs), *rest)


def run(benchmark, group: str, name: str, func, *args):
    benchmark.group = group
    benchmark.name = name
    benchmark.extra_info["contender"] = name.split("[")[0]
    return benchmark(func, *args)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("who", ["ours", "numpy", "reference", "floor", "implicit"])
def test_topk(benchmark, who, n, k):
    pool = score_pool(n)
    scores = pool[0]
    group = f"topk n={n:.0e} k={k}"
    if who == "ours":
        run(benchmark, group, who, cycling(fast_topk.topk, pool, k))
        for x in pool[:4]:
            np.testing.assert_array_equal(fast_topk.topk(x, k)[0], numpy_topk(x, k)[0])
    elif who == "numpy":
        run(benchmark, group, who, cycling(numpy_topk, pool, k))
    elif who == "reference":
        if n > 100_000:
            pytest.skip("lexsort twin at 1e6 only adds run time")
        run(benchmark, group, who, cycling(reference.topk, pool, k))
    elif who == "floor":
        run(benchmark, group, who, cycling(np.max, pool))
    else:
        if implicit_topk is None:
            pytest.skip("implicit not installed")
        query = np.ones((1, 1), dtype=np.float32)
        items = [x[:, None].copy() for x in pool]
        run(benchmark, group, who,
            cycling(implicit_topk, items, query, k, None, None, None, 1))
        ids, _ = implicit_topk(items[0], query, k, None, None, None, 1)
        np.testing.assert_array_equal(ids[0], numpy_topk(scores, k)[0])


@pytest.mark.parametrize("who", ["ours", "numpy"])
def test_topk_ascending_scores(benchmark, who):
    """The adversarial order for a heap: every score beats the current k-th best."""
    scores = np.sort(random_scores(1_000_000))
    func = fast_topk.topk if who == "ours" else numpy_topk
    run(benchmark, "topk ascending n=1e+06 k=100", who, func, scores, 100)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("who", ["ours 1 thread", "ours 2 threads", "numpy", "reference"])
def test_topk_batch(benchmark, who, n, k):
    scores = np.random.default_rng(SEED).standard_normal((256, n)).astype(np.float32)
    group = f"topk_batch b=256 n={n:.0e} k={k}"
    if who.startswith("ours"):
        threads = 1 if who == "ours 1 thread" else 2
        _, values = run(
            benchmark, group, who, lambda: fast_topk.topk_batch(scores, k, threads=threads)
        )
        # Ids may differ on exact float ties (argpartition does not prefer the lower index).
        np.testing.assert_array_equal(values, numpy_topk_batch(scores, k)[1])
    elif who == "numpy":
        run(benchmark, group, who, numpy_topk_batch, scores, k)
    else:
        if n > 10_000:
            pytest.skip("lexsort twin only adds run time at this size")
        run(benchmark, group, who, reference.topk_batch, scores, k)


@pytest.mark.parametrize(
    "n,d,k",
    [(1_000, 64, 10), (10_000, 64, 10), (10_000, 64, 100), (100_000, 32, 10),
     (100_000, 64, 10), (100_000, 64, 100), (100_000, 128, 10), (1_000_000, 32, 10),
     (1_000_000, 64, 10), (1_000_000, 64, 100)],
)
@pytest.mark.parametrize(
    "who", ["ours", "numpy", "floor", "implicit", "faiss 1 thread", "faiss 2 threads"]
)
def test_score_topk(benchmark, who, n, d, k):
    rng = np.random.default_rng(SEED)
    items = rng.standard_normal((n, d)).astype(np.float32)
    users = rng.standard_normal((POOL, d)).astype(np.float32)  # one user per call, cycled
    user = users[0]
    group = f"score_topk n={n:.0e} d={d} k={k}"
    if who == "ours":
        run(benchmark, group, who, cycling(lambda u: fast_topk.score_topk(items, u, k), users))
        ids, _ = fast_topk.score_topk(items, user, k)
        np.testing.assert_array_equal(ids, numpy_topk(items @ user, k)[0])
    elif who == "numpy":
        run(benchmark, group, who, cycling(lambda u: numpy_topk(items @ u, k), users))
    elif who == "floor":
        run(benchmark, group, who, np.max, items)  # one read of the item factors
    elif who == "implicit":
        if implicit_topk is None:
            pytest.skip("implicit not installed")
        queries = [u[None, :].copy() for u in users]
        run(benchmark, group, who,
            cycling(lambda q: implicit_topk(items, q, k, None, None, None, 1), queries))
    else:
        index = faiss_index(items, 1 if who == "faiss 1 thread" else 2)
        queries = [u[None, :].copy() for u in users]
        run(benchmark, group, who, cycling(lambda q: index.search(q, k), queries))
        _, ids = index.search(queries[0], k)
        assert_same_topk(items, queries[0], ids, fast_topk.score_topk(items, user, k)[0], k)


@pytest.mark.parametrize(
    "who",
    ["ours 1 thread", "ours 2 threads", "numpy", "implicit", "faiss 1 thread", "faiss 2 threads"],
)
def test_score_topk_batch(benchmark, who):
    rng = np.random.default_rng(SEED)
    items = rng.standard_normal((100_000, 64)).astype(np.float32)
    users = rng.standard_normal((256, 64)).astype(np.float32)
    group = "score_topk_batch b=256 n=1e+05 d=64 k=10"
    if who.startswith("ours"):
        threads = 1 if who == "ours 1 thread" else 2
        run(
            benchmark,
            group,
            who,
            lambda: fast_topk.score_topk_batch(items, users, 10, threads=threads),
        )
    elif who == "numpy":
        run(benchmark, group, who, lambda: numpy_topk_batch(users @ items.T, 10))
    elif who == "implicit":
        if implicit_topk is None:
            pytest.skip("implicit not installed")
        run(benchmark, group, who, implicit_topk, items, users, 10, None, None, None, 2)
    else:
        index = faiss_index(items, 1 if who == "faiss 1 thread" else 2)
        _, ids = run(benchmark, group, who, index.search, users, 10)
        want = fast_topk.score_topk_batch(items, users, 10, threads=1)[0]
        assert_same_topk(items, users, ids, want, 10)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("who", ["ours", "numpy", "reference"])
def test_diverse_topk(benchmark, who, n, k):
    pool = score_pool(n)
    scores = pool[0]
    categories = np.random.default_rng(SEED + 1).integers(0, 50, n).astype(np.int32)
    group = f"diverse_topk n={n:.0e} k={k} cap=2 (50 categories)"
    if who == "ours":
        run(benchmark, group, who, cycling(fast_diversity.diverse_topk, pool, categories, k, 2))
        got = fast_diversity.diverse_topk(scores, categories, k, 2)
        for g, w in zip(got, numpy_diverse(scores, categories, k, 2), strict=True):
            np.testing.assert_array_equal(g, w)
    elif who == "numpy":
        run(benchmark, group, who, cycling(numpy_diverse, pool, categories, k, 2))
    else:
        if n > 100_000:
            pytest.skip("lexsort twin at 1e6 only adds run time")
        run(benchmark, group, who, cycling(reference.diverse_topk, pool, categories, k, 2))


def ratio_table(path: str) -> str:
    """Markdown table of each group: mean time of every contender relative to `ours`."""
    with open(path) as handle:
        results = json.load(handle)["benchmarks"]
    groups: dict[str, dict[str, float]] = {}
    for bench in results:
        groups.setdefault(bench["group"], {})[bench["name"]] = bench["stats"]["median"]
    lines = [
        "| group | ours (median) | numpy / ours | implicit / ours | ours / floor | other |",
        "|---|---|---|---|---|---|",
    ]
    for group, times in groups.items():
        ours = times.get("ours", times.get("ours 1 thread"))

        def rel(name, times=times, ours=ours):
            return f"{times[name] / ours:.1f}x" if name in times else ""

        floor = f"{ours / times['floor']:.2f}" if "floor" in times else ""
        other = ", ".join(
            f"{name} {times[name] / ours:.2f}x"
            for name in times
            if name not in ("ours", "numpy", "implicit", "floor")
        )
        lines.append(
            f"| {group} | {ours * 1e6:.1f} us | {rel('numpy')} | {rel('implicit')} "
            f"| {floor} | {other} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(ratio_table(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/kernels.json"))
