import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from .._custom_types import NFE, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractPosteriorGuidance
from .operators import AbstractLinearOperator, Measurement


class DDNM(AbstractPosteriorGuidance):
    r"""Denoising diffusion null-space model (Wang et al. 2023): the denoised estimate is corrected in
    the range of $A^\top$ and kept in its null space,

    $$x_0' = \hat x_0 + \lambda_t A^+\big(y - A\hat x_0\big), \qquad
      \varepsilon' = \frac{x - \alpha_t x_0'}{\sigma_t}$$

    (a [`DDIM`][diffuse_eqx.DDIM] step with `eta=1` is then the paper's). Noiseless ($\sigma_y = 0$):
    $\lambda_t = 1$, and the final data step returns a sample with $Ax = y$. Noisy: $\lambda_t = \min(1,
    \sigma_t/(\alpha_t\sigma_y))$, DDNM$^+$'s range-space weight (its lowered DDPM noise is not done
    here). Meant for data-prediction steps (DDIM, DPM-Solver++). One predictor evaluation (NFE: the
    predictor's), no derivative. Details: [Concepts → DDNM's projection][ddnm-projection].

    ??? cite "Reference"
        ```bibtex
        @inproceedings{wang2023zeroshot,
          title={Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model},
          author={Wang, Yinhuai and Yu, Jiwen and Zhang, Jian},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: an [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator] (its `pinv`).
    - `y`: the measurement, shaped like `operator.apply(x)`.
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The range-null-space corrected prediction (one predictor evaluation)."""
        t = jnp.asarray(t)
        pred, state, nfe = self.predictor.evaluate(x, t, state)
        a, s = self.path.alpha(t), self.path.sigma(t)
        sigma_y = jnp.asarray(self.operator.sigma_y)
        noisy = sigma_y * a > 0
        lam = jnp.where(noisy, jnp.minimum(1.0, s / jnp.where(noisy, sigma_y * a, 1.0)), 1.0)
        correction = self.operator.pinv(self.operator.residual(pred.x0, self.y))
        x0 = (pred.x0 + lam * correction).astype(x.dtype)
        noise = jnp.where(s == 0, pred.noise, (x - a * x0) / jnp.where(s == 0, 1.0, s))
        return Prediction(x0=x0, noise=noise.astype(x.dtype)), state, nfe
