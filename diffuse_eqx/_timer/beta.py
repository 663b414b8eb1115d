import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import betainc, betaln

from .._check import check_positive, concrete
from .._custom_types import Grid, Hyperparameter
from .base import AbstractTimer, check_grid, check_n_steps, check_range


class BetaTimer(AbstractTimer):
    r"""The "beta sigmas" of Lee et al. (2024): the quantiles of a
    $\mathrm{Beta}(\alpha, \beta)$ distribution at equally spaced levels, mapped to
    $[t_{\min}, t_{\max}]$ (diffusers' `_convert_to_beta`, `use_beta_sigmas=True`):

    $$t_i = t_{\min} + (t_{\max} - t_{\min})\, F^{-1}_{\alpha,\beta}\big(1 - \tfrac{i}{N-1}\big),
      \quad i = 0..N-1, \qquad t_N = 0,$$

    with $F_{\alpha,\beta}$ the regularized incomplete beta function. $\alpha, \beta < 1$ (the default
    0.6, 0.6) put more steps near both ends. `append_zero=False` ends at $t_{\min}$ with $N + 1$
    quantiles. The defaults are diffusers' `FlowMatchEulerDiscreteScheduler` range (`shift=1`), so
    `BetaTimer(N)` is its `use_beta_sigmas=True` grid; for `EDM`, set `t_max=80` and e.g.
    `t_min=0.002`.

    The quantiles are found by bisection on `jax.scipy.special.betainc` (to its accuracy: about
    $10^{-15}$ in float64, $10^{-6}$ in float32). The grid is differentiable in neither $\alpha$ nor
    $\beta$ (asking for it is an error).

    ??? cite "Reference"
        ```bibtex
        @misc{lee2024beta,
          title={Beta Sampling is All You Need: Efficient Image Generation Strategy for Diffusion
                 Models using Stepwise Spectral Analysis},
          author={Lee, Haeil and Lee, Hansang and Gye, Seoyeon and Kim, Junmo},
          year={2024}, eprint={2407.12173}, archivePrefix={arXiv}}
        ```

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `alpha`, `beta`: the Beta distribution's parameters (default 0.6 and 0.6, diffusers').
    - `t_min`, `t_max`: the range of the quantiles (defaults 0.001 and 1).
    - `append_zero`: end with a step to $t = 0$ (default `True`).
    """

    n_steps: int = eqx.field(static=True)
    alpha: Hyperparameter = 0.6
    beta: Hyperparameter = 0.6
    t_min: Hyperparameter = 1e-3
    t_max: Hyperparameter = 1.0
    append_zero: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        check_n_steps("BetaTimer", self.n_steps)
        check_positive("BetaTimer alpha", self.alpha)
        check_positive("BetaTimer beta", self.beta)
        check_range("BetaTimer", self.t_max, self.t_min)
        if self.append_zero:
            if concrete(self.t_min) and not self.t_min > 0:
                raise ValueError(
                    f"BetaTimer with append_zero=True needs t_min > 0; got t_min={self.t_min} "
                    "(set append_zero=False to end at t_min = 0)."
                )
            if self.n_steps < 2:
                raise ValueError("BetaTimer with append_zero=True needs n_steps >= 2.")
        check_grid("BetaTimer", self.times())

    def times(self) -> Grid:
        n = self.n_steps if self.append_zero else self.n_steps + 1
        levels = 1.0 - jnp.linspace(0.0, 1.0, n)
        # padded to a power of two so that grids of similar sizes share one compilation
        padded = jnp.zeros(max(64, 1 << (n - 1).bit_length()), levels.dtype).at[:n].set(levels)
        a, b = (jnp.asarray(p, levels.dtype) for p in (self.alpha, self.beta))
        ts = self.t_min + (self.t_max - self.t_min) * _beta_ppf(padded, a, b)[:n]
        return jnp.append(ts, 0.0) if self.append_zero else ts


_BISECTIONS = 80  # halvings of [0, 1]: below float64 resolution of every quantile that matters


@jax.custom_jvp
def _beta_ppf_impl(u, a, b):
    """The $\\mathrm{Beta}(a, b)$ quantile at levels `u` in [0, 1], by bisection on `betainc`."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = betainc(a, b, mid) < u
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, halve, (jnp.zeros_like(u), jnp.ones_like(u)))
    return jnp.where(u <= 0, 0.0, jnp.where(u >= 1, 1.0, 0.5 * (lo + hi)))


def _beta_ppf_jvp(primals, tangents):
    u, a, b = primals
    du, da, db = tangents
    if not (isinstance(da, SymbolicZero) and isinstance(db, SymbolicZero)):
        raise NotImplementedError(
            "BetaTimer's grid is not differentiable in alpha or beta (jax's betainc has no derivative "
            "in its parameters)."
        )
    x = _beta_ppf_impl(u, a, b)
    if isinstance(du, SymbolicZero):
        return x, jnp.zeros_like(x)
    # dx/du = 1 / pdf(x), the inverse function's derivative
    log_pdf = (a - 1) * jnp.log(x) + (b - 1) * jnp.log1p(-x) - betaln(a, b)
    return x, du * jnp.exp(-log_pdf)


_beta_ppf_impl.defjvp(_beta_ppf_jvp, symbolic_zeros=True)
_beta_ppf = jax.jit(_beta_ppf_impl)
