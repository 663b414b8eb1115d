import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

from .._check import check_int, check_positive, check_value
from .._custom_types import Grid, Hyperparameter, Key, Particle, Time
from .._integrator import AbstractIntegrator, IntegratorState, data_step, evaluate
from .._predictor import AbstractPredictor
from .base import check_noisy, check_y, check_y_now, prior_variance
from .operators import AbstractOperator, Measurement, check_differentiable


class DAPS(AbstractIntegrator):
    r"""Decoupled annealing posterior sampling (Zhang et al. 2024). Each step from $t$ to $s$ decouples
    the particle from its noise: it draws $x_0$ approximately from $p(x_0 \mid x_t, y)$ by Langevin
    dynamics, then noises it afresh to time $s$:

    $$\hat x_0 = \mathrm{ODE}_{t\to 0}(x_t), \qquad
      x_0^{(j+1)} = x_0^{(j)} + \eta_t\,\nabla\Big[-\frac{\|x_0 - \hat x_0\|^2}{2r_t^2} + \log p(y \mid x_0)
      \Big]_{x_0^{(j)}} + \sqrt{2\eta_t}\, z_j, \qquad x_s = \alpha_s x_0^{(N)} + \sigma_s z,$$

    from $x_0^{(0)} = \hat x_0$, with $N$ = `n_langevin`, $\log p(y \mid x_0)$ the operator's Gaussian
    log-likelihood (any operator; needs $\sigma_y > 0$), $r_t^2 = v\sigma_t^2/(v\alpha_t^2 + \sigma_t^2)$
    and step $\eta_t$ = `step_size` $\cdot\, r_t^2$, stable when
    `step_size` $(1 + r_t^2\|A\|^2/\sigma_y^2) < 2$. For a Gaussian prior with covariance $vI$ the only
    errors are the Langevin chain's. $\hat x_0$ takes `n_ode_steps` [`DDIM`][diffuse_eqx.DDIM] steps of
    the prior probability-flow ODE (1: Tweedie's $\hat x_0(x_t)$). The last step ($s = 0$) returns
    $x_0^{(N)}$. NFE per step: `n_ode_steps`. Details: [Concepts → DAPS's Langevin steps][daps-langevin].

    ??? cite "Reference"
        ```bibtex
        @article{zhang2024improving,
          title={Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing},
          author={Zhang, Bingliang and Chu, Wenda and Berner, Julius and Meng, Chenlin
                  and Anandkumar, Anima and Song, Yang},
          journal={arXiv:2407.01521}, year={2024}}
        ```

    **Arguments:**

    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator] with $\sigma_y > 0$.
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `n_langevin`: Langevin steps per grid step (default 50).
    - `step_size`: the Langevin step relative to $r_t^2$ (default 0.1).
    - `data_var`: $v > 0$, the data variance assumed by $r_t$ (default 1).
    - `n_ode_steps`: probability-flow steps for $\hat x_0$ (default 1).
    """

    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    n_langevin: int = eqx.field(default=50, static=True)
    step_size: Hyperparameter = 0.1
    data_var: Hyperparameter = 1.0
    n_ode_steps: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        check_differentiable("DAPS", self.operator)
        check_noisy("DAPS", self.operator, "its Langevin steps follow the Gaussian likelihood")
        check_y_now("DAPS", self.operator, self.y)
        check_int("DAPS n_langevin", self.n_langevin, minimum=0)
        check_int("DAPS n_ode_steps", self.n_ode_steps)
        check_positive("DAPS step_size", self.step_size)
        check_value("DAPS data_var", self.data_var, lambda v: 0 < v < float("inf"), "> 0 and finite")

    @property
    def order(self) -> int:
        """0: a sampler, not an ODE solver."""
        return 0

    @property
    def nfe_per_step(self) -> int:
        """`n_ode_steps`."""
        return self.n_ode_steps

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        check_y("DAPS", self.operator, self.y, x.shape)
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path, t = state.position, predictor.path, jnp.asarray(t)
        n = self.n_ode_steps
        grid = t * (1 - jnp.arange(n + 1, dtype=t.dtype) / n)

        def ode(m, carry):
            x_m, state = carry
            pred, state = evaluate(predictor, state, x_m, grid[m])
            return data_step(path, x_m, grid[m], grid[m + 1], pred.x0), state

        x0_hat, state = lax.fori_loop(0, n, ode, (x, state))
        r2 = prior_variance(path, t, self.data_var)
        eta = self.step_size * r2
        grad_ll = jax.grad(self.operator.log_likelihood)
        key, k_langevin, k_noise = jr.split(state.key, 3)

        def langevin(x0, k):
            drift = (x0_hat - x0) / r2 + grad_ll(x0, self.y)
            z = jr.normal(k, x.shape, x.dtype)
            return (x0 + eta * drift + jnp.sqrt(2 * eta) * z).astype(x.dtype), None

        x0, _ = lax.scan(langevin, x0_hat, jr.split(k_langevin, self.n_langevin))
        z = jr.normal(k_noise, x.shape, x.dtype)
        x_next = path.alpha(t_next) * x0 + path.sigma(t_next) * z
        return state.replace(position=x_next.astype(x.dtype), key=key)
