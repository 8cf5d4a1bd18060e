import numpy as np
import numpy.typing as npt

def positions(items: npt.ArrayLike, listed: npt.ArrayLike) -> npt.NDArray[np.int64]: ...
def category_features(
    history: npt.ArrayLike, items: npt.ArrayLike, categories: npt.ArrayLike, window: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
