import functools

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

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
