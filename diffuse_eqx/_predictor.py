from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax.numpy as jnp

from ._custom_types import Particle, Time
from ._path import AbstractPath


PredictionType = Literal["velocity", "score", "noise", "x0"]
PREDICTIONS = ("velocity", "score", "noise", "x0")


class Prediction(eqx.Module):
    """A network evaluation expressed as the pair (x0, noise) that every parameterization shares."""

    x0: Particle
    noise: Particle


class Predictor(eqx.Module):
    r"""Wraps a network and the path it was trained on; converts its output to any parameterization.

    For $x = \alpha x_0 + \sigma\varepsilon$ and $v = \dot\alpha x_0 + \dot\sigma \varepsilon$ the
    conversions are the exact closed forms (no clipping, no $\epsilon$ offsets):

    $$x_0 = \frac{\dot\sigma x - \sigma v}{\alpha\dot\sigma - \sigma\dot\alpha}, \qquad
      \varepsilon = \frac{\alpha v - \dot\alpha x}{\alpha\dot\sigma - \sigma\dot\alpha}, \qquad
      \nabla \log p_t = -\varepsilon / \sigma,$$

    $x_0 = (x - \sigma\varepsilon)/\alpha$ and $\varepsilon = (x - \alpha x_0)/\sigma$.

    The denominator $\alpha\dot\sigma - \sigma\dot\alpha$ is 1 for `Flow` and `EDM`, so these
    are finite at both ends of the path. At the endpoints some quantities are not determined by a
    parameterization: the noise of an `"x0"` network where $\sigma = 0$, the data of a `"noise"`
    or `"score"` network where $\alpha = 0$ ($x$ then carries no information about $x_0$). They come
    out non-finite; the [`Denoiser`][diffuse_eqx.Denoiser] refuses a grid that starts at
    $\alpha = 0$ for such networks, and integrators never ask for them (the last step to
    $t = 0$ is a data-prediction step). Where $\dot\sigma$ is infinite (VP at $t = 0$), $x_0 = x/\alpha$.

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
        if not callable(self.network):
            raise TypeError(f"Predictor network must be callable as network(x, t); got {self.network!r}.")

    def predict(self, x: Particle, t: Time) -> Prediction:
        """Evaluates the network once and returns its (x0, noise) pair."""
        return self.convert(x, t, self._network(x, t))

    def _network(self, x, t):
        out = self.network(x, jnp.asarray(t))
        if out.shape != x.shape:
            raise ValueError(f"network(x, t) must return an array shaped like x {x.shape}; got {out.shape}.")
        return out

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
            x0 = jnp.where(s == 0, x / a, x0)
        return Prediction(x0=x0.astype(x.dtype), noise=noise.astype(x.dtype))

    def x0(self, x: Particle, t: Time) -> Particle:
        r"""Denoised estimate $\hat x_0(x, t) = \mathbb E[x_0 \mid x_t = x]$."""
        return self.predict(x, t).x0

    def noise(self, x: Particle, t: Time) -> Particle:
        r"""Noise estimate $\hat\varepsilon(x, t)$."""
        return self.predict(x, t).noise

    def score(self, x: Particle, t: Time) -> Particle:
        r"""Score $\nabla_x \log p_t(x) = -\hat\varepsilon / \sigma(t)$."""
        if self.prediction == "score":
            return self._network(x, t)
        return (-self.predict(x, t).noise / self.path.sigma(jnp.asarray(t))).astype(x.dtype)

    def velocity(self, x: Particle, t: Time) -> Particle:
        r"""Probability-flow velocity $v = \dot\alpha \hat x_0 + \dot\sigma \hat\varepsilon$."""
        t = jnp.asarray(t)
        if self.prediction == "velocity":
            return self._network(x, t)
        pred = self.predict(x, t)
        return (self.path.d_alpha(t) * pred.x0 + self.path.d_sigma(t) * pred.noise).astype(x.dtype)
