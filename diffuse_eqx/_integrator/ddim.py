import jax.numpy as jnp

from .._check import check_interval, check_traced
from .._custom_types import Hyperparameter, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractSingleStep, IntegratorState, evaluate, noise


class DDIM(AbstractSingleStep):
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

    eta: Hyperparameter = 0.0

    def __check_init__(self):
        check_interval("DDIM eta", self.eta, 0.0, 1.0)

    @property
    def order(self) -> int:
        return 1

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x = state.position
        pred, state = evaluate(predictor, state, x, t)
        z, state = noise(state)
        z = check_traced(z, "DDIM eta", self.eta, lambda e: (e >= 0) & (e <= 1), "in [0, 1]")
        return state.replace(position=ancestral_step(predictor.path, pred, t, t_next, self.eta, z))


def ancestral_step(
    path: AbstractPath, pred: Prediction, t: Time, t_next: Time, eta: Hyperparameter, z: Particle
) -> Particle:
    r"""The ancestral step of [`DDIM`][diffuse_eqx.DDIM] and
    [`EulerAncestral`][diffuse_eqx.EulerAncestral] from $t$ to $s$ with the prediction `pred`:

    $$x_s = \alpha_s\hat x_0 + \sigma_s\big(\sqrt{1 - u^2}\,\hat\varepsilon + u\, z\big), \qquad
      u = \min\big(1,\ \eta\sqrt{1 - e^{-2h}}\big), \quad
      e^{-h} = \frac{\alpha_t\sigma_s}{\alpha_s\sigma_t},$$

    $u$ the share of fresh noise (clipped at 1 for $\eta > 1$, as k-diffusion clips
    $\sigma_{\rm up} \le \sigma_s$)."""
    a_t, s_t = path.alpha(t), path.sigma(t)
    a_s, s_s = path.alpha(t_next), path.sigma(t_next)
    ratio2 = ((a_t * s_s) / (a_s * s_t)) ** 2  # e^{-2h}; 0 where alpha_t = 0 or sigma_s = 0
    # no fresh noise on a step up in time (h < 0: the inversion of `invert`)
    up = jnp.minimum(1.0, eta * jnp.sqrt(jnp.maximum(1 - ratio2, 0.0)))
    down = jnp.sqrt(1 - up**2)
    return (a_s * pred.x0 + s_s * (down * pred.noise + up * z)).astype(z.dtype)
