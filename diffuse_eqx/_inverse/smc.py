"""Sequential Monte Carlo posterior samplers: resampling utilities, MCGdiff and TDS.

Particle methods move the whole ensemble together (resampling couples the particles), so they have their
own `generate(key, n_particles)`: a `lax.scan` over the timer's grid with the particles `vmap`ped inside
each step, built from the same pieces as a [`Denoiser`][diffuse_eqx.Denoiser] (a predictor, a timer and
its path).
"""

import abc

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Inexact, Int, PyTree, Real

from .._check import as_numpy, concrete
from .._custom_types import Key, Scalar, Time
from .._denoiser import particle_keys
from .._predictor import AbstractPredictor, Prediction
from .._timer import AbstractTimer
from .operators import AbstractOperator


LogWeights = Float[Array, " n"]


# ------------------------------------------------------------------------------------------------------
# Weights and resampling
# ------------------------------------------------------------------------------------------------------


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
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"systematic_resample: n must be a positive int; got {n!r}.")
    log_weights = _check_log_weights(log_weights, "systematic_resample")
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    u = (jr.uniform(key, (), cdf.dtype) + jnp.arange(n, dtype=cdf.dtype)) / n
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    # u * cdf[-1] < cdf[-1] in exact arithmetic; if rounding reaches it, take the last positive weight.
    last = w.shape[0] - 1 - jnp.argmax(w[::-1] > 0)
    return jnp.where(idx >= w.shape[0], last, idx).astype(jnp.int32)


def resample_if_needed(
    key: Key, log_weights: LogWeights, threshold: Real[ArrayLike, ""]
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


# ------------------------------------------------------------------------------------------------------
# Common machinery
# ------------------------------------------------------------------------------------------------------


class SMCOutput(eqx.Module):
    """What an SMC sampler's `generate` returns.

    - `samples`: equally weighted samples, shape `(n_particles, *x0_shape)`: the final particles
      resampled (systematically) by their weights.
    - `particles`: the final weighted particles, shape `(n_particles, *x0_shape)`.
    - `log_weights`: their normalised log weights, shape `(n_particles,)`.
    - `ess`: the effective sample size at each step's resampling decision (before resampling), one
      entry per step of the grid the sampler ran (MCGdiff inserts its times $\tau_i$).
    - `n_resampled`: how many steps resampled.
    - `nfe`: network evaluations per particle.
    - `n_vjp`: vector-Jacobian products through the network per particle (0 for MCGdiff).
    """

    samples: Float[Array, " n_particles *shape"]
    particles: Float[Array, " n_particles *shape"]
    log_weights: Float[Array, " n_particles"]
    ess: Float[Array, " n_steps"]
    n_resampled: Int[Array, ""]
    nfe: Int[Array, ""]
    n_vjp: Int[Array, ""]


def _ddim_transition(path, t, s):
    r"""Coefficients of the DDIM ($\eta = 1$) transition $q(x_s \mid x_t, \hat x_0) = \mathcal N(\alpha_s
    \hat x_0 + \sigma_s e^{-h}\hat\varepsilon, c^2 I)$: returns $(\alpha_s, \sigma_s e^{-h}, c^2)$."""
    a_t, s_t, a_s, s_s = path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)
    ratio = (a_t * s_s) / (a_s * s_t)  # e^{-h}; 0 where alpha_t = 0 or sigma_s = 0
    return a_s, s_s * ratio, s_s**2 * (1 - ratio**2)


def _infer_x0_shape(name: str, operator, x0_shape) -> tuple[int, ...]:
    if x0_shape is not None:
        return tuple(int(d) for d in x0_shape)
    if hasattr(operator, "svd"):
        vt = jax.eval_shape(operator.svd)[2]
        return (int(vt.shape[-1]),)
    raise ValueError(
        f"{name}: pass x0_shape (the shape of one signal); it can only be inferred from an operator "
        f"with an SVD (e.g. Matrix), and {type(operator).__name__} has none."
    )


