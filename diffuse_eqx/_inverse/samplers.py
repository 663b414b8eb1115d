"""Posterior samplers that are integrators: they take the prior predictor from the
[`Denoiser`][diffuse_eqx.Denoiser] and hold the operator and the measurement themselves."""

from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

from .._check import concrete
from .._custom_types import Grid, Key, Particle, Time
from .._integrator import AbstractIntegrator, IntegratorState, data_step, evaluate
from .._predictor import AbstractPredictor
from .guidance import (
    Hyperparameter,
    Measurement,
    check_matrix_y,
    check_noisy,
    check_operator,
    check_positive,
    check_y,
    prior_variance,
)
from .operators import AbstractLinearOperator, AbstractOperator


def _check_count(name: str, argument: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} {argument} must be an integer >= {minimum}; got {argument}={value!r}.")


class RePaint(AbstractIntegrator):
    r"""RePaint (Lugmayr et al. 2022): after every step of the `inner` integrator from $t$ to $s$, the
    measured part of the particle is replaced by the measurement noised to time $s$,

    $$x_s \leftarrow x_s + A^+\big(\alpha_s\, y + \sigma_s A z - A x_s\big), \qquad z \sim \mathcal N(0, I),$$

    which for [`Inpainting`][diffuse_eqx.Inpainting] ($A^+ = A = m\odot$) is the paper's
    $x_s = m \odot (\alpha_s y + \sigma_s z) + (1 - m)\odot x_s$, and for any linear operator with a
    pseudo-inverse replaces the component in the row space of $A$ ($A^+ A x$) by that of
    $\alpha_s A^+ y + \sigma_s z$. The measurement noise is ignored.

    Resampling (the paper's jump schedule): after every `jump_length`-th step, landing on grid time
    $t_k$, the particle is sent back `jump_length` grid steps, to $t_{k-j}$, by the path's forward
    kernel $x_{t_{k-j}} = (\alpha_{t_{k-j}}/\alpha_{t_k})\,x_{t_k} + \sqrt{\sigma_{t_{k-j}}^2 -
    (\alpha_{t_{k-j}}/\alpha_{t_k})^2\sigma_{t_k}^2}\; z$, and brought down again with the same
    replacement steps; this is done `n_resample - 1` times (`n_resample` passes over each segment, the
    paper's $r$; 1 switches resampling off). The inner integrator's memory is reset after each jump.
    Resampling runs inside `step` (a `lax.fori_loop`), so the grid is the timer's.

    NFE: a grid of $N$ steps costs $N\,n_{\rm inner}$ plus $\lfloor N/j\rfloor\,(r - 1)\,j\,n_{\rm inner}$
    for the jumps, $n_{\rm inner}$ the inner integrator's `nfe_per_step` (about $r$ times plain sampling);
    the counted NFE is exact. The paper uses [`DDIM`][diffuse_eqx.DDIM] with `eta=1` (DDPM), $j = r = 10$.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{lugmayr2022repaint,
          title={RePaint: Inpainting using Denoising Diffusion Probabilistic Models},
          author={Lugmayr, Andreas and Danelljan, Martin and Romero, Andres and Yu, Fisher
                  and Timofte, Radu and Van Gool, Luc},
          booktitle={CVPR}, year={2022}}
        ```

    **Arguments:**

    - `inner`: the [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator] of the prior (e.g.
      `dx.DDIM(eta=1.0)`).
    - `operator`: a linear operator with `pinv` (made for [`Inpainting`][diffuse_eqx.Inpainting]).
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `jump_length`: $j \ge 1$, grid steps per jump (default 10).
    - `n_resample`: $r \ge 1$, passes over each segment (default 10).
    """

    inner: AbstractIntegrator
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    jump_length: int = eqx.field(default=10, static=True)
    n_resample: int = eqx.field(default=10, static=True)
    order: ClassVar[int] = 0

    def __check_init__(self):
        if not isinstance(self.inner, AbstractIntegrator):
            raise TypeError(
                f"RePaint inner must be an AbstractIntegrator (e.g. dx.DDIM(eta=1.0)); got {self.inner!r}."
            )
        check_operator("RePaint", self.operator, linear=True, pinv=True)
        check_matrix_y("RePaint", self.operator, self.y)
        _check_count("RePaint", "jump_length", self.jump_length)
        _check_count("RePaint", "n_resample", self.n_resample)

    @property
    def nfe_per_step(self) -> int:
        """The inner integrator's evaluations per step (steps that jump cost more, see above)."""
        return self.inner.nfe_per_step

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        check_y("RePaint", self.operator, self.y, x.shape)
        state = self.inner.init(predictor, x, key, ts)
        return state.replace(memory=(state.memory, ts, jnp.asarray(0, jnp.int32)))

    def _replace_step(self, predictor, state, t, t_next):
        state = self.inner.step(predictor, state, t, t_next)
        path, x, op = predictor.path, state.position, self.operator
        key, sub = jr.split(state.key)
        z = jr.normal(sub, x.shape, x.dtype)
        known = path.alpha(t_next) * self.y + path.sigma(t_next) * op.apply(z)
        x = x + op.pinv(known - op.apply(x))
        return state.replace(position=x.astype(state.position.dtype), key=key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        inner_memory, ts, i = state.memory
        state = self._replace_step(predictor, state.replace(memory=inner_memory), t, t_next)
        k, j, path = i + 1, self.jump_length, predictor.path

        def one_pass(_, state):
            t_low, t_high = ts[k], ts[k - j]
            key, sub = jr.split(state.key)
            x = state.position
            ratio = path.alpha(t_high) / path.alpha(t_low)
            var = path.sigma(t_high) ** 2 - (ratio * path.sigma(t_low)) ** 2
            z = jr.normal(sub, x.shape, x.dtype)
            x_up = (ratio * x + jnp.sqrt(jnp.maximum(var, 0.0)) * z).astype(x.dtype)
            memory = self.inner.init(predictor, x_up, key, ts).memory
            state = state.replace(position=x_up, key=key, memory=memory)
            return lax.fori_loop(
                0, j, lambda m, st: self._replace_step(predictor, st, ts[k - j + m], ts[k - j + m + 1]), state
            )

        def resample(state):
            return lax.fori_loop(0, self.n_resample - 1, one_pass, state)

        if self.n_resample > 1:
            state = lax.cond(k % j == 0, resample, lambda st: st, state)
        return state.replace(memory=(state.memory, ts, k))


class DAPS(AbstractIntegrator):
    r"""Decoupled annealing posterior sampling (Zhang et al. 2024). Each step from $t$ to $s$ decouples
    the particle from its noise: it draws $x_0$ approximately from $p(x_0 \mid x_t, y)$ by Langevin
    dynamics, then noises it afresh to time $s$:

    $$\hat x_0 = \mathrm{ODE}_{t\to 0}(x_t), \qquad
      x_0^{(j+1)} = x_0^{(j)} + \eta_t\,\nabla\Big[-\frac{\|x_0 - \hat x_0\|^2}{2r_t^2} + \log p(y \mid x_0)
      \Big]_{x_0^{(j)}} + \sqrt{2\eta_t}\, z_j, \qquad x_s = \alpha_s x_0^{(N)} + \sigma_s z,$$

    from $x_0^{(0)} = \hat x_0$, with $N$ = `n_langevin`, $\log p(y \mid x_0)$ the operator's Gaussian
    log-likelihood (any operator; needs $\sigma_y > 0$), $r_t^2 = v\sigma_t^2/(v\alpha_t^2 + \sigma_t^2)$
    ($\mathrm{Var}[x_0 \mid x_t]$ for data $\mathcal N(\mu, vI)$; the paper's $r_t = \sigma_t$ is the
    limit $v\to\infty$ of the VE path) and step $\eta_t$ = `step_size` $\cdot\, r_t^2$ (the paper anneals
    $\eta$ linearly in $t$; scaling it with $r_t^2$ keeps the prior term's contraction $1 - $
    `step_size` at every $t$). Stable when `step_size` $(1 + r_t^2\|A\|^2/\sigma_y^2) < 2$. If $x_t \sim
    p_t(\cdot \mid y)$ and the Langevin chain samples $p(x_0 \mid x_t, y)$ exactly, then $x_s \sim
    p_s(\cdot \mid y)$: for a Gaussian prior with covariance $vI$ the only errors are the chain's
    (unadjusted Langevin keeps the mean exact and biases the covariance by $O(\eta)$).

    $\hat x_0$ integrates the prior probability-flow ODE from $t$ to 0 with `n_ode_steps`
    exponential ([`DDIM`][diffuse_eqx.DDIM]) steps (1: Tweedie's $\hat x_0(x_t)$; the paper uses a few
    Euler steps). The last step ($s = 0$) returns $x_0^{(N)}$. NFE per step: `n_ode_steps` (the
    Langevin steps use only the likelihood's gradient).

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
    order: ClassVar[int] = 0

    def __check_init__(self):
        check_operator("DAPS", self.operator)
        check_noisy("DAPS", self.operator, "its Langevin steps follow the Gaussian likelihood")
        check_matrix_y("DAPS", self.operator, self.y)
        _check_count("DAPS", "n_langevin", self.n_langevin, minimum=0)
        _check_count("DAPS", "n_ode_steps", self.n_ode_steps)
        check_positive("DAPS", "step_size", self.step_size)
        check_positive("DAPS", "data_var", self.data_var)
        if concrete(self.data_var) and not jnp.isfinite(self.data_var):
            raise ValueError(f"DAPS data_var must be finite; got data_var={self.data_var}.")

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


class RedDiff(AbstractIntegrator):
    r"""RED-diff (Mardani et al. 2023): variational posterior $q = \mathcal N(\mu, \sigma^2 I)$,
    $\sigma \to 0$, with $\mu$ optimised by stochastic gradient over a descending time schedule (the
    timer's grid). The particle's position is $\mu$. Each step at time $t$ draws $\varepsilon$, sets
    $x_t = \alpha_t\mu + \sigma_t\varepsilon$ and takes one optimiser step on

    $$\nabla_\mu\,\ell = w_{\rm obs}\, J_{\mathcal A}(\mu)^\top\big(\mathcal A(\mu) - y\big)
      + \lambda\,\frac{\sigma_t}{\alpha_t}\big(\hat\varepsilon(x_t, t) - \varepsilon\big)
      = w_{\rm obs}\, J_{\mathcal A}(\mu)^\top\big(\mathcal A(\mu) - y\big)
      + \lambda\big(\mu - \hat x_0(x_t, t)\big),$$

    the gradient of $\tfrac{w_{\rm obs}}{2}\|y - \mathcal A(\mu)\|^2$ plus the score-distillation
    regulariser $\lambda_t\, \mathrm{sg}[\hat\varepsilon - \varepsilon]^\top\mu$ with the paper's
    weight $\lambda_t = \lambda\,\sigma_t/\alpha_t$ (inverse square-root SNR). The two forms are
    equal since $\varepsilon = (x_t - \alpha_t\mu)/\sigma_t$ and
    $\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t$; the second is finite where $\alpha_t = 0$
    and is what is computed. Both terms are sums over entries (the official code averages each over
    its entries, which rescales $\lambda$ by $d_y/d_x$).

    Optimisers: `"adam"` (the paper's; betas $(0.9, 0.99)$, $\epsilon = 10^{-8}$, bias-corrected) or
    `"sgd"` ($\mu \leftarrow \mu - $ `lr` $\nabla_\mu\ell$). The result is an optimiser's iterate, not a
    posterior sample: particles differ only through the $\varepsilon$ draws (and the start). The
    measurement noise level is not used ($w_{\rm obs}$ plays its part). One evaluation per step.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{mardani2024variational,
          title={A Variational Perspective on Solving Inverse Problems with Diffusion Models},
          author={Mardani, Morteza and Song, Jiaming and Kautz, Jan and Vahdat, Arash},
          booktitle={ICLR}, year={2024}}
        ```

    **Arguments:**

    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator].
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `lr`: the learning rate (default 0.1).
    - `reg_weight`: $\lambda \ge 0$ (default 0.25, the paper's).
    - `obs_weight`: $w_{\rm obs} > 0$ (default 1).
    - `optimizer`: `"adam"` (default) or `"sgd"`.
    - `mu_init`: the start $\mu_0$: `"pinv"` ($A^+ y$, default; needs `operator.pinv`), `"zeros"`, or
      `"noise"` (the [`Denoiser`][diffuse_eqx.Denoiser]'s initial draw).
    """

    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    lr: Hyperparameter = 0.1
    reg_weight: Hyperparameter = 0.25
    obs_weight: Hyperparameter = 1.0
    optimizer: Literal["adam", "sgd"] = eqx.field(default="adam", static=True)
    mu_init: Literal["pinv", "zeros", "noise"] = eqx.field(default="pinv", static=True)
    order: ClassVar[int] = 0
    nfe_per_step: ClassVar[int] = 1

    def __check_init__(self):
        check_operator("RedDiff", self.operator, pinv=self.mu_init == "pinv")
        check_matrix_y("RedDiff", self.operator, self.y)
        check_positive("RedDiff", "lr", self.lr)
        check_positive("RedDiff", "obs_weight", self.obs_weight)
        if concrete(self.reg_weight) and not float(self.reg_weight) >= 0:
            raise ValueError(f"RedDiff reg_weight must be >= 0; got reg_weight={self.reg_weight}.")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"RedDiff optimizer must be 'adam' or 'sgd'; got {self.optimizer!r}.")
        if self.mu_init not in ("pinv", "zeros", "noise"):
            raise ValueError(f"RedDiff mu_init must be 'pinv', 'zeros' or 'noise'; got {self.mu_init!r}.")

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        check_y("RedDiff", self.operator, self.y, x.shape)
        if self.mu_init == "pinv":
            mu = self.operator.pinv(self.y).astype(x.dtype)
        elif self.mu_init == "zeros":
            mu = jnp.zeros_like(x)
        else:
            mu = x
        memory = (jnp.zeros_like(x), jnp.zeros_like(x), jnp.asarray(0, jnp.int32))
        return IntegratorState(mu, key, memory)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        mu, path, op = state.position, predictor.path, self.operator
        m, v, k = state.memory
        key, sub = jr.split(state.key)
        x_t = path.alpha(t) * mu + path.sigma(t) * jr.normal(sub, mu.shape, mu.dtype)
        pred, state = evaluate(predictor, state, x_t.astype(mu.dtype), t)
        grad = -self.obs_weight * op.vjp(mu, op.residual(mu, self.y)) + self.reg_weight * (mu - pred.x0)
        k = k + 1
        if self.optimizer == "adam":
            b1, b2 = 0.9, 0.99
            m = (b1 * m + (1 - b1) * grad).astype(mu.dtype)
            v = (b2 * v + (1 - b2) * grad**2).astype(mu.dtype)
            m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
            mu = mu - self.lr * m_hat / (jnp.sqrt(v_hat) + 1e-8)
        else:
            mu = mu - self.lr * grad
        return state.replace(position=mu.astype(state.position.dtype), key=key, memory=(m, v, k))
