from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._check import check_positive
from .._custom_types import NFE, Hyperparameter, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractPosteriorGuidance, check_noisy, guided, x0_map
from .operators import AbstractOperator, Measurement, check_differentiable


class DPS(AbstractPosteriorGuidance):
    r"""Diffusion posterior sampling (Chung et al. 2023): the likelihood at the denoised estimate,
    $p(y \mid x_t) \approx p(y \mid x_0 = \hat x_0(x_t))$, differentiated through the network.

    Two variants of the guidance term $g$ (added to the prior score, see
    [`AbstractPosteriorGuidance`][diffuse_eqx.AbstractPosteriorGuidance]):

    - `likelihood="norm"` (the paper's step, Alg. 1 with $\zeta_i = \zeta/\|y - \mathcal A(\hat x_0)\|$, as in
      the official code): $g = -\zeta\,\nabla_x \|y - \mathcal A(\hat x_0(x))\|$;
    - `likelihood="gaussian"`: $g = \zeta\,\nabla_x \log \mathcal N\big(y; \mathcal A(\hat x_0(x)),
      \sigma_y^2 I\big) = \zeta\, J^\top J_{\mathcal A}^\top (y - \mathcal A(\hat x_0))/\sigma_y^2$
      (needs $\sigma_y > 0$; $\zeta = 1$ is the plain approximation above).

    $g$ is a score term, so `scale` ($\zeta$) has the same effect on any grid (the paper's step does not:
    [Concepts → DPS as a score term][dps-score-term]). Not exact even for Gaussian priors. Cost: one
    evaluation of the prior predictor (the NFE counted is the predictor's) and one vector-Jacobian
    product through it. Works with any operator, nonlinear ones included (through its `vjp`).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{chung2023diffusion,
          title={Diffusion Posterior Sampling for General Noisy Inverse Problems},
          author={Chung, Hyungjin and Kim, Jeongsol and Mccann, Michael T. and Klasky, Marc L.
                  and Ye, Jong Chul},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator].
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `scale`: $\zeta > 0$ (default 1).
    - `likelihood`: `"norm"` (default) or `"gaussian"`.
    """

    predictor: AbstractPredictor
    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    scale: Hyperparameter = 1.0
    likelihood: Literal["norm", "gaussian"] = eqx.field(default="norm", static=True)

    def __check_init__(self):
        check_differentiable("DPS", self.operator)
        check_positive("DPS scale", self.scale)
        if self.likelihood not in ("norm", "gaussian"):
            raise ValueError(f"DPS likelihood must be 'norm' or 'gaussian'; got {self.likelihood!r}.")
        if self.likelihood == "gaussian":
            check_noisy("DPS", self.operator, "likelihood='gaussian' divides by sigma_y^2")

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and one VJP through it."""
        t = jnp.asarray(t)
        x0, pullback, (pred, state, nfe) = jax.vjp(x0_map(self.predictor, t, state), x, has_aux=True)
        r = self.operator.residual(x0, self.y)
        grad_r = self.operator.vjp(x0, r)  # J_A^T r = grad_{x0} of -|r|^2 / 2
        if self.likelihood == "norm":
            norm = jnp.sqrt(jnp.sum(jnp.real(r * jnp.conj(r))))
            u = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0) * grad_r
        else:
            sigma_y = jnp.asarray(self.operator.sigma_y)
            sigma_y = eqx.error_if(sigma_y, sigma_y <= 0, "DPS likelihood='gaussian' needs sigma_y > 0.")
            u = grad_r / sigma_y**2
        (g,) = pullback((self.scale * u).astype(x0.dtype))
        return guided(self.path, t, pred, g), state, nfe
