import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._check import concrete
from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractConditional, Hyperparameter, cfg_combine, check_nonnegative


class GuidanceInterval(AbstractPredictor):
    r"""Classifier-free guidance applied only in a limited interval of times (Kynkäänniemi et al.
    2024), the conditional model elsewhere:

    $$\hat x_0 = \begin{cases}
      \hat x_0^{u} + w\,(\hat x_0^{c} - \hat x_0^{u}) & t_{\rm lo} < t \le t_{\rm hi}, \\
      \hat x_0^{c} & \text{otherwise,} \end{cases}$$

    and the same for $\hat\varepsilon$ (see [`CFG`][diffuse_eqx.CFG] for the convention). The paper
    states the interval in the EDM noise level, $\sigma \in (\sigma_{\rm lo}, \sigma_{\rm hi}]$; here
    it is in the path's time $t$ ($t = \sigma$ for [`EDM`][diffuse_eqx.EDM]; for another path give
    the times where $\sigma_t$ takes those values). Guidance at high noise levels mostly reduces
    diversity and at low noise levels does little, so a middle interval keeps its benefits.

    Outside the interval only the conditional model is evaluated (a `lax.cond` on $t$, which is
    the same for every particle), so an evaluation costs 2 network evaluations inside and 1 outside.

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

    - `model`: an [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `scale`: the guidance scale $w \ge 0$ inside the interval.
    - `t_lo`, `t_hi`: the interval $(t_{\rm lo}, t_{\rm hi}]$, $0 \le t_{\rm lo} \le t_{\rm hi}$.
    """

    model: AbstractConditional
    scale: Hyperparameter
    t_lo: Hyperparameter
    t_hi: Hyperparameter

    def __check_init__(self):
        if not isinstance(self.model, AbstractConditional):
            raise TypeError(
                "GuidanceInterval model must be an AbstractConditional (dx.ConditionalNetwork or "
                f"dx.PredictorPair); got {type(self.model).__name__}."
            )
        check_nonnegative("GuidanceInterval", "scale", self.scale)
        if concrete(self.t_lo, self.t_hi) and not 0 <= float(self.t_lo) <= float(self.t_hi):
            raise ValueError(
                "GuidanceInterval needs 0 <= t_lo <= t_hi (guidance is applied for t_lo < t <= t_hi); "
                f"got t_lo={self.t_lo}, t_hi={self.t_hi}."
            )

    @property
    def path(self) -> AbstractPath:
        return self.model.path

    def init(self, x: Particle) -> PyTree:
        return self.model.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided prediction inside the interval (cost 2), the conditional one outside (cost 1)."""
        t = jnp.asarray(t)

        def guided(state):
            cond, uncond, state, nfe = self.model.evaluate(x, t, state)
            return cfg_combine(cond, uncond, self.scale), state, nfe

        def conditional(state):
            return self.model.evaluate_cond(x, t, state)

        return lax.cond((t > self.t_lo) & (t <= self.t_hi), guided, conditional, state)
