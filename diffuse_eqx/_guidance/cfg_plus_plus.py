from jaxtyping import PyTree

from .._check import concrete
from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractConditional, Hyperparameter, check_same_shape


class CFGPlusPlus(AbstractPredictor):
    r"""CFG++ (Chung et al. 2024): the guided data estimate, but the *unconditional* noise estimate
    for re-noising,

    $$\hat x_0 = \hat x_0^{u} + \lambda\,(\hat x_0^{c} - \hat x_0^{u}), \qquad
      \hat\varepsilon = \hat\varepsilon^{u}, \qquad 0 \le \lambda \le 1 .$$

    With [`DDIM`][diffuse_eqx.DDIM] ($\eta = 0$) this is the paper's update
    $x_s = \alpha_s \hat x_0 + \sigma_s \hat\varepsilon^u$. Unlike [`CFG`][diffuse_eqx.CFG], the pair
    is not a consistent point ($\alpha_t\hat x_0 + \sigma_t\hat\varepsilon \ne x_t$ for
    $\lambda \ne 0$), so what it does depends on how the integrator reads the prediction:

    - DDIM uses both members: on a step $t \to s$ it is exactly DDIM with CFG of the step-dependent
      scale $w = \lambda / (1 - e^{-h})$, $e^{-h} = \alpha_t\sigma_s / (\alpha_s\sigma_t)$ (so
      $\lambda$ is not a CFG scale, and the effective guidance grows as steps get smaller).
    - Data-prediction integrators ([`DPMpp2M`][diffuse_eqx.DPMpp2M],
      [`DPMpp2S`][diffuse_eqx.DPMpp2S]) read only $\hat x_0$ and re-noise with
      $(x - \alpha\hat x_0)/\sigma$: they run CFG with scale $\lambda$.
    - Velocity integrators ([`Euler`][diffuse_eqx.Euler], [`Heun`][diffuse_eqx.Heun]) follow
      $\dot\alpha_t \hat x_0 + \dot\sigma_t \hat\varepsilon^u$.

    $\lambda = 0$ is unconditional sampling exactly. Each evaluation costs 2 network evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{chung2025cfgpp,
          title={{CFG++}: Manifold-constrained Classifier Free Guidance for Diffusion Models},
          author={Chung, Hyungjin and Kim, Jeongsol and Park, Geon Yeong and Nam, Hyelin
                  and Ye, Jong Chul},
          booktitle={ICLR}, year={2025}}
        ```

    **Arguments:**

    - `model`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `lam`: the guidance weight $\lambda \in [0, 1]$.
    """

    model: AbstractConditional
    lam: Hyperparameter

    def __check_init__(self):
        if not isinstance(self.model, AbstractConditional):
            raise TypeError(
                "CFGPlusPlus model must be an AbstractConditional (dx.ConditionalNetwork or "
                f"dx.PredictorPair); got {type(self.model).__name__}."
            )
        if concrete(self.lam) and not 0 <= float(self.lam) <= 1:
            raise ValueError(
                f"CFGPlusPlus lam must be in [0, 1] (0: unconditional, 1: the conditional data "
                f"estimate); got lam={self.lam}."
            )

    @property
    def path(self) -> AbstractPath:
        return self.model.path

    def init(self, x: Particle) -> PyTree:
        return self.model.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided data estimate and the unconditional noise; cost: both members'."""
        cond, uncond, state, nfe = self.model.evaluate(x, t, state)
        check_same_shape(cond, uncond)
        x0 = uncond.x0 + self.lam * (cond.x0 - uncond.x0)
        return Prediction(x0=x0.astype(uncond.x0.dtype), noise=uncond.noise), state, nfe
