from typing import ClassVar

import jax.numpy as jnp
import jax.random as jr

from .._check import concrete
from .._custom_types import Grid, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate


class DDIM(AbstractIntegrator):
    r"""DDIM (Song et al. 2021), written for any path $x_t = \alpha_t x_0 + \sigma_t\varepsilon$:

    $$x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\varepsilon + c\, z, \qquad
      c = \eta\, \sigma_s \sqrt{1 - e^{-2h}}, \quad e^{-h} = \frac{\alpha_t \sigma_s}{\alpha_s\sigma_t},
      \quad z \sim \mathcal N(0, I).$$

    $\eta = 0$ is the deterministic DDIM (first-order exponential integrator of the probability-flow
    ODE; for `Flow` it coincides with Euler). $\eta = 1$ samples the exact posterior
    $q(x_s \mid x_t, x_0 = \hat x_0)$ of the Markov forward process with these marginals
    (DDPM ancestral sampling, for any path, `Flow` included). One evaluation per step; the final
    step to $t = 0$ returns $\hat x_0$.

    **Arguments:**

    - `eta`: stochasticity in $[0, 1]$ (default 0).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{song2021denoising,
          title={Denoising Diffusion Implicit Models},
          author={Song, Jiaming and Meng, Chenlin and Ermon, Stefano},
          booktitle={ICLR}, year={2021}}
        ```
    """

    eta: float = 0.0
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1

    def __check_init__(self):
        if concrete(self.eta) and not 0 <= self.eta <= 1:
            raise ValueError(f"DDIM eta must be in [0, 1]; got eta={self.eta}.")

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        pred, state = evaluate(predictor, state, x, t)
        a_t, s_t = path.alpha(t), path.sigma(t)
        a_s, s_s = path.alpha(t_next), path.sigma(t_next)
        one_minus_ratio2 = 1 - ((a_t * s_s) / (a_s * s_t)) ** 2  # 1 - e^{-2h}
        key, sub = jr.split(state.key)
        z = jr.normal(sub, x.shape, x.dtype)
        noise = jnp.sqrt(1 - self.eta**2 * one_minus_ratio2) * pred.noise
        noise = noise + self.eta * jnp.sqrt(one_minus_ratio2) * z
        x_next = a_s * pred.x0 + s_s * noise
        return state.replace(position=x_next.astype(x.dtype), key=key)
