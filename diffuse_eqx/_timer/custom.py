from collections.abc import Sequence

from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Grid
from .base import AbstractTimer, as_float_array, check_grid


class CustomTimer(AbstractTimer):
    """Any user-given grid, e.g. one tuned to where the velocity bends.

    **Arguments:**

    - `ts`: the times, strictly decreasing from noise to data, shape `(n_steps + 1,)`. `n_steps` is
      `len(ts) - 1`.
    """

    ts: Float[Array, " n_steps_plus_one"]

    def __init__(self, ts: Float[ArrayLike, " n_steps_plus_one"] | Sequence[float]):
        self.ts = as_float_array(ts)

    def __check_init__(self):
        check_grid("CustomTimer", self.ts)

    @property
    def n_steps(self) -> int:
        return self.ts.shape[0] - 1

    def times(self) -> Grid:
        return self.ts
