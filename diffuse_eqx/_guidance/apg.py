import jax.numpy as jnp
from jaxtyping import PyTree

from .._check import concrete
from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractConditional, Hyperparameter, check_nonnegative, check_same_shape


class APG(AbstractPredictor):
    r"""Adaptive projected guidance (Sadat et al. 2024): CFG in data space, with the guidance
    direction's component parallel to the conditional estimate (which oversaturates) down-weighted,
    its norm capped and a momentum on it. At each evaluation, with
    $\Delta = \hat x_0^c - \hat x_0^u$:

    $$\bar\Delta \leftarrow \Delta + \beta\,\bar\Delta, \qquad
      \Delta' = \bar\Delta \min\Big(1, \frac{r}{\lVert\bar\Delta\rVert}\Big), \qquad
      \Delta'_\parallel = \frac{\langle \Delta', \hat x_0^c\rangle}{\lVert \hat x_0^c\rVert^2}\,\hat x_0^c,
      \quad \Delta'_\perp = \Delta' - \Delta'_\parallel,$$

    $$\hat x_0 = \hat x_0^c + (w - 1)\,\big(\Delta'_\perp + \eta\,\Delta'_\parallel\big),$$

    the norms and inner products over all of the particle's elements. The noise estimate is the one
    consistent with $\hat x_0$ at the same $x$, $\hat\varepsilon = \hat\varepsilon^c - (w - 1)
    (\alpha_t/\sigma_t)(\Delta'_\perp + \eta\,\Delta'_\parallel)$, so every integrator sees the same
    guided sampler. The running average $\bar\Delta$ (zero at the start) is the predictor's state,
    carried through `lax.scan` by the integrator and updated at every evaluation (as in the
    reference implementation, which updates it at every model call).

    With $\eta = 1$, no threshold and $\beta = 0$ this is [`CFG`][diffuse_eqx.CFG] with scale $w$.
    This follows the paper's form (update added to the conditional estimate); diffusers' default
    adds $w$ times the update to the unconditional estimate instead, which is the same only for
    $\eta = 1$ without rescaling. Each evaluation costs 2 network evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{sadat2025eliminating,
          title={Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion
                 Models},
          author={Sadat, Seyedmorteza and Hilliges, Otmar and Weber, Romann M.},
          booktitle={ICLR}, year={2025}}
        ```

    **Arguments:**

    - `model`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `scale`: the guidance scale $w \ge 0$ (1: the conditional model).
    - `eta`: the weight $\eta \in [0, 1]$ of the parallel component (default 0, the paper's choice).
    - `norm_threshold`: the cap $r > 0$ on the norm of the update, or `None` (default) for none.
    - `momentum`: $\beta \in (-1, 1)$ (default 0: no momentum; the paper uses negative values).
    """

    model: AbstractConditional
    scale: Hyperparameter
    eta: Hyperparameter = 0.0
    norm_threshold: Hyperparameter | None = None
    momentum: Hyperparameter = 0.0

    def __check_init__(self):
        if not isinstance(self.model, AbstractConditional):
            raise TypeError(
                "APG model must be an AbstractConditional (dx.ConditionalNetwork or dx.PredictorPair); "
                f"got {type(self.model).__name__}."
            )
        check_nonnegative("APG", "scale", self.scale)
        if concrete(self.eta) and not 0 <= float(self.eta) <= 1:
            raise ValueError(f"APG eta must be in [0, 1] (1 is CFG's direction); got eta={self.eta}.")
        if self.norm_threshold is not None and concrete(self.norm_threshold):
            if not float(self.norm_threshold) > 0:
                raise ValueError(
                    f"APG norm_threshold must be > 0, or None for no threshold; got {self.norm_threshold}."
                )
        if concrete(self.momentum) and not -1 < float(self.momentum) < 1:
            raise ValueError(f"APG momentum must be in (-1, 1) (0: none); got momentum={self.momentum}.")

    @property
    def path(self) -> AbstractPath:
        return self.model.path

    def init(self, x: Particle) -> PyTree:
        """The conditional model's state and the running average $\\bar\\Delta = 0$."""
        return self.model.init(x), jnp.zeros_like(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided prediction and the updated running average; cost: both members'."""
        model_state, average = state
        cond, uncond, model_state, nfe = self.model.evaluate(x, t, model_state)
        check_same_shape(cond, uncond)
        average = (cond.x0 - uncond.x0 + self.momentum * average).astype(average.dtype)
        diff = average
        if self.norm_threshold is not None:
            norm = jnp.sqrt(jnp.sum(diff**2))
            diff = diff * jnp.minimum(1, self.norm_threshold / norm)  # r / 0 = inf: no rescaling
        c = cond.x0
        c2 = jnp.sum(c**2)
        parallel = jnp.where(c2 > 0, jnp.sum(diff * c) / jnp.where(c2 > 0, c2, 1), 0) * c
        update = (diff - parallel) + self.eta * parallel
        t = jnp.asarray(t)
        ratio = self.path.alpha(t) / self.path.sigma(t)
        x0 = c + (self.scale - 1) * update
        noise = cond.noise - (self.scale - 1) * ratio * update
        pred = Prediction(x0=x0.astype(c.dtype), noise=noise.astype(cond.noise.dtype))
        return pred, (model_state, average), nfe
