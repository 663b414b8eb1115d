from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._check import check_int
from .._custom_types import Key, Scalar
from .gaussian_mixture import GaussianMixture


class ImportanceReference(eqx.Module):
    """What [`importance_posterior`][diffuse_eqx.importance_posterior] returns.

    - `samples`: `n_samples` equally weighted posterior samples (resampled), shape `(n_samples, d)`.
    - `ess`: the effective sample size of the weighted prior draws, $(\\sum w)^2 / \\sum w^2$.
    - `n_draws`: the prior draws used.
    - `log_evidence`: $\\log \\frac{1}{N}\\sum_i p(y \\mid x_i)$, the estimate of $\\log p(y)$ (up to the
      likelihood's constant).
    """

    samples: Float[Array, "n d"]
    ess: Scalar
    n_draws: int = eqx.field(static=True)
    log_evidence: Scalar


def importance_posterior(
    prior: GaussianMixture,
    log_likelihood: Callable[[Float[Array, " d"]], Scalar],
    key: Key,
    n_draws: int = 10**7,
    n_samples: int = 10_000,
    *,
    min_ess: float = 1_000.0,
    chunk: int = 2**18,
) -> ImportanceReference:
    r"""The posterior of any likelihood under a Gaussian-mixture prior, by self-normalised importance
    sampling from the exact prior: $x_i \sim p(x)$, $w_i \propto p(y \mid x_i)$, then `n_samples`
    draws from the weighted set. Exact as `n_draws` grows (its error is that of `ess` independent
    samples), whatever the likelihood: a nonlinear, black-box or non-differentiable forward model
    included. In low dimension (2 to 8) with an informative measurement, $10^7$ draws give an
    effective sample size of thousands; a smaller one is refused.

    **Arguments:**

    - `prior`: the [`GaussianMixture`][diffuse_eqx.GaussianMixture] prior.
    - `log_likelihood`: $x \mapsto \log p(y \mid x)$ for one point (e.g.
      `lambda x: op.log_likelihood(x, y)`), up to a constant.
    - `key`: a PRNG key.
    - `n_draws`: prior draws (default $10^7$), taken in chunks of `chunk` (memory).
    - `n_samples`: resampled posterior samples returned (default 10 000).
    - `min_ess`: a `ValueError` if the effective sample size is below it (default 1 000).

    **Returns:** an [`ImportanceReference`][diffuse_eqx.ImportanceReference].
    """
    n_draws, n_samples, chunk = (
        check_int("n_draws", n_draws),
        check_int("n_samples", n_samples),
        check_int("chunk", chunk),
    )
    n_chunks = -(-n_draws // chunk)
    k_draw, k_pick = jr.split(key)

    draw = jax.jit(lambda k: prior.sample(k, chunk))
    weigh = jax.jit(lambda k: jax.vmap(log_likelihood)(prior.sample(k, chunk)))

    # pass 1: the log weights, chunk by chunk (kept: 8 bytes a draw), and their maximum
    log_w = [weigh(jr.fold_in(k_draw, i)) for i in range(n_chunks)]
    log_w = jnp.concatenate(log_w)[:n_draws]
    if not bool(jnp.all(jnp.isfinite(log_w) | (log_w == -jnp.inf))):
        raise ValueError("importance_posterior: the log-likelihood returned NaN or +inf.")
    top = jnp.max(log_w)
    w = jnp.exp(log_w - top)
    ess = jnp.sum(w) ** 2 / jnp.sum(w**2)
    if float(ess) < min_ess:
        raise ValueError(
            f"importance_posterior: the effective sample size is {float(ess):.0f} of {n_draws} prior draws, "
            f"below min_ess = {min_ess:g}: the likelihood is too concentrated for the prior. Use more draws."
        )
    log_evidence = top + jnp.log(jnp.mean(w))
    # pass 2: the chosen draws, regenerated from their chunk's key
    cdf = jnp.cumsum(w / jnp.sum(w))  # multinomial resampling by the inverse CDF (no n x N array)
    picks = jnp.sort(
        jnp.clip(jnp.searchsorted(cdf, jr.uniform(k_pick, (n_samples,), cdf.dtype)), 0, n_draws - 1)
    )
    samples = []
    for i in range(n_chunks):
        lo = i * chunk
        mine = picks[(picks >= lo) & (picks < lo + chunk)] - lo
        if mine.shape[0]:
            samples.append(draw(jr.fold_in(k_draw, i))[mine])
    samples = jnp.concatenate(samples)
    samples = samples[jr.permutation(jr.fold_in(k_pick, 1), samples.shape[0])]
    return ImportanceReference(samples, ess, n_draws, log_evidence)
