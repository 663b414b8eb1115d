import abc

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Particle, PathValue, Times


class AbstractPath(eqx.Module):
    r"""A Gaussian noise path $x_t = \alpha(t)\, x_0 + \sigma(t)\, \varepsilon$, $t \in [0, t_{\max}]$.

    $t = 0$ is data, $t = t_{\max}$ is noise. A concrete path gives $\alpha$, $\sigma$ and their time
    derivatives in closed form, the half log-SNR $\lambda(t) = \log(\alpha(t)/\sigma(t))$ and its
    inverse. From these follow the forward SDE $dx = f(t)\, x\, dt + g(t)\, dW$ with
    $f = \dot\alpha/\alpha$ and $g^2 = 2\sigma\dot\sigma - 2 f \sigma^2$ (the unique linear SDE with
    these marginals) and its reverse-time SDE.
    """

    t_max: eqx.AbstractVar[float]
    r"""The noise end of the path: $t \in [0, t_{\max}]$."""

    @abc.abstractmethod
    def alpha(self, t: Times) -> PathValue:
        """Signal scale $\\alpha(t)$."""

    @abc.abstractmethod
    def sigma(self, t: Times) -> PathValue:
        """Noise scale $\\sigma(t)$."""

    @abc.abstractmethod
    def d_alpha(self, t: Times) -> PathValue:
        """Time derivative $\\dot\\alpha(t)$."""

    @abc.abstractmethod
    def d_sigma(self, t: Times) -> PathValue:
        """Time derivative $\\dot\\sigma(t)$ (infinite where $\\sigma$ has a square-root zero)."""

    @abc.abstractmethod
    def t_from_lambda(self, lam: Times) -> PathValue:
        """Inverse of [`lambda_`][diffuse_eqx.AbstractPath.lambda_]: the time with half log-SNR `lam`."""

    def lambda_(self, t: Times) -> PathValue:
        r"""Half log-SNR $\lambda(t) = \log\alpha(t) - \log\sigma(t)$ ($+\infty$ at $\sigma = 0$,
        $-\infty$ at $\alpha = 0$)."""
        return jnp.log(self.alpha(t)) - jnp.log(self.sigma(t))

    def drift_coefficient(self, t: Times) -> PathValue:
        r"""$f(t) = \dot\alpha(t)/\alpha(t)$ of the forward SDE $dx = f x\, dt + g\, dW$."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion(self, t: Times) -> PathValue:
        r"""$g(t) = \sqrt{2\sigma\dot\sigma - 2 f \sigma^2}$ of the forward SDE."""
        return jnp.sqrt(self.diffusion_squared(t))

    def diffusion_squared(self, t: Times) -> PathValue:
        r"""$g(t)^2 = 2\sigma\dot\sigma - 2 (\dot\alpha/\alpha)\sigma^2
        = 2\sigma^2 \cdot (-\dot\lambda(t))$."""
        s = self.sigma(t)
        return 2 * s * self.d_sigma(t) - 2 * self.drift_coefficient(t) * s**2

    def reverse_drift(self, x: Particle, t: Times, score: Particle) -> Particle:
        r"""Drift of the reverse-time SDE written in forward time $t$:
        $dx = [f(t) x - g(t)^2 \nabla\log p_t(x)]\, dt + g(t)\, d\bar W$ (integrated from $t_{\max}$
        down to 0). Its probability-flow ODE has drift $f x - \tfrac12 g^2 \nabla \log p_t$."""
        return self.drift_coefficient(t) * x - self.diffusion_squared(t) * score

    def prior_std(self, t: Times) -> PathValue:
        r"""Standard deviation of the Gaussian that starts sampling at time $t$: $\sigma(t)$
        (exact where $\alpha(t) = 0$; for VE/EDM the data term is neglected against $\sigma_{\max}$)."""
        return self.sigma(t)
