"""Compiled ranking kernels: top-k selection, fused scoring, row gathers, per-category
diversity, and the per-slate features of the impression record.

`IMPLEMENTATION` is "compiled" or "reference"; the app logs it at startup.
"""

from __future__ import annotations

import os

# This module reads RANKLY_PURE_PYTHON itself instead of going through engine/config.py:
# the choice of implementation happens at import time, before any settings object exists,
# and must not depend on import order. It is the only other reader of that variable.
if os.environ.get("RANKLY_PURE_PYTHON") == "1":
    from rankly._fast.reference import (
        add_standardized,
        category_features,
        csr_weighted_rows,
        diverse_topk,
        positions,
        score_topk,
        score_topk_batch,
        topk,
        topk_batch,
        weighted_rows,
        weighted_rows_batch,
    )

    IMPLEMENTATION = "reference"
else:
    try:
        from rankly._fast.diversity import diverse_topk
        from rankly._fast.gather import (
            add_standardized,
            csr_weighted_rows,
            weighted_rows,
            weighted_rows_batch,
        )
        from rankly._fast.slate import category_features, positions
        from rankly._fast.topk import score_topk, score_topk_batch, topk, topk_batch
    except ImportError as error:
        raise ImportError(
            "rankly._fast: the compiled kernels are not built. Build them with "
            "`pip install -e .` (needs gcc, Cython>=3 and numpy>=2), or set "
            "RANKLY_PURE_PYTHON=1 to use the slow NumPy reference explicitly."
        ) from error

    IMPLEMENTATION = "compiled"

__all__ = [
    "IMPLEMENTATION",
    "add_standardized",
    "category_features",
    "csr_weighted_rows",
    "diverse_topk",
    "positions",
    "score_topk",
    "score_topk_batch",
    "topk",
    "topk_batch",
    "weighted_rows",
    "weighted_rows_batch",
]
