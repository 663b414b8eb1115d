from typing import ClassVar

import jax.numpy as jnp
import jax.random as jr

from .._check import concrete
from .._custom_types import Grid, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate


class EulerMaruyama(AbstractIntegrator):
    r"""Euler–Maruyama on the reverse-time SDE of the path, with a noise scale $\epsilon$ that
    interpolates between the probability-flow ODE and the reverse SDE. With the path's forward SDE
    $dx = f(t)\, x\, dt + g(t)\, dW$ ([`drift_coefficient`][diffuse_eqx.AbstractPath.drift_coefficient],
    [`diffusion_squared`][diffuse_eqx.AbstractPath.diffusion_squared]), every member of the family

    $$dx = \Big[f x - \frac{1 + \epsilon^2}{2}\, g^2\, \nabla\log p_t(x)\Big]\, dt + \epsilon\, g\, d\bar W$$

    (integrated from $t_{\max}$ down to 0) has the path's marginals $p_t$: $\epsilon = 0$ is the
    probability-flow ODE, $\epsilon = 1$ the reverse SDE (Song et al. 2021). Since the probability-flow
    velocity is $v = f x - \tfrac12 g^2 \nabla\log p_t$, a step from $t$ to $s < t$, $h = s - t < 0$, is

    $$x_s = x_t + h\Big[v(x_t, t) - \frac{\epsilon^2}{2}\, g(t)^2\, \nabla\log p_t(x_t)\Big]
      + \epsilon\, g(t) \sqrt{-h}\; z, \qquad z \sim \mathcal N(0, I),$$

    so $\epsilon = 0$ is exactly [`Euler`][diffuse_eqx.Euler]. One evaluation per step, at $t > 0$
    (the score is never needed at $\sigma = 0$). Endpoints:

    - the final step to $\sigma_s = 0$ returns the data estimate $\hat x_0(x_t, t)$, so no injected
      noise is left in the samples (for `Flow` and `EDM` this is also Euler's last step);
    - where $g(t)^2$ is infinite, on the step from $\alpha_t = 0$ (`Flow` and the cosine `VP` at
      $t_{\max}$), the SDE terms are singular: that step is the probability-flow Euler step. Every
      member of the family has the same marginals, so this costs no exactness.

    Weak order 1 (order 1 as an ODE solver at $\epsilon = 0$). Near $\alpha = 0$ the coefficients
    $f$ and $g^2$ grow like $1/\alpha$, and on a grid uniform in $t$ from $\alpha(t_{\max}) = 0$ the
    steps there stay coarse in $\lambda$ however many there are: for $\epsilon < 1$ convergence is
    then slower than first order (about $N^{-1/2}$ at $\epsilon = 0.5$ on Gaussian data with the
    cosine `VP`); for $\epsilon \ge 1$, or where $\alpha(t_{\max}) > 0$, it is first order. The
    exponential integrators [`DDIM`][diffuse_eqx.DDIM] ($\eta > 0$) and
    [`DPMpp2MSDE`][diffuse_eqx.DPMpp2MSDE] have no such issue.

    **Arguments:**

    - `noise_scale`: $\epsilon \ge 0$ (default 1, the reverse SDE; 0 is the probability-flow ODE).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{song2021score,
          title={Score-Based Generative Modeling through Stochastic Differential Equations},
          author={Song, Yang and Sohl-Dickstein, Jascha and Kingma, Diederik P and Kumar, Abhishek
                  and Ermon, Stefano and Poole, Ben},
          booktitle={ICLR}, year={2021}}
        ```
    """

    noise_scale: float = 1.0
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1

    def __check_init__(self):
        if concrete(self.noise_scale) and not self.noise_scale >= 0:
            raise ValueError(f"EulerMaruyama noise_scale must be >= 0; got noise_scale={self.noise_scale}.")

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, h, path, eps = state.position, t_next - t, predictor.path, self.noise_scale
        pred, state = evaluate(predictor, state, x, t)
        key, sub = jr.split(state.key)
        z = jr.normal(sub, x.shape, x.dtype)
        g2 = path.diffusion_squared(t)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0.0)  # alpha_t = 0: the probability-flow Euler step
        drift = pred.velocity(path, t) - (eps**2 / 2) * g2 * pred.score(path, t)
        x_next = x + h * drift + eps * jnp.sqrt(-h * g2) * z
        x_next = jnp.where(path.sigma(t_next) == 0, pred.x0, x_next)
        return state.replace(position=x_next.astype(x.dtype), key=key)
