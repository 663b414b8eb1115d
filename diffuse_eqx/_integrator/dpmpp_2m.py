from typing import ClassVar

import jax.numpy as jnp

from .._custom_types import Grid, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, data_step, evaluate


class DPMpp2M(AbstractIntegrator):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep second-order exponential integrator
    in data prediction. With $h = \lambda_s - \lambda_t$, $h_{\rm prev} = \lambda_t - \lambda_{\rm prev}$,
    $r = h_{\rm prev}/h$:

    $$D = \big(1 + \tfrac{1}{2r}\big)\hat x_0(x_t, t) - \tfrac{1}{2r}\,\hat x_0^{\rm prev}, \qquad
      x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\, D .$$

    One evaluation per step; the previous estimate and its $\lambda$ are carried in the state. The
    first step has no history and is first order; the final step to $\sigma = 0$ ($h = \infty$) is
    first order too, as in DPM-Solver and k-diffusion. A step after $\lambda_{\rm prev} = -\infty$
    (`Flow` from $t = 1$) gets $1/(2r) = 0$, its exact limit.

    ??? cite "Reference"
        ```bibtex
        @article{lu2022dpmsolverpp,
          title={DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          journal={arXiv:2211.01095}, year={2022}}
        ```
    """

    order: ClassVar[int] = 2
    nfe_per_step: ClassVar[int] = 1

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        memory = (jnp.zeros_like(x), jnp.zeros((), ts.dtype), jnp.asarray(False))
        return IntegratorState(x, key, memory)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        x0_prev, lam_prev, has_prev = state.memory
        pred, state = evaluate(predictor, state, x, t)
        x0_t = pred.x0
        lam_t, lam_s = path.lambda_(t), path.lambda_(t_next)
        h, h_prev = lam_s - lam_t, lam_t - lam_prev
        use_history = has_prev & jnp.isfinite(h)
        half_inv_r = jnp.where(use_history, h / jnp.where(use_history, 2 * h_prev, 1.0), 0.0)
        d = x0_t + half_inv_r * (x0_t - x0_prev)
        x_next = data_step(path, x, t, t_next, d)
        memory = (x0_t, lam_t.astype(lam_prev.dtype), jnp.asarray(True))
        return state.replace(position=x_next, memory=memory)
