from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PyTree

from .._check import check_int, check_positive
from .._custom_types import NFE, Hyperparameter, Key, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractPosteriorGuidance, check_noisy, guided, x0_map
from .operators import AbstractOperator, Measurement


class DPSGSG(AbstractPosteriorGuidance):
    r"""Zero-order DPS: [`DPS`][diffuse_eqx.DPS] with the gradient of the likelihood in $x_0$ estimated
    from forward evaluations of the operator only (Gaussian-smoothed finite differences), so that a
    black-box or non-differentiable forward model ([`Quantize`][diffuse_eqx.Quantize], a simulator)
    can be used; the network is still differentiated (one VJP), the operator never is. With
    $L(x_0) = -\|y - \mathcal A(x_0)\|$ (`likelihood="norm"`) or
    $-\|y - \mathcal A(x_0)\|^2 / (2\sigma_y^2)$ (`"gaussian"`) and $u_q \sim \mathcal N(0, I)$,

    $$\widehat{\nabla L} = \frac{1}{Q}\sum_{q=1}^{Q}
      \frac{L(\hat x_0 + \mu u_q) - L(\hat x_0 - \mu u_q)}{2\mu}\,u_q \quad\text{(central)}, \qquad
      \frac{1}{Q}\sum_q \frac{L(\hat x_0 + \mu u_q) - L(\hat x_0)}{\mu}\,u_q \quad\text{(forward)},$$

    the gradient of the Gaussian smoothing of $L$ (unbiased for it; $O(\mu^2)$ from $\nabla L$ for
    central differences); its relative error falls like $\sqrt{(d + 1)/Q}$. The directions are drawn
    from `key` folded with the time: every particle uses the same directions at a given time (common
    random numbers), so that a particle's samples do not depend on the others, on the batch or on
    the devices (a direction keyed by the particle's own bits would change with its last bit).
    Cost per evaluation: one network evaluation, one VJP, $2Q$ (central) or
    $Q + 1$ (forward) operator evaluations.

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator], differentiable or not.
    - `y`: the measurement.
    - `scale`: $\zeta > 0$ (default 1), as in DPS.
    - `num_queries`: $Q \ge 1$ directions (default 64).
    - `mu`: the smoothing radius $\mu > 0$ (default 1e-2; in float32 a difference over $\mu$
      loses about $\log_{10}(1/\mu)$ of its 7 digits).
    - `scheme`: `"central"` (default) or `"forward"`.
    - `likelihood`: `"norm"` (default, DPS's step) or `"gaussian"`.
    - `key`: the PRNG key of the directions (default `jr.key(0)`).
    """

    predictor: AbstractPredictor
    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    scale: Hyperparameter = 1.0
    num_queries: int = eqx.field(default=64, static=True)
    mu: Hyperparameter = 1e-2
    scheme: Literal["central", "forward"] = eqx.field(default="central", static=True)
    likelihood: Literal["norm", "gaussian"] = eqx.field(default="norm", static=True)
    key: Key = eqx.field(default_factory=lambda: jr.key(0))

    def __check_init__(self):
        check_positive("DPSGSG scale", self.scale)
        check_positive("DPSGSG mu", self.mu)
        check_int("DPSGSG num_queries", self.num_queries)
        if self.scheme not in ("central", "forward"):
            raise ValueError(f"DPSGSG scheme must be 'central' or 'forward'; got {self.scheme!r}.")
        if self.likelihood not in ("norm", "gaussian"):
            raise ValueError(f"DPSGSG likelihood must be 'norm' or 'gaussian'; got {self.likelihood!r}.")
        if self.likelihood == "gaussian":
            check_noisy("DPSGSG", self.operator, "likelihood='gaussian' divides by sigma_y^2")

    def loss(self, x0: Particle) -> Float[Array, ""]:
        """$L(x_0)$, the log-likelihood term whose gradient is estimated."""
        r = self.operator.residual(x0, self.y)
        sq = jnp.sum(jnp.real(r * jnp.conj(r)))
        if self.likelihood == "norm":
            return -jnp.sqrt(sq)
        return -sq / (2 * jnp.asarray(self.operator.sigma_y) ** 2)

    def gradient(self, x0: Particle, key: Key) -> Particle:
        """The zero-order estimate of $\\nabla L(x_0)$ with directions from `key`."""
        u = jr.normal(key, (self.num_queries, *x0.shape), x0.dtype)
        mu = jnp.asarray(self.mu, x0.dtype)
        plus = jax.vmap(lambda d: self.loss(x0 + mu * d))(u)
        if self.scheme == "central":
            diff = (plus - jax.vmap(lambda d: self.loss(x0 - mu * d))(u)) / (2 * mu)
        else:
            diff = (plus - self.loss(x0)) / mu
        return jnp.tensordot(diff.astype(x0.dtype), u, axes=1) / self.num_queries

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation, one VJP through it, and the operator's
        forward evaluations of the gradient estimate."""
        t = jnp.asarray(t)
        x0, pullback, (pred, state, nfe) = jax.vjp(x0_map(self.predictor, t, state), x, has_aux=True)
        t_bits = jax.lax.bitcast_convert_type(t.astype(jnp.float32), jnp.uint32)
        key = jr.fold_in(self.key, t_bits)
        grad = self.gradient(jax.lax.stop_gradient(x0), key)
        (g,) = pullback((self.scale * grad).astype(x0.dtype))
        return guided(self.path, t, pred, g), state, nfe
