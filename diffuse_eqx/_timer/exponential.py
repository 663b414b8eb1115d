import equinox as eqx
import jax.numpy as jnp

from .._check import concrete
from .._custom_types import Grid
from .base import AbstractTimer, check_grid, check_n_steps, check_range


class ExponentialTimer(AbstractTimer):
    r"""A geometric grid, uniform in $\log t$ (k-diffusion's `get_sigmas_exponential`):

    $$t_i = \exp\!\Big(\log t_{\max} + \tfrac{i}{N-1}(\log t_{\min} - \log t_{\max})\Big), \quad i = 0..N-1,
      \qquad t_N = 0.$$

    For `EDM` ($t = \sigma$) this is uniform in the log-SNR $\lambda = -\log t$, the grid DPM-Solver
    recommends. `append_zero=False` ends at $t_{\min}$ with $N + 1$ geometric points.

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `t_min`, `t_max`: the range (defaults 0.002 and 80, EDM's).
    - `append_zero`: end with a step to $t = 0$ (default `True`).
    """

    n_steps: int = eqx.field(static=True)
    t_min: float = 0.002
    t_max: float = 80.0
    append_zero: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        check_n_steps("ExponentialTimer", self.n_steps)
        check_range("ExponentialTimer", self.t_max, self.t_min)
        if concrete(self.t_min) and not self.t_min > 0:
            raise ValueError(f"ExponentialTimer needs t_min > 0 (log-spaced); got t_min={self.t_min}.")
        if self.append_zero and self.n_steps < 2:
            raise ValueError("ExponentialTimer with append_zero=True needs n_steps >= 2.")
        check_grid("ExponentialTimer", self.times())

    def times(self) -> Grid:
        n = self.n_steps if self.append_zero else self.n_steps + 1
        ts = jnp.exp(jnp.linspace(jnp.log(self.t_max), jnp.log(self.t_min), n))
        return jnp.append(ts, 0.0) if self.append_zero else ts
