"""Shared Hypothesis strategies for the kernel tests (a plain module: tests/ has no packages).

The tests compare `rankly._fast` (compiled, or the reference when RANKLY_PURE_PYTHON=1) with
`rankly._fast.reference`. Given the same score array, ids must match exactly.
"""

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

KERNELS = settings(max_examples=200, deadline=None)

F32 = np.finfo(np.float32)

# A small pool of values so that ties are common, plus every special value.
TIE_VALUES = [
    0.0,
    -0.0,
    1.0,
    2.0,
    -1.0,
    0.5,
    np.nan,
    np.inf,
    -np.inf,
    float(F32.max),
    float(-F32.max),
    float(F32.tiny),
    float(F32.smallest_subnormal),
]


def score_elements():
    return st.one_of(
        st.sampled_from(TIE_VALUES),
        st.floats(width=32, allow_nan=True, allow_infinity=True),
    )


def score_arrays(max_size=300):
    return hnp.arrays(np.float32, st.integers(0, max_size), elements=score_elements())


@st.composite
def exclusions(draw, n):
    """None, or an integer array with duplicates, negatives and out-of-range values."""
    if draw(st.booleans()):
        return None
    values = draw(st.lists(st.integers(-5, n + 5), max_size=max(n // 2, 3)))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.int16]))
    return np.array(values, dtype=dtype)


def k_values(n):
    return st.one_of(st.sampled_from([0, 1, n, n + 1, n + 100]), st.integers(0, n + 3))
