import numpy as np
import numpy.typing as npt

def weighted_rows(
    matrix: npt.ArrayLike, rows: npt.ArrayLike, weights: npt.ArrayLike
) -> npt.NDArray[np.float32]: ...
def weighted_rows_batch(
    matrix: npt.ArrayLike, indptr: npt.ArrayLike, indices: npt.ArrayLike, data: npt.ArrayLike,
    *, threads: int | None = None,
) -> npt.NDArray[np.float32]: ...
def csr_weighted_rows(
    indptr: npt.ArrayLike, indices: npt.ArrayLike, data: npt.ArrayLike, rows: npt.ArrayLike,
    weights: npt.ArrayLike, n_cols: int,
) -> npt.NDArray[np.float32]: ...
def add_standardized(
    out: npt.NDArray[np.float32], x: npt.ArrayLike, weight: float = 1.0
) -> npt.NDArray[np.float32]: ...
