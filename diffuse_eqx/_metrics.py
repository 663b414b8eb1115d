import functools

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Key, Scalar


@functools.partial(jax.jit, static_argnames="n_projections")
def sliced_wasserstein(
    x: Float[Array, "n d"],
    y: Float[Array, "n d"],
    key: Key,
    n_projections: int = 512,
) -> Scalar:
    r"""Sliced 2-Wasserstein distance between two equal-size sample sets,

    $$SW_2(x, y) = \Big(\mathbb E_{\theta \sim U(S^{d-1})}\, W_2^2(\theta^\top x, \theta^\top y)\Big)^{1/2},$$

    the expectation over `n_projections` random directions, each 1-D $W_2$ exact by sorting.
    Use the same `key` for every comparison so the directions are shared.

    **Arguments:**

    - `x`, `y`: the two sample sets, shape `(n, d)` each.
    - `key`: the PRNG key that draws the directions.
    - `n_projections`: the number of random directions (default 512).

    **Returns:** the scalar $SW_2$ estimate.
    """
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes; got {x.shape} and {y.shape}.")
    theta = jr.normal(key, (n_projections, x.shape[-1]), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    px, py = jnp.sort(x @ theta.T, axis=0), jnp.sort(y @ theta.T, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    r"""The Fréchet distance between Gaussian fits of two sample sets (the squared 2-Wasserstein
    distance between the Gaussians, the "FID" formula in any feature space):

    $$d^2 = \lVert \mu_x - \mu_y \rVert^2 + \operatorname{tr}\Big(\Sigma_x + \Sigma_y
      - 2\big(\Sigma_x^{1/2} \Sigma_y \Sigma_x^{1/2}\big)^{1/2}\Big),$$

    the means and (unbiased) covariances estimated from the samples, computed in float64 on the
    host with symmetric eigendecompositions (no complex square root, no `scipy.linalg.sqrtm`).

    **Arguments:**

    - `x`, `y`: the two sample sets, `(n, d)` and `(m, d)`, $n, m \ge 2$ (features: pixels,
      a classifier's logits, ...).

    **Returns:** $d^2$, a float.
    """
    import numpy as np

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(
            "frechet_distance needs two sample sets (n, d) and (m, d) with n, m >= 2; "
            f"got {x.shape} and {y.shape}."
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("frechet_distance: the samples must be finite.")

    def psd_sqrt(s):
        w, v = np.linalg.eigh((s + s.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    d = x.shape[1]
    cov_x, cov_y = np.cov(x, rowvar=False).reshape(d, d), np.cov(y, rowvar=False).reshape(d, d)
    root_x = psd_sqrt(cov_x)
    cross = np.trace(psd_sqrt(root_x @ cov_y @ root_x))
    mean = np.sum((x.mean(0) - y.mean(0)) ** 2)
    return float(mean + np.trace(cov_x) + np.trace(cov_y) - 2 * cross)
