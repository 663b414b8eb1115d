import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._check import concrete
from .._custom_types import PathValue, Times
from .base import AbstractPath


class VP(AbstractPath):
    r"""Variance-preserving path (DDPM / score SDE), $\alpha^2 + \sigma^2 = 1$, $t \in [0, 1]$:

    $$x_t = \alpha(t)\, x_0 + \sqrt{1 - \alpha(t)^2}\, \varepsilon .$$

    **Linear** schedule (Ho et al. 2020; Song et al. 2021): $\beta(t) = \beta_{\min} + t(\beta_{\max}
    - \beta_{\min})$, $\alpha(t) = \exp\!\big(-\tfrac12 \int_0^t \beta\big) = \exp\!\big(-\tfrac12
    \beta_{\min} t - \tfrac14 (\beta_{\max} - \beta_{\min}) t^2\big)$, $\dot\alpha = -\tfrac12
    \beta(t)\alpha$. The reverse SDE is the familiar $f = -\tfrac12\beta$, $g^2 = \beta$.

    **Cosine** schedule (Nichol & Dhariwal 2021): $\alpha(t) = \cos\!\big(\frac{t + s}{1 + s}
    \frac{\pi}{2}\big) / \cos\!\big(\frac{s}{1 + s}\frac{\pi}{2}\big)$, with no clipping of $\beta$:
    $\alpha(1) = 0$ exactly, so sampling starts from pure noise.

    In both, $\sigma = \sqrt{1 - \alpha^2}$, $\dot\sigma = -\alpha\dot\alpha/\sigma$ (infinite at
    $t = 0$), $\lambda = \log\alpha - \tfrac12\log(1 - \alpha^2)$, and $\alpha^2 =
    \operatorname{sigmoid}(2\lambda)$ inverts $\lambda$ in closed form.

    **Arguments:**

    - `schedule`: `"linear"` (default) or `"cosine"`.
    - `beta_min`, `beta_max`: the linear schedule's $\beta(0)$ and $\beta(1)$ (defaults 0.1 and 20,
      the continuous-time DDPM of Song et al. 2021).
    - `s`: the cosine schedule's offset (default 0.008, as in Nichol & Dhariwal).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{song2021score,
          title={Score-Based Generative Modeling through Stochastic Differential Equations},
          author={Song, Yang and Sohl-Dickstein, Jascha and Kingma, Diederik P and Kumar, Abhishek
                  and Ermon, Stefano and Poole, Ben},
          booktitle={ICLR}, year={2021}}
        @inproceedings{nichol2021improved,
          title={Improved Denoising Diffusion Probabilistic Models},
          author={Nichol, Alexander Quinn and Dhariwal, Prafulla},
          booktitle={ICML}, year={2021}}
        ```
    """

    schedule: Literal["linear", "cosine"] = eqx.field(default="linear", static=True)
    beta_min: float = 0.1
    beta_max: float = 20.0
    s: float = 0.008

    def __check_init__(self):
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"VP schedule must be 'linear' or 'cosine'; got {self.schedule!r}.")
        if concrete(self.beta_min, self.beta_max, self.s):
            if self.schedule == "linear" and not (0 < self.beta_min <= self.beta_max):
                raise ValueError(
                    "VP linear schedule needs 0 < beta_min <= beta_max; got "
                    f"beta_min={self.beta_min}, beta_max={self.beta_max}."
                )
            if self.schedule == "cosine" and not self.s > 0:
                raise ValueError(f"VP cosine schedule needs s > 0; got s={self.s}.")

    @property
    def t_max(self) -> float:
        return 1.0

    def _angle(self, t):
        return (jnp.asarray(t) + self.s) / (1 + self.s) * (math.pi / 2)

    def _cos0(self):
        return jnp.cos(self.s / (1 + self.s) * (math.pi / 2))

    def beta(self, t: Times) -> PathValue:
        r"""$\beta(t) = -2\dot\alpha/\alpha$."""
        if self.schedule == "linear":
            return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)
        return math.pi / (1 + self.s) * jnp.tan(self._angle(t))

    def alpha(self, t: Times) -> PathValue:
        t = jnp.asarray(t)
        if self.schedule == "linear":
            return jnp.exp(-0.5 * self.beta_min * t - 0.25 * (self.beta_max - self.beta_min) * t**2)
        # cos(angle) written as sin(pi/2 - angle), which is exactly 0 at t = 1.
        return jnp.sin((1 - t) / (1 + self.s) * (math.pi / 2)) / self._cos0()

    def sigma(self, t: Times) -> PathValue:
        # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)) is accurate for small t.
        if self.schedule == "linear":
            t = jnp.asarray(t)
            log_alpha = -0.5 * self.beta_min * t - 0.25 * (self.beta_max - self.beta_min) * t**2
            return jnp.sqrt(-jnp.expm1(2 * log_alpha))
        # 1 - cos^2(a)/cos^2(a0) = (cos^2 a0 - cos^2 a)/cos^2 a0 = sin(a - a0) sin(a + a0)/cos^2 a0
        a, a0 = self._angle(t), self.s / (1 + self.s) * (math.pi / 2)
        return jnp.sqrt(jnp.sin(a - a0) * jnp.sin(a + a0)) / self._cos0()

    def d_alpha(self, t: Times) -> PathValue:
        if self.schedule == "linear":
            return -0.5 * self.beta(t) * self.alpha(t)
        return -(math.pi / 2) / (1 + self.s) * jnp.sin(self._angle(t)) / self._cos0()

    def d_sigma(self, t: Times) -> PathValue:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_lambda(self, lam: Times) -> PathValue:
        lam = jnp.asarray(lam)
        if self.schedule == "linear":
            # -log(alpha^2) = softplus(-2 lam) = beta_min t + (beta_max - beta_min) t^2 / 2
            c = jnp.logaddexp(0.0, -2 * lam)
            db = self.beta_max - self.beta_min
            return 2 * c / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * db * c))
        alpha = jnp.sqrt(jax.nn.sigmoid(2 * lam))
        t = jnp.arccos(alpha * self._cos0()) * (2 / math.pi) * (1 + self.s) - self.s
        return jnp.maximum(t, 0.0)  # arccos rounding may give -1e-15 at lambda = +inf
