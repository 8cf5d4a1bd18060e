import numpy as np
import numpy.typing as npt

def diverse_topk(
    scores: npt.ArrayLike,
    categories: npt.ArrayLike,
    k: int,
    cap: int,
    exclude: npt.ArrayLike | None = None,
    fill: bool = True,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.bool_]]: ...
