"""score_topk and score_topk_batch against their NumPy reference twins.

Tolerance: the compiled kernels sum float32 products in a different order than BLAS. With
small-integer factors every dot product is exact, so ids must match exactly. With real-valued
factors, values must agree within rtol 1e-4 (atol 1e-4 * the largest |x_i * u_i| row sum), every
returned id's exact (float64) score must match its returned value, and ids must agree at every
rank whose reference score no other item's exact score comes within twice that tolerance of
(including items the reference did not return: a near-tie just below the cut counts).
"""

import numpy as np
import pytest
from fast_strategies import KERNELS, exclusions, k_values
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rankly import _fast
from rankly._fast import reference

RTOL = 1e-4

EXACT = "exact"  # small integers (exact float32 sums) with a few NaN / +-inf entries


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def assert_close(got, want, items, users):
    """Values within tolerance; each returned id scores what it claims; ids equal to the
    reference's wherever no other item's exact score lies within tolerance of that rank's."""
    (gi, gv), (wi, wv) = got, want
    assert gi.shape == wi.shape and gv.dtype == np.float32
    bound = np.abs(items) @ np.abs(users.T).astype(np.float64) if items.size else np.zeros(1)
    atol = RTOL * (float(np.max(bound)) + 1e-30)
    np.testing.assert_allclose(gv, wv, rtol=RTOL, atol=atol)
    exact = items.astype(np.float64) @ users.T.astype(np.float64)  # (n, users)
    flat_gi, flat_wi = np.atleast_2d(gi), np.atleast_2d(wi)
    flat_gv, flat_wv = np.atleast_2d(gv).astype(np.float64), np.atleast_2d(wv).astype(np.float64)
    for row in range(flat_wv.shape[0]):
        returned = flat_gi[row] >= 0
        np.testing.assert_allclose(
            exact[flat_gi[row][returned], row], flat_gv[row][returned], rtol=RTOL, atol=atol
        )
        for rank, (item, value) in enumerate(zip(flat_wi[row], flat_wv[row], strict=True)):
            if item < 0:
                continue
            others = np.delete(exact[:, row], item)
            if not np.any(np.abs(others - value) <= 2 * (atol + RTOL * abs(value))):
                assert flat_gi[row][rank] == item, (row, rank, flat_gi[row], flat_wi[row])


@st.composite
def factor_problem(draw, elements, max_users=None):
    n = draw(st.integers(0, 200))
    d = draw(st.integers(0, 40))
    shape = (d,) if max_users is None else (draw(st.integers(0, max_users)), d)
    if elements == EXACT:
        items = draw(hnp.arrays(np.int8, (n, d), elements=st.integers(-8, 8)))
        users = draw(hnp.arrays(np.int8, shape, elements=st.integers(-8, 8)))
        items, users = items.astype(np.float32), users.astype(np.float32)
        specials = st.sampled_from([np.nan, np.inf, -np.inf])
        for target in (items, users):
            if target.size:
                spots = st.integers(0, target.size - 1)
                for spot, value in draw(st.lists(st.tuples(spots, specials), max_size=3)):
                    target.flat[spot] = value
    else:
        items = draw(hnp.arrays(np.float32, (n, d), elements=elements))
        users = draw(hnp.arrays(np.float32, shape, elements=elements))
    return items, users, draw(k_values(n)), n


@KERNELS
@given(st.data())
def test_score_topk_matches_reference_exactly_on_exact_sums(data):
    items, user, k, n = data.draw(factor_problem(EXACT))
    exclude = data.draw(exclusions(n))
    got = _fast.score_topk(items, user, k, exclude)
    assert_same(got, reference.score_topk(items, user, k, exclude))


@KERNELS
@given(st.data())
def test_score_topk_matches_reference_within_tolerance(data):
    elements = st.floats(-10, 10, width=32)
    items, user, k, n = data.draw(factor_problem(elements))
    exclude = data.draw(exclusions(n))
    got = _fast.score_topk(items, user, k, exclude)
    assert_close(got, reference.score_topk(items, user, k, exclude), items, user[None, :])


