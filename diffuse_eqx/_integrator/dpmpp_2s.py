import jax.lax as lax
import jax.numpy as jnp

from .._custom_types import Time
from .._predictor import AbstractPredictor
from .base import AbstractSingleStep, IntegratorState, data_step, evaluate


class DPMpp2S(AbstractSingleStep):
    r"""DPM-Solver++(2S) (Lu et al. 2022, Alg. 1 with $r = 1/2$): a single-step second-order
    exponential integrator in data prediction, with its intermediate point at the midpoint in
    $\lambda = \log(\alpha/\sigma)$, not in $t$:

    $$\lambda_u = \tfrac12(\lambda_t + \lambda_s),\quad
      u_t = \frac{\sigma_u}{\sigma_t} x_t - \alpha_u (e^{-h/2} - 1)\,\hat x_0(x_t, t),\quad
      x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\,\hat x_0(u_t, u).$$

    Two evaluations per step. Where $h$ is infinite, at a step from $\alpha = 0$ (`Flow` at $t = 1$)
    or to $\sigma = 0$ (the final step to $t = 0$), there is no midpoint in $\lambda$: that step is
    the first-order update (DDIM) with one evaluation. Its local error is still $O(h^2)$, so the
    global order stays 2.

    ??? cite "Reference"
        ```bibtex
        @article{lu2022dpmsolverpp,
          title={DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          journal={arXiv:2211.01095}, year={2022}}
        ```
    """

    @property
    def order(self) -> int:
        return 2

    @property
    def nfe_per_step(self) -> int:
        return 2

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        pred, state = evaluate(predictor, state, x, t)
        lam_t, lam_s = path.lambda_(t), path.lambda_(t_next)

        def midpoint(state):
            u = path.t_from_lambda((lam_t + lam_s) / 2)
            pred_u, state = evaluate(predictor, state, data_step(path, x, t, u, pred.x0), u)
            return state.replace(position=data_step(path, x, t, t_next, pred_u.x0))

        def first_order(state):
            return state.replace(position=data_step(path, x, t, t_next, pred.x0))

        finite = jnp.isfinite(lam_t) & jnp.isfinite(lam_s)
        return lax.cond(finite, midpoint, first_order, state)
