"""Importance weights and resampling for the particle (SMC) samplers."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int

from .._check import check_int
from .._custom_types import Hyperparameter, Key, Scalar


LogWeights = Float[Array, " n"]


def ess(log_weights: LogWeights) -> Scalar:
    r"""Effective sample size of unnormalised log weights $\ell_i = \log w_i$:

    $$\mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}
      = \exp\big(2\,\mathrm{LSE}(\ell) - \mathrm{LSE}(2\ell)\big),$$

    computed with log-sum-exp, so any common scale of the weights is harmless. It is $N$ for equal
    weights and 1 when one particle carries all the weight; it is 0 when every weight is zero (all
    $\ell_i = -\infty$), and NaN if any $\ell_i$ is NaN.
    """
    lse = jax.nn.logsumexp(log_weights)
    out = jnp.exp(2 * lse - jax.nn.logsumexp(2 * log_weights))
    return jnp.where(jnp.isneginf(lse), jnp.zeros_like(out), out)


def _check_log_weights(log_weights: LogWeights, name: str) -> LogWeights:
    bad = (
        ~jnp.any(jnp.isfinite(log_weights))
        | jnp.any(jnp.isnan(log_weights))
        | jnp.any(log_weights == jnp.inf)
    )
    return eqx.error_if(
        log_weights,
        bad,
        f"{name}: the log weights must be finite or -inf (zero weight), with at least one finite; got "
        "all -inf (every particle has zero weight: the ensemble has collapsed, e.g. a measurement "
        "impossible under the prior or sigma_y too small for the grid), or a NaN / +inf.",
    )


def systematic_resample(key: Key, log_weights: LogWeights, n: int) -> Int[Array, " m"]:
    r"""Systematic resampling: `n` ancestor indices drawn with one uniform $U \sim \mathcal U[0, 1)$,

    $$a_j = \min\{i : \textstyle\sum_{k \le i} \bar w_k > (U + j)/n\}, \qquad j = 0, \dots, n - 1,$$

    with $\bar w = \mathrm{softmax}(\ell)$. It is unbiased, $\mathbb E[\#\{j : a_j = i\}] = n \bar w_i$,
    and each count is $\lfloor n\bar w_i \rfloor$ or $\lceil n\bar w_i\rceil$ (the least variance of the
    standard schemes). Zero weights ($\ell_i = -\infty$) are never drawn, so a collapsed ensemble, one
    particle with all the weight, gives `n` copies of it.

    ??? cite "Reference"
        ```bibtex
        @article{kitagawa1996monte,
          title={Monte Carlo filter and smoother for non-Gaussian nonlinear state space models},
          author={Kitagawa, Genshiro},
          journal={Journal of Computational and Graphical Statistics},
          volume={5}, number={1}, pages={1--25}, year={1996}}
        @article{douc2005comparison,
          title={Comparison of Resampling Schemes for Particle Filtering},
          author={Douc, Randal and Capp{\'e}, Olivier and Moulines, Eric},
          journal={ISPA}, year={2005}}
        ```

    **Arguments:**

    - `key`: the PRNG key of the one uniform.
    - `log_weights`: unnormalised log weights, shape `(N,)`; `-inf` is a zero weight.
    - `n`: how many indices to draw (often `N`).

    **Returns:** the ancestor indices, shape `(n,)`, in increasing order. Raises an
    `EquinoxRuntimeError` if every log weight is `-inf`, or any is NaN or `+inf`.
    """
    n = check_int("systematic_resample: n", n)
    log_weights = _check_log_weights(log_weights, "systematic_resample")
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    u = (jr.uniform(key, (), cdf.dtype) + jnp.arange(n, dtype=cdf.dtype)) / n
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    # u * cdf[-1] < cdf[-1] in exact arithmetic; if rounding reaches it, take the last positive weight.
    last = w.shape[0] - 1 - jnp.argmax(w[::-1] > 0)
    return jnp.where(idx >= w.shape[0], last, idx).astype(jnp.int32)


def resample_if_needed(
    key: Key, log_weights: LogWeights, threshold: Hyperparameter
) -> tuple[Int[Array, " n"], LogWeights, Bool[Array, ""]]:
    r"""Adaptive resampling: systematic resampling when $\mathrm{ESS} < $ `threshold` $\cdot N$ (a
    `lax.cond`, so the resampling is skipped, not computed and discarded).

    **Arguments:**

    - `key`: the PRNG key of the resampling.
    - `log_weights`: unnormalised log weights, shape `(N,)`.
    - `threshold`: the ESS fraction in $[0, 1]$ below which to resample (1: always, 0: never).

    **Returns:** the ancestor indices (`arange(N)` when not resampled), the new log weights,
    normalised (uniform $-\log N$ after resampling), and whether it resampled. A NaN ESS resamples
    and so raises, like an ensemble whose weights are all zero.
    """
    n = log_weights.shape[0]
    do = ~(ess(log_weights) >= threshold * n)  # NaN -> resample -> a clear error
    idx = lax.cond(
        do,
        lambda: systematic_resample(key, log_weights, n),
        lambda: jnp.arange(n, dtype=jnp.int32),
    )
    normalised = log_weights - jax.nn.logsumexp(log_weights)
    new = jnp.where(do, jnp.full_like(log_weights, -jnp.log(n)), normalised)
    return idx, new, do
