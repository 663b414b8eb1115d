from .._custom_types import Hyperparameter, Particle, Scalar
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractConditional, AbstractGuidance, IntervalConditional, PredictorPair, cfg_combine


class CFG(AbstractGuidance):
    r"""Classifier-free guidance (Ho & Salimans 2022) with scale $w$:

    $$\hat x_0 = \hat x_0^{u} + w\,(\hat x_0^{c} - \hat x_0^{u}), \qquad
      \hat\varepsilon = \hat\varepsilon^{u} + w\,(\hat\varepsilon^{c} - \hat\varepsilon^{u}),$$

    $u$ the unconditional and $c$ the conditional prediction. $w = 1$ is the conditional model
    (returned exactly), $w = 0$ the unconditional one, $w > 1$ extrapolates (Ho & Salimans' $w'$ is
    $w - 1$). Combining velocities, scores, noises or data estimates gives exactly the same sampler
    ([Guidance → Which quantity is combined does not matter][guidance-parameterizations]). Each
    evaluation costs 2 network evaluations (one batched call with a
    [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork]).

    ??? cite "Reference"
        ```bibtex
        @article{ho2022classifierfree,
          title={Classifier-Free Diffusion Guidance},
          author={Ho, Jonathan and Salimans, Tim},
          journal={arXiv:2207.12598}, year={2022}}
        ```

    **Arguments:**

    - `predictor`: the conditional and unconditional predictions, an
      [`AbstractConditional`][diffuse_eqx.AbstractConditional]
      ([`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] or
      [`PredictorPair`][diffuse_eqx.PredictorPair]).
    - `scale`: the guidance scale $w \ge 0$.
    """

    predictor: AbstractConditional
    scale: Hyperparameter

    def init_memory(self, x: Particle) -> None:
        return None

    def combine(
        self, cond: Prediction, uncond: Prediction, t: Scalar, memory: None
    ) -> tuple[Prediction, None]:
        return cfg_combine(cond, uncond, self.scale), memory


def GuidanceInterval(
    predictor: AbstractConditional, scale: Hyperparameter, t_lo: Hyperparameter, t_hi: Hyperparameter
) -> CFG:
    r"""Classifier-free guidance applied only in a limited interval of times (Kynkäänniemi et al.
    2024), the conditional model elsewhere:

    $$\hat x_0 = \begin{cases}
      \hat x_0^{u} + w\,(\hat x_0^{c} - \hat x_0^{u}) & t_{\rm lo} < t \le t_{\rm hi}, \\
      \hat x_0^{c} & \text{otherwise,} \end{cases}$$

    and the same for $\hat\varepsilon$ (see [`CFG`][diffuse_eqx.CFG] for the convention). The interval
    is in the path's time $t$, the paper's noise level $\sigma$ for [`EDM`][diffuse_eqx.EDM]
    ([Guidance → Guidance interval][guidance-interval]). This is [`CFG`][diffuse_eqx.CFG] over an
    [`IntervalConditional`][diffuse_eqx.IntervalConditional]: an evaluation costs 2 network
    evaluations inside the interval and 1 outside.

    !!! note
        A grid point at $t_{\rm lo}$ or $t_{\rm hi}$ makes an integrator that evaluates both ends
        of a step (e.g. [`Heun`][diffuse_eqx.Heun]) use the other side's field at that end; the
        guided ODE's velocity jumps there, so its accuracy drops to first order near the jump.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{kynkaanniemi2024applying,
          title={Applying Guidance in a Limited Interval Improves Sample and Distribution Quality
                 in Diffusion Models},
          author={Kynk{\"a}{\"a}nniemi, Tuomas and Aittala, Miika and Karras, Tero and Laine, Samuli
                  and Aila, Timo and Lehtinen, Jaakko},
          booktitle={NeurIPS}, year={2024}}
        ```

    **Arguments:**

    - `predictor`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `scale`: the guidance scale $w \ge 0$ inside the interval.
    - `t_lo`, `t_hi`: the interval $(t_{\rm lo}, t_{\rm hi}]$, $0 \le t_{\rm lo} \le t_{\rm hi}$.

    **Returns:** `CFG(IntervalConditional(predictor, t_lo, t_hi), scale)`.
    """
    return CFG(IntervalConditional(predictor, t_lo, t_hi), scale)


def AutoGuidance(predictor: AbstractPredictor, weak: AbstractPredictor, scale: Hyperparameter) -> CFG:
    r"""Autoguidance (Karras et al. 2024): guide a model with a *weaker version of itself* (smaller,
    less trained) for the same condition, instead of an unconditional model:

    $$\hat x_0 = \hat x_0^{\rm weak} + w\,(\hat x_0 - \hat x_0^{\rm weak}), \qquad
      \hat\varepsilon = \hat\varepsilon^{\rm weak}
      + w\,(\hat\varepsilon - \hat\varepsilon^{\rm weak}).$$

    The combination is [`CFG`][diffuse_eqx.CFG]'s ($w = 1$ is the main model), with the weak model in
    place of the unconditional one ([Guidance → Autoguidance][autoguidance]). Each evaluation costs
    both models' evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{karras2024guiding,
          title={Guiding a Diffusion Model with a Bad Version of Itself},
          author={Karras, Tero and Aittala, Miika and Kynk{\"a}{\"a}nniemi, Tuomas and Lehtinen, Jaakko
                  and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2024}}
        ```

    **Arguments:**

    - `predictor`: the main (conditional) [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `weak`: its weaker version, with the same condition and on the same path.
    - `scale`: the guidance scale $w \ge 0$.

    **Returns:** `CFG(PredictorPair(predictor, weak), scale)`.
    """
    return CFG(PredictorPair(predictor, weak), scale)
