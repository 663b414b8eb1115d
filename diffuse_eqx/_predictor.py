import abc
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from ._custom_types import NFE, Particle, Time
from ._path import AbstractPath


PredictionType = Literal["velocity", "score", "noise", "x0"]
PREDICTIONS = ("velocity", "score", "noise", "x0")


class Prediction(eqx.Module):
    """A network evaluation expressed as the pair (x0, noise) that every parameterization shares."""

    x0: Particle
    noise: Particle

    def velocity(self, path: AbstractPath, t: Time) -> Particle:
        r"""The probability-flow velocity $\dot\alpha_t \hat x_0 + \dot\sigma_t \hat\varepsilon$."""
        t = jnp.asarray(t)
        return (path.d_alpha(t) * self.x0 + path.d_sigma(t) * self.noise).astype(self.x0.dtype)

    def score(self, path: AbstractPath, t: Time) -> Particle:
        r"""The score $-\hat\varepsilon / \sigma_t$."""
        return (-self.noise / path.sigma(jnp.asarray(t))).astype(self.noise.dtype)


class AbstractPredictor(eqx.Module):
    r"""What integrators evaluate: at a point $(x, t)$, the pair $(\hat x_0, \hat\varepsilon)$.

    A plain [`Predictor`][diffuse_eqx.Predictor] wraps one network. Guidance and posterior
    samplers are predictors too: they wrap other predictors and combine their outputs, so any
    integrator runs them unchanged. A predictor may carry a *state* from one evaluation to the next
    (APG's momentum): [`init`][diffuse_eqx.AbstractPredictor.init] gives it, and
    [`evaluate`][diffuse_eqx.AbstractPredictor.evaluate] takes and returns it; integrators thread it
    through `lax.scan` in [`IntegratorState`][diffuse_eqx.IntegratorState], with the count of
    network evaluations each call cost.
    """

    path: eqx.AbstractVar[AbstractPath]

    @abc.abstractmethod
    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """One evaluation at `(x, t)` with the carried `state`.

        **Returns:** the (x0, noise) [`Prediction`][diffuse_eqx.Prediction], the new state, and the
        network evaluations it cost."""

    @abc.abstractmethod
    def init(self, x: Particle) -> PyTree:
        """The state before the first evaluation, for a particle shaped like `x` (`None` for
        stateless predictors)."""

    def predict(self, x: Particle, t: Time) -> Prediction:
        """One evaluation from the initial state (for stateless use)."""
        return self.evaluate(x, t, self.init(x))[0]

    def x0(self, x: Particle, t: Time) -> Particle:
        r"""Denoised estimate $\hat x_0(x, t) = \mathbb E[x_0 \mid x_t = x]$."""
        return self.predict(x, t).x0

    def noise(self, x: Particle, t: Time) -> Particle:
        r"""Noise estimate $\hat\varepsilon(x, t)$."""
        return self.predict(x, t).noise

    def score(self, x: Particle, t: Time) -> Particle:
        r"""Score $\nabla_x \log p_t(x) = -\hat\varepsilon / \sigma(t)$."""
        return self.predict(x, t).score(self.path, t)

    def velocity(self, x: Particle, t: Time) -> Particle:
        r"""Probability-flow velocity $v = \dot\alpha \hat x_0 + \dot\sigma \hat\varepsilon$."""
        return self.predict(x, t).velocity(self.path, t)


class Predictor(AbstractPredictor):
    r"""Wraps a network and the path it was trained on; converts its output to any parameterization.

    For $x = \alpha x_0 + \sigma\varepsilon$ and $v = \dot\alpha x_0 + \dot\sigma \varepsilon$ the
    conversions are the exact closed forms (no clipping, no $\epsilon$ offsets):

    $$x_0 = \frac{\dot\sigma x - \sigma v}{\alpha\dot\sigma - \sigma\dot\alpha}, \qquad
      \varepsilon = \frac{\alpha v - \dot\alpha x}{\alpha\dot\sigma - \sigma\dot\alpha}, \qquad
      \nabla \log p_t = -\varepsilon / \sigma,$$

    $x_0 = (x - \sigma\varepsilon)/\alpha$ and $\varepsilon = (x - \alpha x_0)/\sigma$.

    The denominator is 1 for `Flow` and `EDM`, so these are finite at both ends of the path. Where a
    parameterization does not determine a quantity (an `"x0"` network's noise at $\sigma = 0$, a
    `"noise"` or `"score"` network's data at $\alpha = 0$) it comes out non-finite, and is never asked
    for ([Concepts → Endpoints][endpoints]). Where $\dot\sigma$ is infinite (VP at $t = 0$),
    $x_0 = x/\alpha$.

    **Arguments:**

    - `network`: `network(x, t) -> array like x`, for a single particle.
    - `path`: the [`AbstractPath`][diffuse_eqx.AbstractPath] the network was trained on.
    - `prediction`: what the network outputs: `"velocity"` ($dx_t/dt$), `"score"`
      ($\nabla\log p_t$), `"noise"` ($\varepsilon$) or `"x0"` (the denoised data).
    """

    network: Callable
    path: AbstractPath
    prediction: PredictionType = eqx.field(default="velocity", static=True)

    def __check_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"Predictor prediction must be one of {PREDICTIONS}; got {self.prediction!r}.")

    def init(self, x: Particle) -> None:
        """`None`: a network has no state."""
        return None

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Evaluates the network once: its (x0, noise) pair, the unchanged state, and 1."""
        t = jnp.asarray(t)
        out = self.network(x, t)
        if out.shape != x.shape:
            raise ValueError(f"network(x, t) must return an array shaped like x {x.shape}; got {out.shape}.")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(
                f"network(x, t) must return real floating-point values (a {self.prediction}); got dtype "
                f"{out.dtype}."
            )
        return self.convert(x, t, out), state, jnp.asarray(1, jnp.int32)

    def convert(self, x: Particle, t: Time, out: Particle) -> Prediction:
        """Converts a raw network output `out` at `(x, t)` to the (x0, noise) pair."""
        p, t = self.path, jnp.asarray(t)
        a, s = p.alpha(t), p.sigma(t)
        if self.prediction == "x0":
            x0, noise = out, (x - a * out) / s
        elif self.prediction in ("noise", "score"):
            noise = out if self.prediction == "noise" else -s * out
            x0 = (x - s * noise) / a
        else:
            da, ds = p.d_alpha(t), p.d_sigma(t)
            det = a * ds - s * da
            x0 = (ds * x - s * out) / det
            noise = (a * out - da * x) / det
            # VP has d_sigma = inf at t = 0; there x = alpha x0 exactly.
            x0 = jnp.where(s == 0, x / jnp.where(s == 0, a, 1), x0)  # no 1/alpha in reverse mode
        return Prediction(x0=x0.astype(x.dtype), noise=noise.astype(x.dtype))