class AbstractSMCSampler(eqx.Module):
    """A sequential Monte Carlo posterior sampler for $p(x_0 \\mid y)$ with a diffusion prior.

    Concrete samplers implement `_filter` (the weighted particle system over the grid);
    [`generate`][diffuse_eqx.AbstractSMCSampler.generate] validates its arguments, runs it under
    `jit` and resamples the final weighted ensemble.
    """

    predictor: eqx.AbstractVar[AbstractPredictor]
    operator: eqx.AbstractVar[AbstractOperator]
    y: eqx.AbstractVar[Array]
    timer: eqx.AbstractVar[AbstractTimer]
    resample_threshold: eqx.AbstractVar[float]
    x0_shape: eqx.AbstractVar[tuple[int, ...]]

    def __check_init__(self):
        name = type(self).__name__
        if not isinstance(self.predictor, AbstractPredictor):
            raise TypeError(f"{name} predictor must be an AbstractPredictor; got {type(self.predictor)}.")
        if not isinstance(self.operator, AbstractOperator):
            raise TypeError(f"{name} operator must be an AbstractOperator; got {type(self.operator)}.")
        if not isinstance(self.timer, AbstractTimer):
            raise TypeError(f"{name} timer must be an AbstractTimer; got {type(self.timer)}.")
        y_shape = tuple(self.operator.y_shape(self.x0_shape))
        if tuple(self.y.shape) != y_shape:
            raise ValueError(
                f"{name}: y has shape {tuple(self.y.shape)}, but {type(self.operator).__name__} maps a "
                f"signal of shape {self.x0_shape} to a measurement of shape {y_shape}."
            )
        if concrete(self.resample_threshold) and not 0 <= self.resample_threshold <= 1:
            raise ValueError(
                f"{name} resample_threshold (an ESS fraction) must be in [0, 1]; got "
                f"{self.resample_threshold}."
            )
        ts, path = self.timer.times(), self.predictor.path
        if concrete(ts, path.t_max) and float(as_numpy(ts)[0]) > float(path.t_max) * (1 + 1e-6):
            raise ValueError(
                f"{name}: the timer starts at t={float(as_numpy(ts)[0])}, beyond the path's "
                f"t_max={path.t_max}."
            )

    def generate(self, key: Key, n_particles: int) -> SMCOutput:
        """Runs the particle system with `n_particles` particles.

        The particles interact (resampling), so unlike [`Denoiser`][diffuse_eqx.Denoiser] a particle
        depends on the size of the ensemble; runs with the same key and size are identical.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n_particles`: the size of the ensemble (and the number of samples returned).

        **Returns:** an [`SMCOutput`][diffuse_eqx.SMCOutput].
        """
        if isinstance(n_particles, bool) or not isinstance(n_particles, int | np.integer):
            raise TypeError(f"n_particles must be an int; got {n_particles!r}.")
        if n_particles < 1:
            raise ValueError(f"n_particles must be >= 1; got {n_particles}.")
        return _generate(self, key, int(n_particles))

    @abc.abstractmethod
    def _filter(self, key: Key, n: int) -> tuple[Array, Array, Array, Array, Array, Array]:
        """(particles, log_weights, ess per step, n_resampled, nfe, n_vjp)."""

    def _dtype(self):
        return jnp.result_type(float)

    def _init_particles(self, key: Key, n: int, t0: Time) -> Float[Array, " n *shape"]:
        std = self.predictor.path.prior_std(t0)
        dtype = self._dtype()
        return jax.vmap(lambda k: (std * jr.normal(k, self.x0_shape, dtype)).astype(dtype))(
            particle_keys(key, n)
        )


@eqx.filter_jit
def _generate(sampler: AbstractSMCSampler, key: Key, n: int) -> SMCOutput:
    k_filter, k_final = jr.split(key)
    particles, log_w, ess_hist, n_res, nfe, n_vjp = sampler._filter(k_filter, n)
    idx = systematic_resample(k_final, log_w, n)
    return SMCOutput(
        samples=particles[idx],
        particles=particles,
        log_weights=log_w - jax.nn.logsumexp(log_w),
        ess=ess_hist,
        n_resampled=n_res,
        nfe=nfe,
        n_vjp=n_vjp,
    )


def _evaluate_all(predictor: AbstractPredictor, x, t, state):
    """The predictor on every particle: (Prediction, new states, nfe per particle)."""
    return jax.vmap(predictor.evaluate, in_axes=(0, None, 0))(x, t, state)


def _gather(tree: PyTree, idx: Int[Array, " n"]) -> PyTree:
    return jax.tree.map(lambda leaf: leaf[idx], tree)


# ------------------------------------------------------------------------------------------------------
# MCGdiff
# ------------------------------------------------------------------------------------------------------


