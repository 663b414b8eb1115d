import jax.numpy as jnp

from .._check import check_nonnegative, check_traced, finite_nonnegative
from .._custom_types import Hyperparameter, Time
from .._predictor import AbstractPredictor
from .base import AbstractSingleStep, IntegratorState, evaluate, noise


class EulerMaruyama(AbstractSingleStep):
    r"""Euler–Maruyama on the family of reverse-time SDEs with the path's marginals, whose noise scale
    $\epsilon$ interpolates between the probability-flow ODE ($\epsilon = 0$) and the reverse SDE
    ($\epsilon = 1$), with $f$, $g^2$ the path's
    [`drift_coefficient`][diffuse_eqx.AbstractPath.drift_coefficient] and
    [`diffusion_squared`][diffuse_eqx.AbstractPath.diffusion_squared]:

    $$dx = \Big[f x - \frac{1 + \epsilon^2}{2}\, g^2\, \nabla\log p_t(x)\Big]\, dt + \epsilon\, g\, d\bar W,$$

    $$x_s = x_t + h\Big[v(x_t, t) - \frac{\epsilon^2}{2}\, g(t)^2\, \nabla\log p_t(x_t)\Big]
      + \epsilon\, g(t) \sqrt{-h}\; z, \qquad h = s - t < 0, \quad z \sim \mathcal N(0, I),$$

    $v$ the probability-flow velocity, so $\epsilon = 0$ is exactly [`Euler`][diffuse_eqx.Euler]. One
    evaluation per step. The final step to $\sigma = 0$ returns $\hat x_0$; the step from $\alpha_t = 0$
    (where $g^2 = \infty$) is the probability-flow Euler step, at no cost in exactness. Weak order 1,
    but slower from $\alpha(t_{\max}) = 0$ for $\epsilon < 1$ on grids uniform in $t$. Derivation and
    convergence: [Concepts → The Euler–Maruyama family][euler-maruyama-family].

    ??? cite "Reference"
        ```bibtex
        @inproceedings{song2021score,
          title={Score-Based Generative Modeling through Stochastic Differential Equations},
          author={Song, Yang and Sohl-Dickstein, Jascha and Kingma, Diederik P and Kumar, Abhishek
                  and Ermon, Stefano and Poole, Ben},
          booktitle={ICLR}, year={2021}}
        ```

    **Arguments:**

    - `noise_scale`: $\epsilon \ge 0$ (default 1, the reverse SDE; 0 is the probability-flow ODE).
    """

    noise_scale: Hyperparameter = 1.0

    def __check_init__(self):
        check_nonnegative("EulerMaruyama noise_scale", self.noise_scale)

    @property
    def order(self) -> int:
        return 1

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, h, path, eps = state.position, t_next - t, predictor.path, self.noise_scale
        pred, state = evaluate(predictor, state, x, t)
        z, state = noise(state)
        z = check_traced(
            z, "EulerMaruyama noise_scale", self.noise_scale, finite_nonnegative, ">= 0 and finite"
        )
        g2 = path.diffusion_squared(t)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0.0)  # alpha_t = 0: the probability-flow Euler step
        drift = pred.velocity(path, t) - (eps**2 / 2) * g2 * pred.score(path, t)
        x_next = x + h * drift + eps * jnp.sqrt(-h * g2) * z
        x_next = jnp.where(path.sigma(t_next) == 0, pred.x0, x_next)
        return state.replace(position=x_next.astype(x.dtype))
