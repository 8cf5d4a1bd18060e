import numpy as np
import numpy.typing as npt

def weighted_rows(
    matrix: npt.ArrayLike, rows: npt.ArrayLike, weights: npt.ArrayLike
) -> npt.NDArray[np.float32]: ...
