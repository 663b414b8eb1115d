from typing import ClassVar

import jax.numpy as jnp

from .._custom_types import Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor
from .base import AbstractMultistep, History, IntegratorState, data_step, evaluate


class DPMpp2M(AbstractMultistep):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep second-order exponential integrator
    in data prediction. With $h = \lambda_s - \lambda_t$, $h_{\rm prev} = \lambda_t - \lambda_{\rm prev}$,
    $r = h_{\rm prev}/h$:

    $$D = \big(1 + \tfrac{1}{2r}\big)\hat x_0(x_t, t) - \tfrac{1}{2r}\,\hat x_0^{\rm prev}, \qquad
      x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\, D .$$

    One evaluation per step; the previous estimate and its $\lambda$ are carried in the state. The
    first step has no history and is first order; the final step to $\sigma = 0$ ($h = \infty$) is
    first order too, as in DPM-Solver and k-diffusion. After $\lambda_{\rm prev} = -\infty$ (`Flow`
    from $t = 1$) the slope in $\lambda$ comes from a difference in $t$ (see
    `multistep_data`).

    ??? cite "Reference"
        ```bibtex
        @article{lu2022dpmsolverpp,
          title={DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          journal={arXiv:2211.01095}, year={2022}}
        ```
    """

    history_size: ClassVar[int] = 1

    @property
    def order(self) -> int:
        return 2

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        pred, state = evaluate(predictor, state, x, t)
        d, memory = multistep_data(path, pred.x0, t, t_next, state.memory)
        return state.replace(position=data_step(path, x, t, t_next, d), memory=memory)


def multistep_data(
    path: AbstractPath, x0_t: Particle, t: Time, t_next: Time, history: History
) -> tuple[Particle, History]:
    r"""DPM-Solver++(2M)'s data estimate $D = \hat x_0 + \frac{1}{2r}(\hat x_0 - \hat x_0^{\rm prev})$
    for the step $t \to t_{\rm next}$, and the history with $\hat x_0(x_t, t)$ pushed.

    $D = \hat x_0$ on the first step and on a step to $\sigma = 0$ ($h = \infty$). After
    $\lambda_{\rm prev} = -\infty$ ($\alpha = 0$: `Flow` from $t = 1$) the backward difference in
    $\lambda$ is infinite; the slope $d\hat x_0/d\lambda$ is then taken from the difference in
    $t$ and $\dot\lambda(t)$, i.e. $h_{\rm prev} = (t - t_{\rm prev})\,\dot\lambda(t)$, which
    keeps the second step second order instead of first."""
    x0_prev, t_prev = history.values[0], history.times[0]
    lam_t = path.lambda_(t)
    h, h_prev = path.lambda_(t_next) - lam_t, lam_t - path.lambda_(t_prev)
    d_lam = path.d_alpha(t) / path.alpha(t) - path.d_sigma(t) / path.sigma(t)
    h_prev = jnp.where(jnp.isfinite(h_prev), h_prev, (t - t_prev) * d_lam)
    use_history = history.has(0) & jnp.isfinite(h)
    half_inv_r = jnp.where(use_history, h / jnp.where(use_history, 2 * h_prev, 1.0), 0.0)
    d = x0_t + half_inv_r * (x0_t - x0_prev)
    return d, history.push(x0_t, t)
