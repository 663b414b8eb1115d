import math

import equinox as eqx
import jax.numpy as jnp

from .._check import concrete
from .._custom_types import Grid, Hyperparameter
from .._path import AbstractPath, Flow
from .base import AbstractTimer, check_grid, check_n_steps, check_range


#: The half log-SNR range of EDM's defaults, sigma from 80 down to 0.002: where `LogSNRTimer` starts
#: on a path that begins in pure noise, and where it stops by default.
LAMBDA_START, LAMBDA_STOP = -math.log(80.0), math.log(500.0)


class LogSNRTimer(AbstractTimer):
    r"""A grid uniform in the half log-SNR $\lambda(t) = \log(\alpha(t)/\sigma(t))$ of a path, the grid
    DPM-Solver recommends:

    $$t_i = t(\lambda_i), \quad \lambda_i = \lambda_{\rm start} + \tfrac{i}{N-1}
      \big(\lambda(t_{\min}) - \lambda_{\rm start}\big), \quad i = 0..N-1, \qquad t_N = 0,$$

    inverted exactly by the path's `t_from_lambda`. $\lambda_{\rm start} = \lambda(t_{\max})$ when it
    is finite. Where $t_{\max}$ is pure noise ($\alpha(t_{\max}) = 0$, $\lambda = -\infty$: `Flow` and
    the cosine `VP` at $t = 1$), the uniform grid starts at $\lambda_{\rm start} = -\log 80$ (EDM's
    $\sigma_{\max} = 80$) and its first time is moved to $t_{\max}$: the first step runs from pure
    noise, and no step is spent between $t_{\max}$ and $t(-\log 80)$ ($0.988$ on `Flow`). On `EDM`
    with its defaults, this is [`ExponentialTimer`][diffuse_eqx.ExponentialTimer]. `append_zero=False`
    ends at $t_{\min}$ with $N + 1$ points.

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `path`: the path whose $\lambda$ is uniform (default `Flow()`).
    - `t_min`: the last time before 0 (default `None`: where $\alpha/\sigma = 500$, i.e.
      $\lambda = \log 500$, EDM's $\sigma_{\min} = 0.002$; $t = 0.001996$ on `Flow`).
    - `t_max`: the first time (default `None`: the path's `t_max`).
    - `append_zero`: end with a step to $t = 0$ (default `True`).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{lu2022dpm,
          title={{DPM-Solver}: A Fast {ODE} Solver for Diffusion Probabilistic Model Sampling in
                 Around 10 Steps},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          booktitle={NeurIPS}, year={2022}}
        ```
    """

    n_steps: int = eqx.field(static=True)
    path: AbstractPath = Flow()
    t_min: Hyperparameter | None = None
    t_max: Hyperparameter | None = None
    append_zero: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        check_n_steps("LogSNRTimer", self.n_steps)
        if not isinstance(self.path, AbstractPath):
            raise TypeError(f"LogSNRTimer path must be a path, e.g. dx.Flow(); got {self.path!r}.")
        t_min, t_max = self.range
        check_range("LogSNRTimer", t_max, t_min)
        if concrete(t_min, t_max, self.path.t_max):
            if not t_min > 0:
                raise ValueError(f"LogSNRTimer needs t_min > 0 (lambda(0) = +inf); got t_min={t_min}.")
            if not t_max <= self.path.t_max:
                raise ValueError(f"LogSNRTimer t_max={t_max} is beyond the path's t_max={self.path.t_max}.")
            if not jnp.isfinite(self.path.lambda_(t_max)) and not self.path.lambda_(t_min) > LAMBDA_START:
                raise ValueError(
                    f"LogSNRTimer starts from pure noise at t_max={t_max}, and then spaces lambda "
                    f"uniformly from -log(80); t_min={t_min} is noisier than that (lambda = "
                    f"{float(self.path.lambda_(t_min)):.3g}). Take a smaller t_min."
                )
        if self.append_zero and self.n_steps < 2:
            raise ValueError("LogSNRTimer with append_zero=True needs n_steps >= 2.")
        check_grid("LogSNRTimer", self.times())

    @property
    def range(self):
        r"""$(t_{\min}, t_{\max})$, the defaults resolved."""
        t_min = self.path.t_from_lambda(LAMBDA_STOP) if self.t_min is None else self.t_min
        t_max = self.path.t_max if self.t_max is None else self.t_max
        return t_min, t_max

    def times(self) -> Grid:
        t_min, t_max = self.range
        n = self.n_steps if self.append_zero else self.n_steps + 1
        lam_max = jnp.asarray(self.path.lambda_(t_max), jnp.result_type(float))
        start = jnp.where(jnp.isfinite(lam_max), lam_max, LAMBDA_START)
        lams = jnp.linspace(start, self.path.lambda_(t_min), n)
        ts = jnp.asarray(self.path.t_from_lambda(lams)).at[0].set(t_max).at[-1].set(t_min)
        return jnp.append(ts, 0.0) if self.append_zero else ts