@KERNELS
@given(st.data())
def test_score_topk_batch_matches_reference_exactly_on_exact_sums(data):
    items, users, k, n = data.draw(factor_problem(EXACT, max_users=12))
    exclude = data.draw(st.one_of(st.none(), st.tuples(*[exclusions(n)] * users.shape[0])))
    threads = data.draw(st.sampled_from([None, 1, 2]))
    got = _fast.score_topk_batch(items, users, k, exclude, threads=threads)
    assert_same(got, reference.score_topk_batch(items, users, k, exclude))


def test_score_topk_large_random_matches_reference():
    rng = np.random.default_rng(7)
    items = rng.standard_normal((20_000, 64)).astype(np.float32)
    user = rng.standard_normal(64).astype(np.float32)
    exclude = rng.integers(0, 20_000, 100)
    got = _fast.score_topk(items, user, 100, exclude)
    assert_close(got, reference.score_topk(items, user, 100, exclude), items, user[None, :])


def test_score_topk_batch_blas_blocks_match_reference():
    """Many users: scores come from BLAS a block of items at a time."""
    rng = np.random.default_rng(11)
    items = rng.standard_normal((5_000, 48)).astype(np.float32)
    users = rng.standard_normal((40, 48)).astype(np.float32)
    exclude = [rng.integers(0, 5_000, 30) for _ in range(40)]
    got = _fast.score_topk_batch(items, users, 50, exclude, threads=2)
    assert_close(got, reference.score_topk_batch(items, users, 50, exclude), items, users)


def test_score_topk_batch_pads_like_topk_batch():
    items = np.array([[1.0], [np.nan]], dtype=np.float32)
    idx, val = _fast.score_topk_batch(items, np.ones((2, 1), dtype=np.float32), 3)
    assert idx.tolist() == [[0, -1, -1]] * 2
    assert np.all(np.isneginf(val[:, 1:]))


def test_score_topk_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="user_vector has 3 factors but item_factors has 2"):
        _fast.score_topk(np.zeros((4, 2)), np.zeros(3), 1)


def test_score_topk_rejects_1d_item_factors():
    with pytest.raises(ValueError, match="item_factors must be a 2-D array"):
        _fast.score_topk(np.zeros(4), np.zeros(4), 1)


def test_score_topk_batch_rejects_1d_users():
    with pytest.raises(ValueError, match="user_matrix must be a 2-D array"):
        _fast.score_topk_batch(np.zeros((4, 2)), np.zeros(2), 1)


def test_score_topk_negative_k_raises():
    with pytest.raises(ValueError, match="k must be >= 0"):
        _fast.score_topk(np.zeros((4, 2)), np.zeros(2), -3)


def test_score_topk_accepts_read_only_float64_input():
    items = np.arange(8, dtype=np.float64).reshape(4, 2)
    items.setflags(write=False)
    user = np.frombuffer(np.ones(2, dtype=np.float32).tobytes(), dtype=np.float32)
    idx, val = _fast.score_topk(items, user, 2)
    assert idx.tolist() == [3, 2] and val.tolist() == [13.0, 9.0]


def test_avx2_and_baseline_builds_give_identical_results():
    """_simd.h compiles the scan and the dot-product block twice (SSE2 baseline, AVX2 picked at
    import); RANKLY_NO_AVX2 forces the baseline. Both must return the same bits."""
    import os
    import subprocess
    import sys

    if _fast.IMPLEMENTATION != "compiled":
        pytest.skip("the reference twin has no instruction-set dispatch")
    script = (
        "import hashlib, importlib, numpy as np\n"
        "from rankly import _fast\n"
        "t = importlib.import_module('rankly._fast.topk')\n"
        "rng = np.random.default_rng(3); h = hashlib.sha256()\n"
        "for n, d in ((1000, 7), (5003, 32), (3001, 129), (20002, 64), (4099, 96)):\n"
        "    X = rng.standard_normal((n, d)).astype(np.float32)\n"
        "    u = rng.standard_normal(d).astype(np.float32)\n"
        "    for out in (_fast.score_topk(X, u, 100), _fast.topk(X @ u, 100)):\n"
        "        h.update(out[0].tobytes()); h.update(out[1].tobytes())\n"
        "print(t.SCAN_ISA, h.hexdigest())\n")

    def run(**env):
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True, env={**os.environ, **env}).stdout.split()

    default, baseline = run(), run(RANKLY_NO_AVX2="1")
    assert baseline[0] == "sse2" and default[0] in ("sse2", "avx2")
    assert default[1] == baseline[1]
