"""The parallel ALS scan returns exactly what the single compiled scan does."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rankly import _fast
from rankly.plugins.models import als


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 3000), d=st.integers(1, 16),
       k=st.sampled_from([1, 10, 100, 5000]), chunks=st.integers(1, 5),
       n_exclude=st.integers(0, 100), ties=st.booleans())
def test_split_scan_equals_the_single_scan(seed, n, d, k, chunks, n_exclude, ties):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d)).astype(np.float32)
    if ties:  # many equal scores: the merge must keep the lower index first
        items = np.round(items).astype(np.float32)
    user = rng.standard_normal(d).astype(np.float32)
    exclude = rng.integers(0, n, n_exclude)
    want = _fast.score_topk(items, user, k, exclude=exclude)
    got = als.split_score_topk(items, user, k, exclude, chunks)
    np.testing.assert_array_equal(got[0], want[0])
    # exact with the compiled kernel; the NumPy twin's BLAS rounds a slice's products its own way
    if _fast.IMPLEMENTATION == "compiled":
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