class MCGdiff(AbstractSMCSampler):
    r"""MCGdiff (Cardoso et al. 2024): sequential Monte Carlo for linear inverse problems
    $y = A x_0 + \sigma_y\varepsilon$, asymptotically exact in the number of particles.

    In the SVD basis $A = U S V^\top$, with $\bar x = V^\top x$ and $\bar y = U^\top y$, the measurement
    splits into independent scalar ones, $\bar y_i = s_i \bar x_{0,i} + \sigma_y \varepsilon_i$. Since
    $\alpha_\tau \bar y_i / s_i$ is distributed like the forward-noised coordinate $\bar x_{\tau_i, i}$
    at the time $\tau_i$ where $\sigma_\tau/\alpha_\tau = \sigma_y / s_i$ (the path's $\lambda(\tau_i)
    = \log(s_i/\sigma_y)$; $\tau_i = 0$ if $\sigma_y = 0$), the posterior is the law of the backward
    diffusion conditioned on $\bar x_{\tau_i, i} = \alpha_{\tau_i}\bar y_i/s_i$. For $t \ge \tau_i$
    the coordinate carries the potential

    $$g_{t,i}(\bar x_{t,i}) = \mathcal N\big(\bar x_{t,i};\ \alpha_t \bar y_i / s_i,\ v_{t,i}\big),
      \qquad v_{t,i} = \sigma_t^2 - \frac{\alpha_t^2}{\alpha_{\tau_i}^2}\sigma_{\tau_i}^2
      + \kappa \frac{\alpha_t^2}{\alpha_{\tau_i}^2},$$

    the forward transition from $\tau_i$ to $t$; below $\tau_i$ it is free. Each step $t \to s$ uses
    the DDIM ($\eta = 1$) transition $\mathcal N(m, c^2 I)$, $m = \alpha_s\hat x_0 + \sigma_s e^{-h}
    \hat\varepsilon$ (the exact $q(x_s \mid x_t, \hat x_0)$ of
    [`DDIM`][diffuse_eqx.DDIM]): free coordinates and the null space of $A$ follow it; a constrained
    coordinate is drawn from its product with the potential (a Kalman step),

    $$\bar x_{s,i} \sim \mathcal N\Big(\bar m_i + K_i(\alpha_s\bar y_i/s_i - \bar m_i),\ K_i v_{s,i}\Big),
      \qquad K_i = \frac{c^2}{c^2 + v_{s,i}},$$

    and the particle is weighted, before this move (a fully adapted auxiliary particle filter), by

    $$\omega = \prod_{i:\, s \ge \tau_i} \mathcal N\big(\alpha_s \bar y_i/s_i;\ \bar m_i,\ c^2 + v_{s,i}
      \big) \Big/ \prod_{i:\, t > \tau_i} g_{t,i}(\bar x_{t,i}).$$

    The times $\tau_i$ are inserted into the timer's grid, so a coordinate is pinned exactly at
    $\tau_i$ ($v_{\tau_i, i} = 0$: no $\kappa$ is needed when $\sigma_y > 0$). With $\sigma_y = 0$
    the posterior is degenerate and the pinning potential at $\tau_i = 0$ keeps a variance $\kappa > 0$
    (the paper's $\kappa$). Resampling is systematic, by default at every step as in the paper: the
    weights are predictive (computed before the move), and resampling on them at once is the fully
    adapted filter's natural choice (on problems of `benchmarks/posterior_gmm.py` it errs 1.5 to 3.5
    times less on the mode weights than resampling only when the ESS falls below $N/2$). One network
    evaluation per particle per step (steps of zero length, where a
    $\tau_i$ meets a grid time, are skipped); no gradients.

    For exactness the grid should end at $t = 0$; a $\tau_i$ below the grid's last time is moved up to
    it (an approximation), and one above its first time is refused (the observation would be
    noisier than the initial noise: start the grid at larger $t$).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{cardoso2024monte,
          title={Monte Carlo guided Denoising Diffusion models for Bayesian linear inverse problems},
          author={Cardoso, Gabriel and Janati El Idrissi, Yazid and Le Corff, Sylvain and
                  Moulines, Eric},
          booktitle={ICLR}, year={2024}}
        ```

    **Arguments:**

    - `predictor`: the prior ([`Predictor`][diffuse_eqx.Predictor] or any
      [`AbstractPredictor`][diffuse_eqx.AbstractPredictor]).
    - `operator`: a linear operator with an `svd()` returning `(U, S, Vt)` (e.g.
      [`Matrix`][diffuse_eqx.Matrix]); signals are flattened to $V^\top$'s columns. Zero singular
      values are unobserved directions.
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `timer`: the time grid (any [`AbstractTimer`][diffuse_eqx.AbstractTimer]).
    - `kappa`: the pinning variance $\kappa > 0$ used only when $\sigma_y = 0$ (default $10^{-4}$).
    - `resample_threshold`: resample when ESS $<$ this fraction of $N$ (default 1: every step).
    - `x0_shape`: the shape of one signal (default: `(d_x,)` from the SVD).
    """

    predictor: AbstractPredictor
    operator: AbstractOperator
    y: Float[Array, "*y"]
    timer: AbstractTimer
    kappa: float
    resample_threshold: float
    x0_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        predictor: AbstractPredictor,
        operator: AbstractOperator,
        y: Float[ArrayLike, "*y"],
        timer: AbstractTimer,
        kappa: float = 1e-4,
        resample_threshold: float = 1.0,
        x0_shape: tuple[int, ...] | None = None,
    ):
        if not hasattr(operator, "svd"):
            raise TypeError(
                f"MCGdiff needs an operator with svd() -> (U, S, Vt), such as Matrix; got "
                f"{type(operator).__name__}. Use TDS for operators without an SVD."
            )
        self.predictor, self.operator, self.timer = predictor, operator, timer
        self.y = jnp.asarray(y)
        self.kappa, self.resample_threshold = kappa, resample_threshold
        self.x0_shape = _infer_x0_shape("MCGdiff", operator, x0_shape)

    def __check_init__(self):
        if concrete(self.kappa) and not self.kappa >= 0:
            raise ValueError(f"MCGdiff kappa must be >= 0; got kappa={self.kappa}.")
        if concrete(self.kappa, self.operator.sigma_y) and self.kappa == 0 and self.operator.sigma_y == 0:
            raise ValueError(
                "MCGdiff with a noiseless operator (sigma_y = 0) needs kappa > 0: the posterior is "
                "degenerate and the final pinning potential needs a variance (the paper uses 1e-4)."
            )

    def _filter(self, key: Key, n: int):
        path, dtype = self.predictor.path, self._dtype()
        ts = self.timer.times().astype(dtype)
        U, S, Vt = (jnp.asarray(a, dtype) for a in self.operator.svd())
        ybar = U.T @ self.y.reshape(-1).astype(dtype)
        sigma_y = jnp.asarray(self.operator.sigma_y, dtype)
        kappa = jnp.where(sigma_y > 0, 0.0, jnp.asarray(self.kappa, dtype))
        kappa = eqx.error_if(
            kappa, kappa + sigma_y <= 0, "MCGdiff with sigma_y = 0 needs kappa > 0 (see its docstring)."
        )
        tol = max(Vt.shape) * jnp.finfo(dtype).eps * jnp.max(S)
        observed = S > tol
        s_safe = jnp.where(observed, S, 1.0)
        lam = jnp.log(s_safe) - jnp.log(jnp.where(sigma_y > 0, sigma_y, 1.0))
        tau_raw = jnp.where(sigma_y > 0, path.t_from_lambda(lam), 0.0)
        tau_raw = eqx.error_if(
            tau_raw,
            jnp.any(observed & (tau_raw > ts[0])),
            "MCGdiff: a singular direction is observed with more noise (sigma_y / s_i) than the "
            "initial noise of the grid (sigma / alpha at its first time); start the grid at larger t.",
        )
        tau = jnp.where(observed, jnp.clip(tau_raw, ts[-1], ts[0]), ts[-1])
        grid = jnp.sort(jnp.concatenate([ts, tau]))[::-1]
        a_tau, s_tau = path.alpha(tau), path.sigma(tau)

        def potential(t):
            """Mean, variance and activity of each coordinate's potential at time t."""
            a, s = path.alpha(t), path.sigma(t)
            var = jnp.where(t == tau, 0.0, jnp.maximum(s**2 - (a * s_tau / a_tau) ** 2, 0.0))
            var = var + kappa * (a / a_tau) ** 2
            return a * ybar / s_safe, var, observed & (t >= tau)

        def log_potential(xbar, t):
            """sum_i log g_{t,i}, up to constants; a Dirac potential (var = 0, at t = tau_i) is the same
            constant for every particle (they all sit at its atom) and is left out."""
            mean, var, active = potential(t)
            active = active & (var > 0)
            safe = jnp.where(active, var, 1.0)
            return jnp.sum(jnp.where(active, -((xbar - mean) ** 2) / (2 * safe), 0.0), -1)

        flat = lambda x: x.reshape(n, -1)  # noqa: E731
        k_init, k_steps = jr.split(key)
        x = flat(self._init_particles(k_init, n, grid[0]))
        log_w = log_potential(x @ Vt.T, grid[0])
        pstate = jax.vmap(self.predictor.init)(x.reshape(n, *self.x0_shape))

        def step(carry, inputs):
            x, log_w, pstate, nfe, n_res = carry
            t, s, k = inputs

            def move(_):
                pred, new_pstate, cost = _evaluate_all(
                    self.predictor, x.reshape(n, *self.x0_shape), t, pstate
                )
                a_s, b_s, c2 = _ddim_transition(path, t, s)
                m = a_s * flat(pred.x0) + b_s * flat(pred.noise)
                mbar = m @ Vt.T
                mean_s, v_s, act_s = potential(s)
                num = jnp.sum(jnp.where(act_s, -((mean_s - mbar) ** 2) / (2 * (c2 + v_s)), 0.0), -1)
                lw = log_w + num - log_potential(x @ Vt.T, t)
                e = ess(lw)
                k_res, k_noise = jr.split(jr.fold_in(k_steps, k))
                idx, lw, did = resample_if_needed(k_res, lw, self.resample_threshold)
                m, mbar, new_pstate = m[idx], mbar[idx], _gather(new_pstate, idx)
                z = jr.normal(k_noise, m.shape, dtype)
                zbar = z @ Vt.T
                gain = jnp.where(act_s, c2 / jnp.where(act_s, c2 + v_s, 1.0), 0.0)
                xbar_free = mbar + jnp.sqrt(c2) * zbar
                xbar_pinned = mbar + gain * (mean_s - mbar) + jnp.sqrt(gain * v_s) * zbar
                x_new = m + jnp.sqrt(c2) * z + jnp.where(act_s, xbar_pinned - xbar_free, 0.0) @ Vt
                carry = (x_new.astype(dtype), lw, new_pstate, nfe + jnp.max(cost), n_res + did)
                return carry, e

            def skip(_):  # a zero-length step (tau_i on a grid time): nothing to do
                return carry, ess(log_w)

            return lax.cond(t > s, move, skip, None)

        carry = (x, log_w, pstate, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))
        inputs = (grid[:-1], grid[1:], jnp.arange(grid.shape[0] - 1))
        (x, log_w, _, nfe, n_res), ess_hist = lax.scan(step, carry, inputs)
        return x.reshape(n, *self.x0_shape), log_w, ess_hist, n_res, nfe, jnp.asarray(0, jnp.int32)


