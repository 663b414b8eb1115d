import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float

from .._check import check_nonnegative, concrete
from .._custom_types import Key
from .._predictor import AbstractPredictor
from .._timer import AbstractTimer
from .operators import Matrix
from .resampling import ess, resample_if_needed
from .smc_base import AbstractSMCSampler, ddim_transition, evaluate_all, gather, infer_x0_shape


class MCGdiff(AbstractSMCSampler):
    r"""MCGdiff (Cardoso et al. 2024): sequential Monte Carlo for linear inverse problems
    $y = A x_0 + \sigma_y\varepsilon$, asymptotically exact in the number of particles.

    In the SVD basis $\bar x = V^\top x$ ($A = USV^\top$) coordinate $i$ is observed at the time $\tau_i$
    where $\sigma_\tau/\alpha_\tau = \sigma_y/s_i$, and carries for $t \ge \tau_i$ the potential
    $g_{t,i} = \mathcal N(\bar x_{t,i};\ \alpha_t \bar y_i / s_i,\ v_{t,i})$. Each step $t \to s$ draws
    the constrained coordinates from the DDIM ($\eta = 1$) transition $\mathcal N(m, c^2 I)$ times the
    potential (a Kalman step), the others from the transition, and weights the particle before the move
    (a fully adapted auxiliary particle filter) by

    $$\omega = \prod_{i:\, s \ge \tau_i} \mathcal N\big(\alpha_s \bar y_i/s_i;\ \bar m_i,\ c^2 + v_{s,i}
      \big) \Big/ \prod_{i:\, t > \tau_i} g_{t,i}(\bar x_{t,i}).$$

    The $\tau_i$ are inserted into the grid, so the pinning is exact ($\kappa$ is used only when
    $\sigma_y = 0$); the grid should end at $t = 0$ and start above every $\tau_i$. Resampling is
    systematic, by default at every step as in the paper. One network evaluation per particle per step;
    no gradients. Derivation: [Inverse problems → MCGdiff][mcgdiff-update].

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
    - `operator`: a [`Matrix`][diffuse_eqx.Matrix] (its SVD; use [`TDS`][diffuse_eqx.TDS] for other
      operators). Zero singular values are unobserved directions.
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `timer`: the time grid (any [`AbstractTimer`][diffuse_eqx.AbstractTimer]).
    - `kappa`: the pinning variance $\kappa > 0$ used only when $\sigma_y = 0$ (default $10^{-4}$).
    - `resample_threshold`: resample when ESS $<$ this fraction of $N$ (default 1: every step).
    - `x0_shape`: the shape of one signal (default: `(d_x,)`, the only one a `Matrix` accepts).
    """

    predictor: AbstractPredictor
    operator: Matrix
    y: Float[Array, "*y"]
    timer: AbstractTimer
    kappa: float
    resample_threshold: float
    x0_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        predictor: AbstractPredictor,
        operator: Matrix,
        y: Float[ArrayLike, "*y"],
        timer: AbstractTimer,
        kappa: float = 1e-4,
        resample_threshold: float = 1.0,
        x0_shape: tuple[int, ...] | None = None,
    ):
        self.predictor, self.operator, self.timer = predictor, operator, timer
        self.y = jnp.asarray(y)
        self.kappa, self.resample_threshold = kappa, resample_threshold
        self.x0_shape = infer_x0_shape("MCGdiff", operator, x0_shape)

    def __check_init__(self):
        check_nonnegative("MCGdiff kappa", self.kappa)
        if concrete(self.kappa, self.operator.sigma_y) and self.kappa == 0 and self.operator.sigma_y == 0:
            raise ValueError(
                "MCGdiff with a noiseless operator (sigma_y = 0) needs kappa > 0: the posterior is "
                "degenerate and the final pinning potential needs a variance (the paper uses 1e-4)."
            )

    def _filter(self, key: Key, n: int):
        path, dtype = self.predictor.path, jnp.result_type(float)
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
                pred, new_pstate, cost = evaluate_all(self.predictor, x.reshape(n, *self.x0_shape), t, pstate)
                a_s, b_s, c2 = ddim_transition(path, t, s)
                m = a_s * flat(pred.x0) + b_s * flat(pred.noise)
                mbar = m @ Vt.T
                mean_s, v_s, act_s = potential(s)
                num = jnp.sum(jnp.where(act_s, -((mean_s - mbar) ** 2) / (2 * (c2 + v_s)), 0.0), -1)
                lw = log_w + num - log_potential(x @ Vt.T, t)
                e = ess(lw)
                k_res, k_noise = jr.split(jr.fold_in(k_steps, k))
                idx, lw, did = resample_if_needed(k_res, lw, self.resample_threshold)
                m, mbar, new_pstate = m[idx], mbar[idx], gather(new_pstate, idx)
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
