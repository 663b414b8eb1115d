from jaxtyping import PyTree

from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .base import Hyperparameter, PredictorPair, cfg_combine, check_nonnegative, check_pair


class AutoGuidance(AbstractPredictor):
    r"""Autoguidance (Karras et al. 2024): guide a model with a *weaker version of itself* (smaller,
    less trained) for the same condition, instead of an unconditional model:

    $$\hat x_0 = \hat x_0^{\rm weak} + w\,(\hat x_0^{\rm good} - \hat x_0^{\rm weak}), \qquad
      \hat\varepsilon = \hat\varepsilon^{\rm weak}
      + w\,(\hat\varepsilon^{\rm good} - \hat\varepsilon^{\rm weak}).$$

    The combination is [`CFG`][diffuse_eqx.CFG]'s (the same affine map in every parameterization;
    $w = 1$ is the good model), with the weak model in place of the unconditional one: the two
    models err in the same directions, the weak one more, so extrapolating away from it corrects
    the good one's errors without CFG's loss of diversity. Each evaluation costs both models'
    evaluations.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{karras2024guiding,
          title={Guiding a Diffusion Model with a Bad Version of Itself},
          author={Karras, Tero and Aittala, Miika and Kynk{\"a}{\"a}nniemi, Tuomas and Lehtinen, Jaakko
                  and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2024}}
        ```

    **Arguments:**

    - `good`: the main (conditional) [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `weak`: its weaker version, with the same condition and on the same path.
    - `scale`: the guidance scale $w \ge 0$.
    """

    good: AbstractPredictor
    weak: AbstractPredictor
    scale: Hyperparameter

    def __check_init__(self):
        check_pair("AutoGuidance", "good", self.good, "weak", self.weak)
        check_nonnegative("AutoGuidance", "scale", self.scale)

    @property
    def path(self) -> AbstractPath:
        return self.good.path

    def init(self, x: Particle) -> PyTree:
        return self.good.init(x), self.weak.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided prediction; cost: both models'."""
        good, weak, state, nfe = PredictorPair(self.good, self.weak).evaluate(x, t, state)
        return cfg_combine(good, weak, self.scale), state, nfe
