import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._check import as_numpy, concrete
from .._custom_types import Key, Scalar, Time
from .._path import AbstractPath
from .._predictor import PREDICTIONS, PredictionType


class GaussianMixture(eqx.Module):
    r"""A Gaussian mixture $p(x) = \sum_k w_k\, \mathcal N(x; \mu_k, \Sigma_k)$ in $\mathbb R^d$, with
    everything a sampler can be checked against in closed form.

    Under a path $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ the marginal is again a mixture,
    $p_t = \sum_k w_k \mathcal N(\alpha_t\mu_k, C_k)$ with $C_k = \alpha_t^2 \Sigma_k + \sigma_t^2 I$,
    and with responsibilities $r_k(x) \propto w_k \mathcal N(x; \alpha_t\mu_k, C_k)$:

    $$\nabla\log p_t(x) = -\sum_k r_k C_k^{-1}(x - \alpha_t\mu_k),\quad
      \mathbb E[x_0 \mid x_t = x] = \sum_k r_k\big(\mu_k + \alpha_t \Sigma_k C_k^{-1}(x - \alpha_t\mu_k)
      \big),$$

    $\mathbb E[\varepsilon\mid x_t = x] = \sigma_t \sum_k r_k C_k^{-1}(x - \alpha_t\mu_k)$, and the
    velocity $\dot\alpha_t \mathbb E[x_0\mid x] + \dot\sigma_t \mathbb E[\varepsilon \mid x]$. These are
    computed directly (not through each other), so they stay finite at both ends of every path. What
    depends on $t$ only (the Cholesky factors $C_k = L_k L_k^\top$, $L_k^{-1}$, $\log\det C_k$) is
    computed apart: under `jax.vmap` over points with one $t$ it is computed once, and each point costs
    matrix-vector products, $C_k^{-1}(x - \alpha_t\mu_k) = L_k^{-\top} L_k^{-1}(x - \alpha_t\mu_k)$.

    **Arguments:**

    - `weights`: mixture weights $w_k$, shape `(K,)`, non-negative, summing to 1.
    - `means`: $\mu_k$, shape `(K, d)`.
    - `covs`: $\Sigma_k$, shape `(K, d, d)`, symmetric positive definite.
    """

    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    covs: Float[Array, "K d d"]

    def __init__(
        self,
        weights: Float[ArrayLike, " K"],
        means: Float[ArrayLike, "K d"],
        covs: Float[ArrayLike, "K d d"],
    ):
        self.weights = jnp.asarray(weights, dtype=float)
        self.means = jnp.asarray(means, dtype=float)
        self.covs = jnp.asarray(covs, dtype=float)

    def __check_init__(self):
        if not concrete(self.weights, self.covs):
            return
        w = as_numpy(self.weights)
        if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-5):
            raise ValueError(f"GaussianMixture weights must be >= 0 and sum to 1; got {w}.")
        c = as_numpy(self.covs)
        if not (abs(c - c.swapaxes(-1, -2)) <= 1e-6 * (1 + abs(c))).all():
            raise ValueError("GaussianMixture covs must be symmetric.")
        if (np.linalg.eigvalsh(c) <= 0).any():
            raise ValueError("GaussianMixture covs must be positive definite.")

    @property
    def dim(self) -> int:
        """The dimension $d$."""
        return self.means.shape[-1]

    def sample(self, key: Key, n: int) -> Float[Array, "n d"]:
        """`n` exact samples."""
        k_comp, k_noise = jr.split(key)
        comp = jr.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)[comp]
        z = jr.normal(k_noise, (n, self.dim), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, z)

    def _check_point(self, x):
        if x.shape != (self.dim,):
            raise ValueError(
                f"GaussianMixture in dimension {self.dim} takes one point of shape ({self.dim},); got "
                f"shape {x.shape} (vmap over points)."
            )

    def _component_log_probs(self, x):
        chol = jnp.linalg.cholesky(self.covs)
        diff = x - self.means
        sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return jnp.log(self.weights) - 0.5 * (jnp.sum(sol**2, -1) + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Float[Array, " d"]) -> Scalar:
        """$\\log p(x)$ for one point (vmap for many)."""
        self._check_point(x)
        return jax.nn.logsumexp(self._component_log_probs(x))

    def marginal(self, path: AbstractPath, t: Time) -> "GaussianMixture":
        r"""The law of $x_t = \alpha_t x_0 + \sigma_t\varepsilon$, $x_0 \sim p$: a mixture with means
        $\alpha_t\mu_k$ and covariances $\alpha_t^2\Sigma_k + \sigma_t^2 I$."""
        a, s = path.alpha(t), path.sigma(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def _time_terms(self, path: AbstractPath, t):
        """What depends on t only: a, s, the inverse Cholesky factors L_k^{-1} of C_k = L_k L_k^T and
        log det C_k. Under vmap over points with one t it is computed once per time."""
        a, s = path.alpha(t), path.sigma(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        chol = jnp.linalg.cholesky(a**2 * self.covs + s**2 * eye)
        chol_inv = jax.scipy.linalg.solve_triangular(chol, jnp.broadcast_to(eye, chol.shape), lower=True)
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return a, s, chol_inv, logdet

    def _posterior_terms(self, path: AbstractPath, x, t):
        """Responsibilities r_k and the vectors C_k^{-1}(x - a mu_k) = L_k^{-T} L_k^{-1}(x - a mu_k), by
        matrix-vector products with the t-only factors (no solve per point)."""
        self._check_point(x)
        a, s, chol_inv, logdet = self._time_terms(path, t)
        # L^{-1} x - a L^{-1} mu: under vmap with one t, one matrix product for all points.
        white = jnp.einsum("kij,j->ki", chol_inv, x) - a * jnp.einsum("kij,kj->ki", chol_inv, self.means)
        prec_diff = jnp.einsum("kji,kj->ki", chol_inv, white)
        logits = jnp.log(self.weights) - 0.5 * (jnp.sum(white**2, -1) + logdet)
        return jax.nn.softmax(logits), prec_diff, a, s

    def score(self, path: AbstractPath, x: Float[Array, " d"], t: Time) -> Float[Array, " d"]:
        r"""$\nabla_x \log p_t(x)$."""
        r, prec_diff, _, _ = self._posterior_terms(path, x, t)
        return -(r @ prec_diff)

    def _x0_and_noise(self, path: AbstractPath, x, t):
        """E[x0 | x_t = x] and E[eps | x_t = x] from one set of posterior terms."""
        r, prec_diff, a, s = self._posterior_terms(path, x, t)
        x0 = r @ (self.means + a * jnp.einsum("kij,kj->ki", self.covs, prec_diff))
        return x0, s * (r @ prec_diff)

    def x0(self, path: AbstractPath, x: Float[Array, " d"], t: Time) -> Float[Array, " d"]:
        r"""$\mathbb E[x_0 \mid x_t = x]$."""
        return self._x0_and_noise(path, x, t)[0]

    def noise(self, path: AbstractPath, x: Float[Array, " d"], t: Time) -> Float[Array, " d"]:
        r"""$\mathbb E[\varepsilon \mid x_t = x]$."""
        return self._x0_and_noise(path, x, t)[1]

    def velocity(self, path: AbstractPath, x: Float[Array, " d"], t: Time) -> Float[Array, " d"]:
        r"""Probability-flow velocity $\dot\alpha_t\,\mathbb E[x_0\mid x] + \dot\sigma_t\,
        \mathbb E[\varepsilon\mid x]$."""
        x0, noise = self._x0_and_noise(path, x, t)
        return path.d_alpha(t) * x0 + path.d_sigma(t) * noise

    def network(self, path: AbstractPath, prediction: PredictionType = "velocity"):
        """The exact network of this target for `path` in the parameterization `prediction`, a
        callable `network(x, t)` to give to [`Predictor`][diffuse_eqx.Predictor]."""
        return GaussianMixtureNetwork(self, path, prediction)

    def posterior(
        self,
        A: Float[ArrayLike, "dy d"],
        y: Float[ArrayLike, " dy"],
        sigma_y: float | Float[ArrayLike, ""],
    ) -> "GaussianMixture":
        r"""The exact posterior given $y = A x + \sigma_y n$, $n \sim \mathcal N(0, I)$: a mixture with

        $$w'_k \propto w_k\,\mathcal N(y; A\mu_k, A\Sigma_k A^\top + \sigma_y^2 I),\quad
          \mu'_k = \mu_k + K_k(y - A\mu_k),\quad \Sigma'_k = \Sigma_k - K_k A \Sigma_k,$$

        with gain $K_k = \Sigma_k A^\top (A\Sigma_k A^\top + \sigma_y^2 I)^{-1}$."""
        A = jnp.asarray(A, dtype=self.means.dtype)
        y = jnp.asarray(y, dtype=self.means.dtype)
        if concrete(sigma_y) and not sigma_y > 0:
            raise ValueError(f"posterior needs sigma_y > 0; got sigma_y={sigma_y}.")
        if A.shape[-1] != self.dim or y.shape != A.shape[:1]:
            raise ValueError(
                f"posterior needs A of shape (dy, {self.dim}) and y of shape (dy,); got A "
                f"{A.shape} and y {y.shape}."
            )
        eye = jnp.eye(A.shape[0], dtype=A.dtype)
        s_y = jnp.einsum("ij,kjl,ml->kim", A, self.covs, A) + sigma_y**2 * eye
        cross = jnp.einsum("kij,mj->kim", self.covs, A)  # Sigma_k A^T
        gain = jnp.linalg.solve(s_y, jnp.swapaxes(cross, -1, -2)).swapaxes(-1, -2)
        resid = y - self.means @ A.T
        means = self.means + jnp.einsum("kij,kj->ki", gain, resid)
        covs = self.covs - jnp.einsum("kij,kjl->kil", gain, jnp.swapaxes(cross, -1, -2))
        covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
        log_evidence = GaussianMixture(self.weights, self.means @ A.T, s_y)._component_log_probs(y)
        return GaussianMixture(jax.nn.softmax(log_evidence), means, covs)


class GaussianMixtureNetwork(eqx.Module):
    """The exact network of a [`GaussianMixture`][diffuse_eqx.GaussianMixture] for one path and
    parameterization: `network(x, t)` for one particle of shape `(d,)`."""

    target: GaussianMixture
    path: AbstractPath
    prediction: PredictionType = eqx.field(static=True)

    def __check_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}; got {self.prediction!r}.")

    def __call__(self, x: Float[Array, " d"], t: Time) -> Float[Array, " d"]:
        out = getattr(self.target, self.prediction)(self.path, x, t)
        return out.astype(x.dtype)
