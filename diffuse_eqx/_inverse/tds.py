import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Inexact

from .._check import check_positive
from .._custom_types import Key, Scalar, Time
from .._predictor import AbstractPredictor, Prediction
from .._timer import AbstractTimer
from .base import check_noisy
from .operators import AbstractOperator, check_differentiable
from .resampling import ess, resample_if_needed
from .smc_base import AbstractSMCSampler, ddim_transition, evaluate_all, gather, infer_x0_shape


class TDS(AbstractSMCSampler):
    r"""The twisted diffusion sampler (Wu et al. 2023): sequential Monte Carlo with twisting functions
    built from the denoiser, asymptotically exact in the number of particles, for any measurement
    $y = \mathcal A(x_0) + \sigma_y\varepsilon$ (linear or not).

    The twisting function approximates $p(y \mid x_t)$ by a Gaussian around the denoised estimate,

    $$\tilde p_t(y \mid x_t) = \mathcal N\big(y;\ \mathcal A(\hat x_0(x_t)),\ (\sigma_y^2 + r_t^2) I\big),
      \qquad r_t^2 = \frac{\sigma_t^2 \tau^2}{\alpha_t^2\tau^2 + \sigma_t^2},$$

    ($\tilde p_0 = p(y \mid x_0)$ exactly). Each step $t \to s$ proposes from the DDIM ($\eta = 1$)
    transition $p_\theta(x_s \mid x_t) = \mathcal N(m, c^2 I)$ shifted by the gradient of the log twist,
    $\tilde p_\theta(x_s \mid x_t, y) = \mathcal N(m + c^2\,\nabla_{x_t}\log\tilde p_t(y \mid x_t),\ c^2 I)$,
    and weights the particle by

    $$\omega = \frac{p_\theta(x_s \mid x_t)\,\tilde p_s(y \mid x_s)}{\tilde p_\theta(x_s \mid x_t, y)\,
      \tilde p_t(y\mid x_t)};$$

    resampling is systematic when the ESS falls below `resample_threshold` $\cdot N$. One network
    evaluation and one vector-Jacobian product per particle per step. Derivation:
    [Inverse problems → TDS][tds-update].

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
    - `x0_shape`: the shape of one signal (default: the operator's `signal_shape`, e.g. `(d_x,)` for a
      [`Matrix`][diffuse_eqx.Matrix]; required for operators that accept several shapes).
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
        self.x0_shape = infer_x0_shape("TDS", operator, x0_shape)

    def __check_init__(self):
        check_differentiable("TDS", self.operator)
        check_noisy(
            "TDS",
            self.operator,
            "its final weight is the likelihood p(y | x0); for a noiseless linear measurement use MCGdiff",
        )
        check_positive("TDS data_var", self.data_var, " (or None: tau = infinity)")

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
        path, dtype = self.predictor.path, jnp.result_type(float)
        ts = self.timer.times().astype(dtype)
        ts = eqx.error_if(ts, jnp.asarray(self.operator.sigma_y) <= 0, "TDS needs sigma_y > 0.")
        k_init, k_steps = jr.split(key)
        x = self._init_particles(k_init, n, ts[0])
        pstate = jax.vmap(self.predictor.init)(x)
        twist = jax.vmap(self._twist, in_axes=(0, None, 0))

        def first_without_grad(_):
            # alpha(t0) = 0: x_t0 carries no information on x0, so the twist is flat (no VJP needed;
            # differentiating a network there may give 0 * inf = NaN).
            pred, new_state, cost = evaluate_all(self.predictor, x, ts[0], pstate)
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
            log_tw, grad, pred, pstate = gather((log_tw, grad, pred, pstate), idx)
            a_s, b_s, c2 = ddim_transition(path, t, s)
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
