import equinox as eqx
import jax.numpy as jnp

from .._check import concrete
from .._custom_types import Grid
from .base import AbstractTimer, check_grid, check_n_steps, check_range


class KarrasTimer(AbstractTimer):
    r"""The EDM grid (Karras et al. 2022, Eq. 5): uniform in $t^{1/\rho}$,

    $$t_i = \Big(t_{\max}^{1/\rho}
      + \tfrac{i}{N-1}\big(t_{\min}^{1/\rho} - t_{\max}^{1/\rho}\big)\Big)^{\rho},
      \quad i = 0..N-1, \qquad t_N = 0,$$

    with the final step to $t = 0$ appended (set `append_zero=False` to end at $t_{\min}$ instead; the
    grid then has $N + 1$ points of the power law). Designed for `EDM` (where $t = \sigma$);
    with `Flow` or `VP` use `t_max=1` and a small `t_min`.

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `t_min`, `t_max`: the range of the power law (defaults 0.002 and 80, EDM's $\sigma$ range).
    - `rho`: the exponent (default 7; larger concentrates steps near `t_min`).
    - `append_zero`: end with a step to $t = 0$ (default `True`).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{karras2022elucidating,
          title={Elucidating the Design Space of Diffusion-Based Generative Models},
          author={Karras, Tero and Aittala, Miika and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2022}}
        ```
    """

    n_steps: int = eqx.field(static=True)
    t_min: float = 0.002
    t_max: float = 80.0
    rho: float = 7.0
    append_zero: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        check_n_steps("KarrasTimer", self.n_steps)
        check_range("KarrasTimer", self.t_max, self.t_min)
        if concrete(self.t_min, self.rho):
            if not self.t_min > 0:
                raise ValueError(f"KarrasTimer needs t_min > 0 (a power law); got t_min={self.t_min}.")
            if not self.rho > 0:
                raise ValueError(f"KarrasTimer needs rho > 0; got rho={self.rho}.")
        if self.append_zero and self.n_steps < 2:
            raise ValueError("KarrasTimer with append_zero=True needs n_steps >= 2.")
        check_grid("KarrasTimer", self.times())

    def times(self) -> Grid:
        n = self.n_steps if self.append_zero else self.n_steps + 1
        u = jnp.linspace(0.0, 1.0, n)
        lo, hi = self.t_min ** (1 / self.rho), self.t_max ** (1 / self.rho)
        ts = (hi + u * (lo - hi)) ** self.rho
        return jnp.append(ts, 0.0) if self.append_zero else ts
