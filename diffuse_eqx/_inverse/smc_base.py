"""Sequential Monte Carlo posterior samplers: what they share.

Particle methods move the whole ensemble together (resampling couples the particles), so they have their
own `generate(key, n_particles)`: a `lax.scan` over the timer's grid with the particles `vmap`ped inside
each step, built from the same pieces as a [`Denoiser`][diffuse_eqx.Denoiser] (a predictor, a timer and
its path).
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PyTree

from .._check import as_numpy, check_int, check_interval, concrete
from .._custom_types import Key, Time
from .._denoiser import particle_keys
from .._path import AbstractPath
from .._predictor import AbstractPredictor
from .._timer import AbstractTimer
from .base import check_y
from .operators import AbstractOperator
from .resampling import systematic_resample


class SMCOutput(eqx.Module):
    """What an SMC sampler's `generate` returns.

    - `samples`: equally weighted samples, shape `(n_particles, *x0_shape)`: the final particles
      resampled (systematically) by their weights.
    - `particles`: the final weighted particles, shape `(n_particles, *x0_shape)`.
    - `log_weights`: their normalised log weights, shape `(n_particles,)`.
    - `ess`: the effective sample size at each step's resampling decision (before resampling), one
      entry per step of the grid the sampler ran (MCGdiff inserts its times $\\tau_i$).
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


def ddim_transition(path: AbstractPath, t: Time, s: Time):
    r"""Coefficients of the DDIM ($\eta = 1$) transition $q(x_s \mid x_t, \hat x_0) = \mathcal N(\alpha_s
    \hat x_0 + \sigma_s e^{-h}\hat\varepsilon, c^2 I)$: returns $(\alpha_s, \sigma_s e^{-h}, c^2)$."""
    a_t, s_t, a_s, s_s = path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)
    ratio = (a_t * s_s) / (a_s * s_t)  # e^{-h}; 0 where alpha_t = 0 or sigma_s = 0
    return a_s, s_s * ratio, s_s**2 * (1 - ratio**2)


def infer_x0_shape(name: str, operator: AbstractOperator, x0_shape) -> tuple[int, ...]:
    """`x0_shape`, or the operator's `signal_shape` if it fixes one."""
    if x0_shape is not None:
        return tuple(int(d) for d in x0_shape)
    if operator.signal_shape is not None:
        return tuple(operator.signal_shape)
    raise ValueError(
        f"{name}: pass x0_shape (the shape of one signal); {type(operator).__name__} accepts signals of "
        "several shapes, so it cannot be inferred (only an operator with a fixed signal shape, such as "
        "Matrix, gives it)."
    )


def evaluate_all(predictor: AbstractPredictor, x, t, state):
    """The predictor on every particle: (Prediction, new states, nfe per particle)."""
    return jax.vmap(predictor.evaluate, in_axes=(0, None, 0))(x, t, state)


def gather(tree: PyTree, idx: Int[Array, " n"]) -> PyTree:
    return jax.tree.map(lambda leaf: leaf[idx], tree)


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
        check_y(name, self.operator, self.y, self.x0_shape)
        check_interval(f"{name} resample_threshold (an ESS fraction)", self.resample_threshold, 0.0, 1.0)
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
        return _generate(self, key, check_int("n_particles", n_particles))

    @abc.abstractmethod
    def _filter(self, key: Key, n: int) -> tuple[Array, Array, Array, Array, Array, Array]:
        """The weighted particle system of `n` particles over the grid: `(particles, log_weights,
        ess per step, n_resampled, nfe, n_vjp)`."""

    def _init_particles(self, key: Key, n: int, t0: Time) -> Float[Array, " n *shape"]:
        """`n` initial particles at `t0`, drawn from the path's `prior_std(t0)`, one key per particle."""
        std = self.predictor.path.prior_std(t0)
        dtype = jnp.result_type(float)
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