# ------------------------------------------------------------------------------------------------------
# TDS
# ------------------------------------------------------------------------------------------------------


class TDS(AbstractSMCSampler):
    r"""The twisted diffusion sampler (Wu et al. 2023): sequential Monte Carlo with twisting functions
    built from the denoiser, asymptotically exact in the number of particles, for any measurement
    $y = \mathcal A(x_0) + \sigma_y\varepsilon$ (linear or not).

    The twisting function approximates $p(y \mid x_t)$ by a Gaussian around the denoised estimate,

    $$\tilde p_t(y \mid x_t) = \mathcal N\big(y;\ \mathcal A(\hat x_0(x_t)),\ (\sigma_y^2 + r_t^2) I\big),
      \qquad r_t^2 = \frac{\sigma_t^2 \tau^2}{\alpha_t^2\tau^2 + \sigma_t^2},$$

    ($r_t^2 = \sigma_t^2/\alpha_t^2$ for $\tau = \infty$, the paper's default; $\tilde p_0 = p(y \mid
    x_0)$ exactly). Each step $t \to s$ proposes from the DDIM ($\eta = 1$) transition
    $p_\theta(x_s \mid x_t) = \mathcal N(m, c^2 I)$ (see [`DDIM`][diffuse_eqx.DDIM]) shifted by the
    gradient of the log twist,

    $$x_s \sim \tilde p_\theta(x_s \mid x_t, y) = \mathcal N\big(m + c^2\,\nabla_{x_t}\log\tilde p_t(y
      \mid x_t),\ c^2 I\big),$$

    (the step variance times the gradient, as in the paper's Euler–Maruyama proposal; its image code
    shifts $\hat x_0$ by $(\sigma_t^2/\alpha_t)\nabla$ instead, the same to first order in the step,
    but with a factor that is infinite where $\alpha_t = 0$), and weights the particle by

    $$\omega = \frac{p_\theta(x_s \mid x_t)\,\tilde p_s(y \mid x_s)}{\tilde p_\theta(x_s \mid x_t, y)\,
      \tilde p_t(y\mid x_t)},$$

    starting from $\omega = \tilde p_{t_0}(y \mid x_{t_0})$; resampling is systematic when the ESS falls
    below `resample_threshold` $\cdot N$. The twist and its gradient at $x_s$ cost one network
    evaluation and one vector-Jacobian product per particle per step, reused by the next step; at
    $\sigma_s = 0$ the twist is the likelihood itself (no evaluation).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{wu2023practical,
          title={Practical and Asymptotically Exact Conditional Sampling in Diffusion Models},
          author={Wu, Luhuan and Trippe, Brian L. and Naesseth, Christian A. and Blei, David M. and
                  Cunningham, John P.},
          booktitle={NeurIPS}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior ([`Predictor`][diffuse_eqx.Predictor] or any
      [`AbstractPredictor`][diffuse_eqx.AbstractPredictor]); it is differentiated.
    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator], with $\sigma_y > 0$.
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `timer`: the time grid (any [`AbstractTimer`][diffuse_eqx.AbstractTimer]).
    - `data_var`: the prior variance $\tau^2$ in $r_t^2$ (default `None`: $\tau = \infty$); $r_t^2$ is
      then the exact $\mathrm{Var}[x_0 \mid x_t]$ for a $\mathcal N(\mu, \tau^2 I)$ prior.
    - `resample_threshold`: resample when ESS $<$ this fraction of $N$ (default 0.5).
    - `x0_shape`: the shape of one signal (default: `(d_x,)` for operators with an SVD, required
      otherwise).
    """

    predictor: AbstractPredictor
    operator: AbstractOperator
    y: Inexact[Array, "*y"]
    timer: AbstractTimer
    data_var: float | None
    resample_threshold: float
    x0_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        predictor: AbstractPredictor,
        operator: AbstractOperator,
        y: Inexact[ArrayLike, "*y"],
        timer: AbstractTimer,
        data_var: float | None = None,
        resample_threshold: float = 0.5,
        x0_shape: tuple[int, ...] | None = None,
    ):
        self.predictor, self.operator, self.timer = predictor, operator, timer
        self.y = jnp.asarray(y)
        self.data_var, self.resample_threshold = data_var, resample_threshold
        self.x0_shape = _infer_x0_shape("TDS", operator, x0_shape)

    def __check_init__(self):
        if concrete(self.operator.sigma_y) and not self.operator.sigma_y > 0:
            raise ValueError(
                f"TDS needs sigma_y > 0 (its final weight is the likelihood p(y | x0)); got "
                f"sigma_y={self.operator.sigma_y}. For a noiseless linear measurement use MCGdiff."
            )
        if self.data_var is not None and concrete(self.data_var) and not self.data_var > 0:
            raise ValueError(f"TDS data_var must be > 0 or None; got data_var={self.data_var}.")

    def _precision(self, t: Time) -> Scalar:
        """$1/(\\sigma_y^2 + r_t^2)$, finite at both ends of the path."""
        path, sy2 = self.predictor.path, jnp.asarray(self.operator.sigma_y) ** 2
        a2, s2 = path.alpha(t) ** 2, path.sigma(t) ** 2
        if self.data_var is None:
            return a2 / (sy2 * a2 + s2)
        tau2 = self.data_var
        return (a2 * tau2 + s2) / (sy2 * (a2 * tau2 + s2) + s2 * tau2)

    def _sq_residual(self, x0: Array) -> Scalar:
        r = self.operator.residual(x0, self.y)
        return jnp.sum(jnp.real(r * jnp.conj(r)))

    def _twist(self, x, t, pstate):
        """log twist at (x, t), its gradient, the prediction, the new predictor state and the NFE."""

        def f(x):
            pred, new_state, cost = self.predictor.evaluate(x, t, pstate)
            return -0.5 * self._precision(t) * self._sq_residual(pred.x0), (pred, new_state, cost)

        (val, (pred, new_state, cost)), grad = jax.value_and_grad(f, has_aux=True)(x)
        return val, grad.astype(x.dtype), pred, new_state, cost

    def _filter(self, key: Key, n: int):
        path, dtype = self.predictor.path, self._dtype()
        ts = self.timer.times().astype(dtype)
        ts = eqx.error_if(ts, jnp.asarray(self.operator.sigma_y) <= 0, "TDS needs sigma_y > 0.")
        k_init, k_steps = jr.split(key)
        x = self._init_particles(k_init, n, ts[0])
        pstate = jax.vmap(self.predictor.init)(x)
        twist = jax.vmap(self._twist, in_axes=(0, None, 0))

        def first_without_grad(_):
            # alpha(t0) = 0: x_t0 carries no information on x0, so the twist is flat (no VJP needed;
            # differentiating a network there may give 0 * inf = NaN).
            pred, new_state, cost = _evaluate_all(self.predictor, x, ts[0], pstate)
            lt = jax.vmap(lambda x0: -0.5 * self._precision(ts[0]) * self._sq_residual(x0))(pred.x0)
            return lt, jnp.zeros_like(x), pred, new_state, cost, jnp.asarray(0, jnp.int32)

        def first_with_grad(_):
            return (*twist(x, ts[0], pstate), jnp.asarray(1, jnp.int32))

        alpha0 = path.alpha(ts[0])
        log_tw, grad, pred, pstate, cost, vjp0 = lax.cond(
            alpha0 > 0, first_with_grad, first_without_grad, None
        )
        sumd = lambda a: jnp.sum(a.reshape(n, -1), -1)  # noqa: E731

        def step(carry, inputs):
            x, log_w, log_tw, grad, pred, pstate, nfe, n_vjp, n_res = carry
            t, s, k = inputs
            k_res, k_noise = jr.split(jr.fold_in(k_steps, k))
            e = ess(log_w)
            idx, log_w, did = resample_if_needed(k_res, log_w, self.resample_threshold)
            log_tw, grad, pred, pstate = _gather((log_tw, grad, pred, pstate), idx)
            a_s, b_s, c2 = _ddim_transition(path, t, s)
            m = a_s * pred.x0 + b_s * pred.noise
            z = jr.normal(k_noise, x.shape, dtype)
            x_s = (m + c2 * grad + jnp.sqrt(c2) * z).astype(dtype)
            # log p_theta(x_s | x_t) - log p~_theta(x_s | x_t, y), exactly, for x_s = m + c^2 g + c z
            log_ratio = -0.5 * c2 * sumd(grad**2) - jnp.sqrt(c2) * sumd(grad * z)

            def evaluate(_):
                lt, g, p, st, cst = twist(x_s, s, pstate)
                return lt, g, p, st, jnp.max(cst), jnp.asarray(1, jnp.int32)

            def final(_):  # sigma_s = 0: x_s is data, the twist is the likelihood
                lt = jax.vmap(lambda xx: -0.5 * self._precision(s) * self._sq_residual(xx))(x_s)
                p = Prediction(x0=x_s, noise=jnp.zeros_like(x_s))
                zero = jnp.asarray(0, jnp.int32)
                return lt.astype(log_w.dtype), jnp.zeros_like(x_s), p, pstate, zero, zero

            lt_s, g_s, p_s, pstate, cost, vjp = lax.cond(path.sigma(s) > 0, evaluate, final, None)
            log_w = log_w + log_ratio + lt_s - log_tw
            carry = (x_s, log_w, lt_s, g_s, p_s, pstate, nfe + cost, n_vjp + vjp, n_res + did)
            return carry, e

        carry = (x, log_tw, log_tw, grad, pred, pstate, jnp.max(cost), vjp0, jnp.asarray(0, jnp.int32))
        inputs = (ts[:-1], ts[1:], jnp.arange(ts.shape[0] - 1))
        (x, log_w, *_, nfe, n_vjp, n_res), ess_hist = lax.scan(step, carry, inputs)
        return x, log_w, ess_hist, n_res, nfe, n_vjp
