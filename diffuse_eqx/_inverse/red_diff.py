from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import optax

from .._check import check_nonnegative, check_positive
from .._custom_types import Grid, Hyperparameter, Key, Particle, Time
from .._integrator import AbstractIntegrator, IntegratorState, evaluate, noise
from .._predictor import AbstractPredictor
from .base import check_y, check_y_now
from .operators import AbstractLinearOperator, AbstractOperator, Measurement, check_differentiable


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
    regulariser with the paper's weight $\lambda\,\sigma_t/\alpha_t$; the second form is the one
    computed (finite where $\alpha_t = 0$). The optimiser is any `optax.GradientTransformation` (default:
    the paper's Adam). The result is an optimiser's iterate, not a posterior sample; $\sigma_y$ is not
    used. One evaluation per step. Details: [Concepts → RED-diff's gradient][red-diff-gradient].

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
    - `lr`: the learning rate of the default Adam (default 0.1; unused when `optimizer` is given).
    - `reg_weight`: $\lambda \ge 0$ (default 0.25, the paper's).
    - `obs_weight`: $w_{\rm obs} > 0$ (default 1).
    - `optimizer`: an `optax.GradientTransformation` (default `None`: the paper's Adam with `lr`).
    - `mu_init`: the start $\mu_0$: `"pinv"` ($A^+ y$, default; needs an
      [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator]), `"zeros"`, or `"noise"` (the
      [`Denoiser`][diffuse_eqx.Denoiser]'s initial draw).
    """

    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    lr: Hyperparameter = 0.1
    reg_weight: Hyperparameter = 0.25
    obs_weight: Hyperparameter = 1.0
    optimizer: optax.GradientTransformation | None = None
    mu_init: Literal["pinv", "zeros", "noise"] = eqx.field(default="pinv", static=True)

    def __check_init__(self):
        check_differentiable("RedDiff", self.operator)
        if self.mu_init not in ("pinv", "zeros", "noise"):
            raise ValueError(f"RedDiff mu_init must be 'pinv', 'zeros' or 'noise'; got {self.mu_init!r}.")
        if self.mu_init == "pinv" and not isinstance(self.operator, AbstractLinearOperator):
            raise TypeError(
                f"RedDiff mu_init='pinv' needs a linear operator (A^+ y); {type(self.operator).__name__} "
                "is not one. Pass mu_init='zeros' or 'noise'."
            )
        check_y_now("RedDiff", self.operator, self.y)
        check_positive("RedDiff lr", self.lr)
        check_positive("RedDiff obs_weight", self.obs_weight)
        check_nonnegative("RedDiff reg_weight", self.reg_weight)

    @property
    def order(self) -> int:
        """0: an optimiser, not an ODE solver."""
        return 0

    @property
    def nfe_per_step(self) -> int:
        return 1

    def _optimizer(self) -> optax.GradientTransformation:
        if self.optimizer is None:
            return optax.adam(self.lr, b1=0.9, b2=0.99, eps=1e-8)
        return self.optimizer

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        check_y("RedDiff", self.operator, self.y, x.shape)
        if self.mu_init == "pinv":
            mu = self.operator.pinv(self.y).astype(x.dtype)
        elif self.mu_init == "zeros":
            mu = jnp.zeros_like(x)
        else:
            mu = x
        return IntegratorState(mu, key, self._optimizer().init(mu))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        mu, path, op = state.position, predictor.path, self.operator
        eps, state = noise(state)
        x_t = (path.alpha(t) * mu + path.sigma(t) * eps).astype(mu.dtype)
        pred, state = evaluate(predictor, state, x_t, t)
        grad = -self.obs_weight * op.vjp(mu, op.residual(mu, self.y)) + self.reg_weight * (mu - pred.x0)
        updates, memory = self._optimizer().update(grad.astype(mu.dtype), state.memory, mu)
        return state.replace(position=optax.apply_updates(mu, updates).astype(mu.dtype), memory=memory)
