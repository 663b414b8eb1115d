from .._check import check_interval
from .._custom_types import Hyperparameter, Particle, Scalar
from .._predictor import Prediction
from .base import AbstractConditional, AbstractGuidance


class CFGPlusPlus(AbstractGuidance):
    r"""CFG++ (Chung et al. 2024): the guided data estimate, but the *unconditional* noise estimate
    for re-noising,

    $$\hat x_0 = \hat x_0^{u} + \lambda\,(\hat x_0^{c} - \hat x_0^{u}), \qquad
      \hat\varepsilon = \hat\varepsilon^{u}, \qquad 0 \le \lambda \le 1 .$$

    With [`DDIM`][diffuse_eqx.DDIM] ($\eta = 0$) this is the paper's update
    $x_s = \alpha_s \hat x_0 + \sigma_s \hat\varepsilon^u$, i.e. CFG of the step-dependent scale
    $w = \lambda/(1 - e^{-h})$. The pair is not a consistent point
    ($\alpha_t\hat x_0 + \sigma_t\hat\varepsilon \ne x_t$), so other integrators do otherwise:
    data-prediction ones ([`DPMpp2M`][diffuse_eqx.DPMpp2M]) run CFG with scale $\lambda$
    ([Guidance → CFG++][cfg-plus-plus]). $\lambda = 0$ is unconditional sampling exactly. Each
    evaluation costs 2 network evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{chung2025cfgpp,
          title={{CFG++}: Manifold-constrained Classifier Free Guidance for Diffusion Models},
          author={Chung, Hyungjin and Kim, Jeongsol and Park, Geon Yeong and Nam, Hyelin
                  and Ye, Jong Chul},
          booktitle={ICLR}, year={2025}}
        ```

    **Arguments:**

    - `predictor`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `scale`: the guidance weight $\lambda \in [0, 1]$ (the paper's $\lambda$).
    """

    predictor: AbstractConditional
    scale: Hyperparameter

    def __check_init__(self):
        hint = " (0: unconditional, 1: the conditional data estimate)"
        check_interval("CFGPlusPlus scale", self.scale, 0.0, 1.0, hint=hint)

    def init_memory(self, x: Particle) -> None:
        return None

    def combine(
        self, cond: Prediction, uncond: Prediction, t: Scalar, memory: None
    ) -> tuple[Prediction, None]:
        x0 = uncond.x0 + self.scale * (cond.x0 - uncond.x0)
        return Prediction(x0=x0.astype(uncond.x0.dtype), noise=uncond.noise), memory
