from jaxtyping import PyTree

from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractConditional, Hyperparameter, cfg_combine, check_nonnegative


class CFG(AbstractPredictor):
    r"""Classifier-free guidance (Ho & Salimans 2022) with scale $w$:

    $$\hat x_0 = \hat x_0^{u} + w\,(\hat x_0^{c} - \hat x_0^{u}), \qquad
      \hat\varepsilon = \hat\varepsilon^{u} + w\,(\hat\varepsilon^{c} - \hat\varepsilon^{u}),$$

    $u$ the unconditional and $c$ the conditional prediction. $w = 1$ is the conditional model (no
    guidance), $w = 0$ the unconditional one, $w > 1$ extrapolates (Ho & Salimans write
    $(1 + w')\hat\varepsilon^c - w'\hat\varepsilon^u$, i.e. $w = 1 + w'$).

    **One affine map for every parameterization.** Both members satisfy
    $x = \alpha_t \hat x_0 + \sigma_t \hat\varepsilon$ at the same $x$ and the weights
    $(1 - w) + w$ sum to 1, so the guided pair satisfies it too, and its velocity
    $\dot\alpha_t \hat x_0 + \dot\sigma_t\hat\varepsilon$ and score $-\hat\varepsilon/\sigma_t$ are the
    same combination of the members' velocities and scores: combining velocities, scores, noises or
    data estimates gives exactly the same sampler. In score form it follows
    $\nabla\log p_t^u + w(\nabla\log p_t^c - \nabla\log p_t^u) = \nabla\log\big((p_t^u)^{1-w}(p_t^c)^w\big)$.

    Each evaluation costs both members' evaluations (2 network evaluations, one batched call with
    a [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork]). It is computed as
    $\hat c + (w - 1)(\hat c - \hat u)$, so that $w = 1$ returns the conditional prediction exactly.

    ??? cite "Reference"
        ```bibtex
        @article{ho2022classifierfree,
          title={Classifier-Free Diffusion Guidance},
          author={Ho, Jonathan and Salimans, Tim},
          journal={arXiv:2207.12598}, year={2022}}
        ```

    **Arguments:**

    - `model`: the conditional and unconditional predictions, an
      [`AbstractConditional`][diffuse_eqx.AbstractConditional]
      ([`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] or
      [`PredictorPair`][diffuse_eqx.PredictorPair]).
    - `scale`: the guidance scale $w \ge 0$.
    """

    model: AbstractConditional
    scale: Hyperparameter

    def __check_init__(self):
        if not isinstance(self.model, AbstractConditional):
            raise TypeError(
                "CFG model must be an AbstractConditional (dx.ConditionalNetwork or dx.PredictorPair); "
                f"got {type(self.model).__name__}."
            )
        check_nonnegative("CFG", "scale", self.scale)

    @property
    def path(self) -> AbstractPath:
        return self.model.path

    def init(self, x: Particle) -> PyTree:
        return self.model.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided prediction; cost: both members'."""
        cond, uncond, state, nfe = self.model.evaluate(x, t, state)
        return cfg_combine(cond, uncond, self.scale), state, nfe
