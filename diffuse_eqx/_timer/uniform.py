import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Grid
from .base import AbstractTimer, check_grid, check_n_steps, check_range


class UniformTimer(AbstractTimer):
    r"""Equally spaced times $t_i = t_{\max} + \frac{i}{N}(t_{\min} - t_{\max})$, $i = 0..N$.

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `t_max`: the first time (default 1, pure noise for `Flow` and `VP`).
    - `t_min`: the last time (default 0, the data; no clipping is needed by any integrator here).
    """

    n_steps: int = eqx.field(static=True)
    t_max: float = 1.0
    t_min: float = 0.0

    def __check_init__(self):
        check_n_steps("UniformTimer", self.n_steps)
        check_range("UniformTimer", self.t_max, self.t_min)
        check_grid("UniformTimer", self.times())

    def times(self) -> Grid:
        return jnp.linspace(self.t_max, self.t_min, self.n_steps + 1)
