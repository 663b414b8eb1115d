import jax.numpy as jnp

from .._check import check_interval, check_positive
from .._custom_types import Hyperparameter, Particle, Scalar
from .._predictor import Prediction
from .base import AbstractConditional, AbstractGuidance


class APG(AbstractGuidance):
    r"""Adaptive projected guidance (Sadat et al. 2024): CFG in data space, with the guidance
    direction's component parallel to the conditional estimate (which oversaturates) down-weighted,
    its norm capped and a momentum on it. At each evaluation, with
    $\Delta = \hat x_0^c - \hat x_0^u$:

    $$\bar\Delta \leftarrow \Delta + \beta\,\bar\Delta, \qquad
      \Delta' = \bar\Delta \min\Big(1, \frac{r}{\lVert\bar\Delta\rVert}\Big), \qquad
      \Delta'_\parallel = \frac{\langle \Delta', \hat x_0^c\rangle}{\lVert \hat x_0^c\rVert^2}\,\hat x_0^c,
      \quad \Delta'_\perp = \Delta' - \Delta'_\parallel,$$

    $$\hat x_0 = \hat x_0^c + (w - 1)\,\big(\Delta'_\perp + \eta\,\Delta'_\parallel\big),$$

    the norms and inner products over all of the particle's elements, and $\hat\varepsilon$ the noise
    consistent with $\hat x_0$ at the same $x$. The running average $\bar\Delta$ (zero at the start) is
    the predictor's state, updated at every evaluation. With $\eta = 1$, no threshold and $\beta = 0$
    this is [`CFG`][diffuse_eqx.CFG] with scale $w$. The paper's form, not diffusers' default
    ([Guidance → APG][apg]). Each evaluation costs 2 network evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{sadat2025eliminating,
          title={Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion
                 Models},
          author={Sadat, Seyedmorteza and Hilliges, Otmar and Weber, Romann M.},
          booktitle={ICLR}, year={2025}}
        ```

    **Arguments:**

    - `predictor`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `scale`: the guidance scale $w \ge 0$ (1: the conditional model).
    - `eta`: the weight $\eta \in [0, 1]$ of the parallel component (default 0, the paper's choice).
    - `norm_threshold`: the cap $r > 0$ on the norm of the update, or `None` (default) for none.
    - `momentum`: $\beta \in (-1, 1)$ (default 0: no momentum; the paper uses negative values).
    """

    predictor: AbstractConditional
    scale: Hyperparameter
    eta: Hyperparameter = 0.0
    norm_threshold: Hyperparameter | None = None
    momentum: Hyperparameter = 0.0

    def __check_init__(self):
        check_interval("APG eta", self.eta, 0.0, 1.0, hint=" (1 is CFG's direction)")
        check_positive("APG norm_threshold", self.norm_threshold, ", or None for no threshold")
        check_interval(
            "APG momentum", self.momentum, -1.0, 1.0, open_lo=True, open_hi=True, hint=" (0: none)"
        )

    def init_memory(self, x: Particle) -> Particle:
        r"""The running average $\bar\Delta = 0$."""
        return jnp.zeros_like(x)

    def combine(
        self, cond: Prediction, uncond: Prediction, t: Scalar, memory: Particle
    ) -> tuple[Prediction, Particle]:
        average = (cond.x0 - uncond.x0 + self.momentum * memory).astype(memory.dtype)
        diff = average
        if self.norm_threshold is not None:
            norm = jnp.sqrt(jnp.sum(diff**2))
            diff = diff * jnp.minimum(1, self.norm_threshold / norm)  # r / 0 = inf: no rescaling
        c = cond.x0
        c2 = jnp.sum(c**2)
        parallel = jnp.where(c2 > 0, jnp.sum(diff * c) / jnp.where(c2 > 0, c2, 1), 0) * c
        update = (diff - parallel) + self.eta * parallel
        x0 = c + (self.scale - 1) * update
        ratio = self.path.alpha(t) / self.path.sigma(t)
        noise = cond.noise - (self.scale - 1) * ratio * update
        return Prediction(x0=x0.astype(c.dtype), noise=noise.astype(cond.noise.dtype)), average
