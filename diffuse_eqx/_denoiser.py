from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from ._check import as_numpy, concrete
from ._custom_types import Grid, Key, Particle
from ._integrator import AbstractIntegrator
from ._predictor import AbstractPredictor
from ._timer import AbstractTimer


class DenoiserOutput(eqx.Module):
    """What [`Denoiser.generate`][diffuse_eqx.Denoiser.generate] returns.

    - `samples`: the particles at the end of the grid, shape `(n_particles, *x0_shape)`.
    - `nfe`: network evaluations per particle, counted step by step as the integrator made them.
    - `history`: `None`, or the particles at every grid time, shape
      `(n_steps + 1, n_particles, *x0_shape)`; `history[0]` is the initial noise and
      `history[-1]` the samples.
    """

    samples: Float[Array, " n_particles *shape"]
    nfe: Int[Array, ""]
    history: Float[Array, " n_steps_plus_one n_particles *shape"] | None = None


def integrate(
    integrator: AbstractIntegrator,
    predictor: AbstractPredictor,
    ts: Grid,
    x: Particle,
    key: Key,
    keep_history: bool = False,
) -> tuple[Particle, Int[Array, ""], Float[Array, " n_steps_plus_one *shape"] | None]:
    """Integrates one particle `x` over the grid `ts` with `lax.scan` (compile time does not grow
    with the number of steps).

    **Returns:** the final particle, the network evaluations made, and the particle at every grid
    time if `keep_history` (else `None`).
    """
    state = integrator.init(predictor, x, key, ts)
    state = state.replace(guidance=predictor.init(x), nfe=0, x0=jnp.zeros_like(x))

    def body(state, t_pair):
        state = integrator.step(predictor, state, t_pair[0], t_pair[1])
        return state, state.position if keep_history else None

    state, positions = lax.scan(body, state, (ts[:-1], ts[1:]))
    history = jnp.concatenate([x[None], positions]) if keep_history else None
    return state.position, state.nfe, history


def particle_keys(key: Key, n_particles: int) -> Shaped[Array, " n_particles *key"]:
    """One key per particle, `fold_in(key, i)`: particle i gets the same key whatever
    `n_particles` is."""
    return jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(n_particles))


class Denoiser(eqx.Module):
    r"""Draws samples: initial noise at $t_0 = t_{\max}$, then the integrator over the timer's grid.

    Each particle gets its own key, `fold_in(key, i)`, split once into the key of its initial
    noise $x_{t_0} = \sigma(t_0)\, z$ and the key its integrator may use; particle $i$ is the same
    whether drawn alone or among 10 000. The grid is a `lax.scan` and particles are `vmap`ped.
    `generate` is jit-compiled once per configuration.

    **Arguments:**

    - `predictor`: the [`Predictor`][diffuse_eqx.Predictor] (network + path + parameterization), or
      any [`AbstractPredictor`][diffuse_eqx.AbstractPredictor] (guidance, posterior samplers).
    - `integrator`: any [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator].
    - `timer`: any [`AbstractTimer`][diffuse_eqx.AbstractTimer]; it alone holds `n_steps`.
    - `x0_shape`: the shape of one sample.
    - `dtype`: the dtype of the particles (default: JAX's default float).
    """

    predictor: AbstractPredictor
    integrator: AbstractIntegrator
    timer: AbstractTimer
    x0_shape: tuple[int, ...] = eqx.field(static=True, converter=tuple)
    dtype: Any = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.predictor, AbstractPredictor):
            raise TypeError(f"Denoiser predictor must be a Predictor; got {type(self.predictor)}.")
        if not isinstance(self.integrator, AbstractIntegrator):
            raise TypeError(
                f"Denoiser integrator must be an AbstractIntegrator; got {type(self.integrator)}."
            )
        if not isinstance(self.timer, AbstractTimer):
            raise TypeError(f"Denoiser timer must be an AbstractTimer; got {type(self.timer)}.")
        if not all(isinstance(d, int | np.integer) and d > 0 for d in self.x0_shape):
            raise ValueError(f"x0_shape must be a tuple of positive ints; got {self.x0_shape}.")
        ts = self.timer.times()
        if not concrete(ts):
            return
        path, t0 = self.predictor.path, as_numpy(ts)[0]
        if concrete(path.t_max) and t0 > float(path.t_max) * (1 + 1e-6):
            raise ValueError(
                f"The timer starts at t={t0}, beyond the path's t_max={path.t_max}: the grid must "
                f"lie in [0, t_max] of {type(path).__name__}."
            )
        prediction = getattr(self.predictor, "prediction", None)
        if prediction in ("noise", "score") and float(path.alpha(t0)) == 0:
            raise ValueError(
                f"The timer starts at t={t0}, where alpha(t) = 0: a {prediction!r} "
                "network carries no information about x0 there. Start the grid below t_max, or "
                "use a velocity or x0 network."
            )

    def generate(self, key: Key, n_particles: int, keep_history: bool = False) -> DenoiserOutput:
        """Draws `n_particles` samples.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n_particles`: how many samples.
        - `keep_history`: also return the particles at every grid time.

        **Returns:** a [`DenoiserOutput`][diffuse_eqx.DenoiserOutput].
        """
        if isinstance(n_particles, bool) or not isinstance(n_particles, int | np.integer):
            raise TypeError(f"n_particles must be an int; got {n_particles!r}.")
        if n_particles < 1:
            raise ValueError(f"n_particles must be >= 1; got {n_particles}.")
        return _generate(self, key, int(n_particles), bool(keep_history))


@eqx.filter_jit
def _generate(denoiser: Denoiser, key: Key, n_particles: int, keep_history: bool) -> DenoiserOutput:
    ts = denoiser.timer.times()
    dtype = denoiser.dtype or jnp.result_type(float)
    std = denoiser.predictor.path.prior_std(ts[0])

    def one(k):
        k_init, k_run = jr.split(k)
        x = (std * jr.normal(k_init, denoiser.x0_shape, dtype)).astype(dtype)
        return integrate(denoiser.integrator, denoiser.predictor, ts, x, k_run, keep_history)

    samples, nfe, history = jax.vmap(one)(particle_keys(key, n_particles))
    if keep_history:
        history = jnp.swapaxes(history, 0, 1)
    return DenoiserOutput(samples=samples, nfe=jnp.max(nfe), history=history)
