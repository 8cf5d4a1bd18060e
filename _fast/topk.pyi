from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

def topk(
    scores: npt.ArrayLike, k: int, exclude: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def topk_batch(
    scores_2d: npt.ArrayLike,
    k: int,
    exclude: Sequence[npt.ArrayLike] | None = None,
    *,
    threads: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def score_topk(
    item_factors: npt.ArrayLike,
    user_vector: npt.ArrayLike,
    k: int,
    exclude: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def score_topk_batch(
    item_factors: npt.ArrayLike,
    user_matrix: npt.ArrayLike,
    k: int,
    exclude: Sequence[npt.ArrayLike] | None = None,
    *,
    threads: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...

SCAN_ISA: str
