import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._check import concrete
from .._custom_types import Key, Time
from .._path import AbstractPath


def noise_to(path: AbstractPath, x0: Float[Array, "*shape"], t: Time, key: Key) -> Float[Array, "*shape"]:
    r"""Noises data to time $t$ of the path, exactly as the forward process does:
    $x_t = \alpha(t)\, x_0 + \sigma(t)\, \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$ (SDEdit's
    starting point). If `x0` are samples of the data distribution, $x_t$ are samples of the path's
    marginal at $t$.

    **Arguments:**

    - `path`: any [`AbstractPath`][diffuse_eqx.AbstractPath].
    - `x0`: the data, any shape (a batch `(n, *x0_shape)` included): one independent draw of
      $\varepsilon$ per entry, from `key`.
    - `t`: a time in $[0, t_{\max}]$.
    - `key`: a JAX PRNG key.

    **Returns:** $x_t$, shaped and typed like `x0` (float32 at least).
    """
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    t = jnp.asarray(t)
    if t.shape != ():
        raise ValueError(f"noise_to: t must be a scalar time; got shape {t.shape}.")
    if concrete(t, path.t_max) and not 0 <= float(t) <= float(path.t_max) * (1 + 1e-6):
        raise ValueError(
            f"noise_to: t={float(t):g} is outside [0, t_max = {float(path.t_max):g}] of the path."
        )
    eps = jr.normal(key, x0.shape, x0.dtype)
    return (path.alpha(t) * x0 + path.sigma(t) * eps).astype(x0.dtype)


def noise_each(
    path: AbstractPath, x0: Float[Array, " n *shape"], t: Time, keys: Array
) -> Float[Array, " n *shape"]:
    """[`noise_to`][diffuse_eqx.noise_to] per particle of the batch `x0`, particle $i$ with `keys[i]`
    (so that it is the same whatever the batch)."""
    return jax.vmap(lambda xi, ki: noise_to(path, xi, t, ki))(x0, keys)
