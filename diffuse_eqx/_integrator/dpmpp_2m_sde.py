from typing import ClassVar

import jax.numpy as jnp

from .._check import check_nonnegative, check_traced, finite_nonnegative
from .._custom_types import Hyperparameter, Time
from .._predictor import AbstractPredictor
from .base import AbstractMultistep, IntegratorState, evaluate, noise, step_coefficients
from .dpmpp_2m import multistep_data


class DPMpp2MSDE(AbstractMultistep):
    r"""SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's `sample_dpmpp_2m_sde`, midpoint
    variant): the multistep second-order data-prediction solver of
    [`DPMpp2M`][diffuse_eqx.DPMpp2M] applied to the SDE whose noise is $\eta$ times that of the
    reverse SDE per unit of $\lambda = \log(\alpha/\sigma)$. With $h = \lambda_s - \lambda_t$,
    $r = h_{\rm prev}/h$ and

    $$D = \big(1 + \tfrac{1}{2r}\big)\hat x_0(x_t, t) - \tfrac{1}{2r}\,\hat x_0^{\rm prev},$$

    $$x_s = \alpha_s D + \sigma_s\Big[e^{-\eta h}\,\frac{x_t - \alpha_t D}{\sigma_t}
      + \sqrt{1 - e^{-2\eta h}}\; z\Big], \qquad z \sim \mathcal N(0, I)$$

    (the paper's form rewritten, finite at both ends). $\eta = 0$ is
    [`DPMpp2M`][diffuse_eqx.DPMpp2M] (the same arithmetic); $\eta = 1$ is the SDE-DPM-Solver++(2M) of
    Lu et al. Endpoints as in `DPMpp2M`, and a step from $\alpha_t = 0$ with $\eta > 0$ draws
    $x_s = \alpha_s \hat x_0 + \sigma_s z$, the exact limit. One evaluation per step. `order` is 2, the
    order as an ODE solver ($\eta = 0$); no weak order 2 is claimed for $\eta > 0$. Derivation:
    [Concepts → SDE-DPM-Solver++(2M)][sde-dpm-solver].

    ??? cite "Reference"
        ```bibtex
        @article{lu2022dpmsolverpp,
          title={DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
          author={Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan
                  and Zhu, Jun},
          journal={arXiv:2211.01095}, year={2022}}
        ```

    **Arguments:**

    - `eta`: the noise $\eta \ge 0$ (default 1; 0 is the deterministic `DPMpp2M`).
    """

    eta: Hyperparameter = 1.0
    history_size: ClassVar[int] = 1

    def __check_init__(self):
        check_nonnegative("DPMpp2MSDE eta", self.eta)

    @property
    def order(self) -> int:
        return 2

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path, eta = state.position, predictor.path, self.eta
        pred, state = evaluate(predictor, state, x, t)
        d, memory = multistep_data(path, pred.x0, t, t_next, state.memory)
        z, state = noise(state)
        z = check_traced(z, "DPMpp2MSDE eta", self.eta, finite_nonnegative, ">= 0 and finite")
        c = step_coefficients(path, t, t_next)
        eta_h = eta * jnp.where(eta == 0, 0.0, c.h)  # 0 at eta = 0 even where h = inf
        x_next = c.a_s * d + (c.s_s / c.s_t) * jnp.exp(-eta_h) * (x - c.a_t * d)
        x_next = x_next + c.s_s * jnp.sqrt(-jnp.expm1(-2 * eta_h)) * z
        return state.replace(position=x_next.astype(x.dtype), memory=memory)
