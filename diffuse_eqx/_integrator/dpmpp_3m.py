from typing import ClassVar

import jax.numpy as jnp

from .._custom_types import Hyperparameter, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor
from .base import AbstractMultistep, History, IntegratorState, data_step, evaluate
from .dpmpp_2m import multistep_data


class DPMpp3M(AbstractMultistep):
    r"""DPM-Solver++(3M) (Lu et al. 2022): a multistep third-order exponential integrator in data
    prediction. With $u = \lambda - \lambda_t$, $h = \lambda_s - \lambda_t$, let $p(u)$ be the
    quadratic through the last three data estimates $\hat x_0(x_t, t)$, $\hat x_0^{(1)}$,
    $\hat x_0^{(2)}$ at $u = 0, -h_0, -h_0 - h_1$, with divided differences
    $f_{01} = (\hat x_0 - \hat x_0^{(1)})/h_0$, $f_{12}$ likewise and
    $f_{012} = (f_{01} - f_{12})/(h_0 + h_1)$. The step integrates it exactly:

    $$x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s\!\int_0^h e^{u - h} p(u)\,du
      = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s\big[g_0\,\hat x_0 + h\, g_1 (f_{01} + h_0 f_{012})
      + h^2 g_2\, f_{012}\big],$$

    $g_0 = 1 - e^{-h}$, $g_1 = 1 - g_0/h$, $g_2 = 1 - 2 g_1/h$. One evaluation per step. The first
    step has no history and is first order, the second is [`DPMpp2M`][diffuse_eqx.DPMpp2M]'s; the
    final step to $\sigma = 0$ ($h = \infty$) is first order. After a step from $\alpha = 0$ (`Flow`
    from $t = 1$) an infinite $\lambda$ difference is replaced by the difference in $t$ times
    $\dot\lambda$, as in `multistep_data`.

    !!! note "Reference implementations"
        DPM-Solver's `multistep_dpm_solver_third_update`, diffusers'
        `DPMSolverMultistepScheduler(solver_order=3)` and k-diffusion's `sample_dpmpp_3m_sde` weigh
        $D_2 = h^2 f_{012}$ by $\tfrac12 g_2$ instead of $g_2$: half the quadratic term, which makes
        them second order. With that term doubled they agree with this class to rounding
        (`tests/test_integrators_dpm3_ipndm.py`). diffusers also lowers the second-to-last step to
        second order on grids of fewer than 15 steps (`lower_order_final=True`); this class does
        not (diffusers' `lower_order_final=False`).

    The step is third order given its history (tested from the exact history). `order`, the global
    order of a run from an empty history, is 2: the first step's (DDIM's) $O(h^2)$ error is never
    made up, as for any multistep method started at lower order; the third-order steps lower the
    error constant.

    ??? cite "Reference"
        ```bibtex
        @article{lu2022dpmsolverpp,
          title={DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          journal={arXiv:2211.01095}, year={2022}}
        ```
    """

    history_size: ClassVar[int] = 2

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
        d, memory = multistep_data_3m(path, pred.x0, t, t_next, state.memory)
        return state.replace(position=data_step(path, x, t, t_next, d), memory=memory)


def multistep_data_3m(
    path: AbstractPath,
    x0_t: Particle,
    t: Time,
    t_next: Time,
    history: History,
    eta: Hyperparameter = 0.0,
) -> tuple[Particle, History]:
    r"""DPM-Solver++(3M)'s data estimate $D$ for the step $t \to t_{\rm next}$ (the $\hat x_0$ that
    [`data_step`][diffuse_eqx.data_step] needs: $\alpha_s g_0 D$ is the integral of
    [`DPMpp3M`][diffuse_eqx.DPMpp3M]), and the history with $\hat x_0(x_t, t)$ pushed.

    $D = \hat x_0 + [h g_1 (f_{01} + h_0 f_{012}) + h^2 g_2 f_{012}]/g_0$ with the $g_k$ at
    $H = (1 + \eta) h$, the exponent of the SDE of [`DPMpp3MSDE`][diffuse_eqx.DPMpp3MSDE] ($\eta = 0$:
    the ODE). With one past estimate it is `multistep_data`'s $D$; with none, or to $\sigma = 0$,
    $\hat x_0$. An infinite $h_1$ (the oldest estimate at $\alpha = 0$) is replaced by
    $(t_1 - t_2)\,\dot\lambda(t_1)$."""
    d2, pushed = multistep_data(path, x0_t, t, t_next, history)
    (x0_1, x0_2), (t_1, t_2) = history.values, history.times
    lam_t, lam_1 = path.lambda_(t), path.lambda_(t_1)
    h, h_0, h_1 = path.lambda_(t_next) - lam_t, lam_t - lam_1, lam_1 - path.lambda_(t_2)
    d_lam_1 = path.d_alpha(t_1) / path.alpha(t_1) - path.d_sigma(t_1) / path.sigma(t_1)
    h_1 = jnp.where(jnp.isfinite(h_1), h_1, (t_1 - t_2) * d_lam_1)
    third = history.has(1) & jnp.isfinite(h)
    h, h_0, h_1 = (jnp.where(third, v, 1.0) for v in (h, h_0, h_1))  # finite where unused
    f_01, f_12 = (x0_t - x0_1) / h_0, (x0_1 - x0_2) / h_1
    f_012 = (f_01 - f_12) / (h_0 + h_1)
    big_h = (1 + eta) * h
    g_0 = -jnp.expm1(-big_h)
    g_1 = 1 + jnp.expm1(-big_h) / big_h
    g_2 = 1 - 2 * g_1 / big_h
    d3 = x0_t + (h * g_1 * (f_01 + h_0 * f_012) + h**2 * g_2 * f_012) / g_0
    return jnp.where(third, d3, d2).astype(x0_t.dtype), pushed
