import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Grid, Key, Particle, Scalar, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, History, IntegratorState, Shared, data_step, evaluate
from .unipc import check_solver_order, finite_lambda, lagrange, node_lambdas


class DEIS(AbstractIntegrator):
    r"""DEIS (Zhang & Chen 2023), the multistep exponential integrator of diffusers'
    `DEISMultistepScheduler` (`algorithm_type="deis"`, `solver_type="logrho"`): the noise estimate
    is extrapolated by the polynomial through its last $p$ values in $\log\rho$,
    $\rho = \sigma/\alpha = e^{-\lambda}$, and integrated exactly against $d\rho$, the probability-flow
    ODE being $d(x/\alpha) = \hat\varepsilon\, d\rho$. With $w = \lambda - \lambda_t$, nodes
    $w_k = \lambda_{t_k} - \lambda_t < 0$ at the earlier times, $\ell_k$ the Lagrange basis on
    $\{0, w_1, \dots, w_{p-1}\}$ and $h = \lambda_s - \lambda_t$:

    $$x_s = \alpha_s \hat x_0 + \sigma_s \hat\varepsilon
      - \alpha_s \rho_t \sum_{k=1}^{p-1} c_k\, (\hat\varepsilon^{(k)} - \hat\varepsilon), \qquad
      c_k = \int_0^h \ell_k(w)\, e^{-w}\, dw = \sum_j [w^j]\ell_k\ \gamma(j + 1, h),$$

    $\gamma$ the lower incomplete gamma function: the DDIM step plus the multistep terms, finite at
    both ends ($\rho_s = 0$, $h = \infty$: $\gamma(j + 1, \infty) = j!$; a step from $\alpha_t = 0$
    is first order). One evaluation per step. As in diffusers: the order rises from 1 while the
    history fills and, on a grid of fewer than 15 steps, the last step is first order and the one
    before it at most second order (`lower_order_final`). A node at $\lambda = -\infty$ (`Flow` at
    $t = 1$) takes the first-order value $\lambda_j + (t_k - t_j)\dot\lambda(t_j)$ from its newer
    neighbour $t_j$, as in [`DPMpp2M`][diffuse_eqx.DPMpp2M].

    diffusers' flow grid (`use_flow_sigmas=True`) is `0.999 (1 - i/n)`, $i < n$, with its last
    sigma repeated: its last model call is spent on a step of length zero and the result stays at
    $\sigma = 0.999/n$; on that same grid this integrator does the same.

    `order` is 2 (1 for $p = 1$): the first step is first order, which caps a fixed grid at second
    order whatever $p$ (`order=3` only lowers the error constant; measured orders lie above
    2 until the steps are small).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{zhang2023deis,
          title={Fast Sampling of Diffusion Models with Exponential Integrator},
          author={Zhang, Qinsheng and Chen, Yongxin},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `order`: $p \in \{1, 2, 3\}$, the number of noise estimates in the polynomial (default 2;
      diffusers' `solver_order`), kept as the field `solver_order` (the property `order` is the ODE
      order).
    """

    solver_order: int = eqx.field(static=True)
    history_size: ClassVar[int] = 2

    def __init__(self, order: int = 2):
        self.solver_order = order

    def __check_init__(self):
        check_solver_order("DEIS", self.solver_order, (1, 2, 3))

    @property
    def order(self) -> int:
        return 1 if self.solver_order == 1 else 2

    @property
    def nfe_per_step(self) -> int:
        return 1

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """An empty history of noise estimates and (shared) the steps left and whether the grid
        has fewer than 15 steps."""
        n_steps = ts.shape[0] - 1
        grid = Shared((jnp.asarray(n_steps, jnp.int32), jnp.asarray(n_steps < 15)))
        return IntegratorState(x, key, (History.empty(x, ts, self.history_size), grid))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        (history, grid), path, p = state.memory, predictor.path, self.solver_order
        remaining, short = grid.value
        x = state.position
        pred, state = evaluate(predictor, state, x, t)
        order = jnp.minimum(history.count + 1, jnp.where(short, jnp.minimum(p, remaining), p))
        times, eps = history.times[: p - 1], history.values[: p - 1]
        lam, ok_t = node_lambdas(path, jnp.concatenate([jnp.asarray(t, times.dtype)[None], times]))
        lam_s, ok_s = finite_lambda(path, jnp.asarray(t_next, lam.dtype)[None])
        # h = inf (from alpha = 0, or to sigma = 0): the moments' limits m!, computed from a finite
        # stand-in so that no derivative is infinite (see `finite_lambda`)
        h_finite = ok_t & ok_s[0]
        w, h = [0.0] + [lam[k] - lam[0] for k in range(1, p)], jnp.where(h_finite, lam_s[0] - lam[0], 1.0)
        moments = [jnp.where(h_finite, _moment(m, h), math.factorial(m)) for m in range(p)]
        a_t = path.alpha(t)
        scale = path.alpha(t_next) * path.sigma(t) / jnp.where(a_t > 0, a_t, 1.0)  # alpha_s rho_t
        weights = [jnp.zeros((), lam.dtype)] * (p - 1)  # order 1: DDIM
        for q in range(2, p + 1):  # the polynomial through q estimates
            for k in range(1, q):
                c = sum(a * m for a, m in zip(lagrange(w[:q], k), moments))
                weights[k - 1] = jnp.where(order == q, scale * c, weights[k - 1])
        weights = jnp.stack(weights) if weights else jnp.zeros(0, lam.dtype)
        correction = jnp.tensordot(weights, eps - pred.noise[None], axes=1)
        x_next = data_step(path, x, t, t_next, pred.x0) - correction
        memory = (history.push(pred.noise, t), Shared((remaining - 1, short)))
        return state.replace(position=x_next.astype(x.dtype), memory=memory)


def _moment(m: int, h: Scalar) -> Scalar:
    r"""$\gamma(m + 1, h) = \int_0^h w^m e^{-w}\, dw$ ($m!$ at $h = \infty$): its series
    $h^{m+1} \sum_{j \ge 0} (-h)^j / (j!\,(m + 1 + j))$ for $h < 1$ (no cancellation),
    $m!\,\big(1 - e^{-h} \sum_{i \le m} h^i / i!\big)$ otherwise."""
    small = h < 1
    hs, hl = jnp.where(small, h, 0.0), jnp.where(small, 1.0, h)
    series = 0.0
    for j in range(19, -1, -1):  # Horner
        series = series * hs + (-1) ** j / (math.factorial(j) * (m + 1 + j))
    tail = jnp.exp(-hl) * sum(hl**i / math.factorial(i) for i in range(m + 1))
    closed = math.factorial(m) * (1 - jnp.where(jnp.isinf(hl), 0.0, tail))
    return jnp.where(small, hs ** (m + 1) * series, closed)
