import abc
import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._custom_types import NFE, Grid, Key, Particle, Scalar, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction


def _int32(n) -> NFE:
    return jnp.asarray(n, jnp.int32)


class IntegratorState(eqx.Module):
    r"""What an integrator carries from one step to the next through `lax.scan`.

    - `position`: the current particle $x_t$.
    - `key`: this particle's PRNG key, split by stochastic integrators at each step (never reused).
    - `memory`: integrator-specific values (multistep history), or `None`; values the same for
      every particle go in a [`Shared`][diffuse_eqx.Shared].
    - `guidance`: the predictor's state (e.g. APG momentum), threaded by [`evaluate`][diffuse_eqx.evaluate].
    - `nfe`: network evaluations made so far, counted by [`evaluate`][diffuse_eqx.evaluate].
    - `x0`: the latest data estimate $\hat x_0$, recorded by [`evaluate`][diffuse_eqx.evaluate]
      (for previews and callbacks), or `None` before the integration starts.
    """

    position: Particle
    key: Key
    memory: PyTree = None
    guidance: PyTree = None
    nfe: NFE = eqx.field(default=0, converter=_int32)
    x0: Particle | None = None

    def replace(self, **changes) -> "IntegratorState":
        """A copy with some fields changed (`state.replace(position=x_next)`)."""
        return dataclasses.replace(self, **changes)


class Shared(eqx.Module):
    """Integrator memory that is the same for every particle (grid data, a step counter), as
    opposed to the per-particle rest of an [`IntegratorState`][diffuse_eqx.IntegratorState].
    [`Denoiser.generate`][diffuse_eqx.Denoiser.generate] keeps one unbatched copy of it, so that a
    `lax.cond` on it stays a branch for the whole batch instead of becoming a `select` that
    computes both sides for every particle. `init` and `step` must compute it from shared values
    only (the grid, the times, other `Shared` values): one that depends on a particle is an error
    of `jax.vmap` ("mapped output but out_axes is None").

    - `value`: any pytree.
    """

    value: PyTree


def evaluate(
    predictor: AbstractPredictor, state: IntegratorState, x: Particle, t: Time
) -> tuple[Prediction, IntegratorState]:
    """Evaluates `predictor` at `(x, t)`: the [`Prediction`][diffuse_eqx.Prediction], and `state`
    with the predictor's state updated and the evaluations added to `state.nfe`. Integrators call
    the predictor only through this, so NFE are counted where they are spent."""
    pred, guidance, n = predictor.evaluate(x, jnp.asarray(t), state.guidance)
    return pred, state.replace(guidance=guidance, nfe=state.nfe + n, x0=pred.x0)


def noise(state: IntegratorState) -> tuple[Particle, IntegratorState]:
    r"""A standard normal draw $z$ shaped like the particle, and `state` with its key split (the key
    of $z$ is never used again)."""
    key, sub = jr.split(state.key)
    x = state.position
    return jr.normal(sub, x.shape, x.dtype), state.replace(key=key)


class AbstractIntegrator(eqx.Module):
    """Moves one particle from time `t` to `t_next < t` on the timer's grid.

    A concrete integrator gives `order` (its order of accuracy as an ODE solver; 0 for none) and
    `nfe_per_step` (predictor evaluations of a regular step), and implements `init` and `step`.
    Every evaluation goes through [`evaluate`][diffuse_eqx.evaluate], which counts the network
    evaluations really made in `state.nfe` (endpoint steps may use fewer; a guided predictor costs
    more per evaluation). Most integrators derive from one of two bases that write `init` for them:
    [`AbstractSingleStep`][diffuse_eqx.AbstractSingleStep] (no memory) and
    [`AbstractMultistep`][diffuse_eqx.AbstractMultistep] (a history of past evaluations).
    """

    @property
    @abc.abstractmethod
    def order(self) -> int:
        r"""Order of accuracy as an ODE solver (global error $O(h^{\rm order})$; 0 for none)."""

    @property
    @abc.abstractmethod
    def nfe_per_step(self) -> int:
        """Network evaluations of a regular step (for a predictor that costs 1)."""

    @abc.abstractmethod
    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """The state before the first step, for initial particle `x` on grid `ts`."""

    @abc.abstractmethod
    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        """One step from `t` to `t_next`."""


class AbstractSingleStep(AbstractIntegrator):
    """An integrator that carries nothing from one step to the next but the particle and its key:
    a concrete one declares `order`, `nfe_per_step` and `step`."""

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """The particle and its key; no memory."""
        return IntegratorState(x, key)


class History(eqx.Module):
    """The last `size` values a multistep integrator recorded (newest first), with their times.

    - `values`: shape `(size, *particle_shape)`; entries past `count` are zeros.
    - `times`: shape `(size,)`.
    - `count`: how many entries are filled (at most `size`).
    """

    values: Float[Array, " size *shape"]
    times: Float[Array, " size"]
    count: Int[Array, ""]

    @classmethod
    def empty(cls, x: Particle, ts: Grid, size: int) -> "History":
        """No values yet, for particles shaped like `x` on grid `ts`."""
        return cls(jnp.zeros((size, *x.shape), x.dtype), jnp.zeros((size,), ts.dtype), _int32(0))

    def push(self, value: Particle, t: Time) -> "History":
        """The history with `value` at time `t` as its newest entry (the oldest dropped)."""
        values = jnp.concatenate([value[None].astype(self.values.dtype), self.values[:-1]])
        times = jnp.concatenate([jnp.asarray(t, self.times.dtype)[None], self.times[:-1]])
        return History(values, times, jnp.minimum(self.count + 1, self.times.shape[0]))

    def has(self, i: int) -> Bool[Array, ""]:
        """Whether entry `i` (0: the newest) is filled."""
        return self.count > i


class AbstractMultistep(AbstractIntegrator):
    """An integrator that reuses the values of previous steps: its memory is a
    [`History`][diffuse_eqx.History] of the last `history_size` values it pushed (what a value is,
    e.g. a data estimate, is the concrete integrator's choice). A concrete one declares
    `history_size`, `order`, `nfe_per_step` and `step`."""

    history_size: eqx.AbstractClassVar[int]
    """How many past values the integrator keeps."""

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """The particle, its key and an empty history."""
        return IntegratorState(x, key, History.empty(x, ts, self.history_size))


class StepCoefficients(NamedTuple):
    r"""The path at both ends of a step from $t$ to $s$: $\alpha_t, \sigma_t, \alpha_s, \sigma_s$,
    $\lambda_t, \lambda_s$ and $h = \lambda_s - \lambda_t$ (infinite from $\alpha_t = 0$ or to
    $\sigma_s = 0$)."""

    a_t: Scalar
    s_t: Scalar
    a_s: Scalar
    s_s: Scalar
    lam_t: Scalar
    lam_s: Scalar
    h: Scalar


def step_coefficients(path: AbstractPath, t: Time, t_next: Time) -> StepCoefficients:
    """The [`StepCoefficients`][diffuse_eqx.StepCoefficients] of `path` from `t` to `t_next`."""
    lam_t, lam_s = path.lambda_(t), path.lambda_(t_next)
    return StepCoefficients(
        path.alpha(t), path.sigma(t), path.alpha(t_next), path.sigma(t_next), lam_t, lam_s, lam_s - lam_t
    )


def data_step(path: AbstractPath, x: Particle, t: Time, t_next: Time, x0: Particle) -> Particle:
    r"""The exponential-integrator step for a data estimate held fixed over $[t_{\rm next}, t]$:

    $$x_{s} = \alpha_s \hat x_0 + \frac{\sigma_s}{\sigma_t}\,(x_t - \alpha_t \hat x_0)
      = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s\,(e^{-h} - 1)\,\hat x_0,\quad h = \lambda_s - \lambda_t,$$

    the DDIM update and the base of DPM-Solver++. Exact at both ends: $x_s = \hat x_0$ when
    $\sigma_s = 0$, and $\alpha_t = 0$ needs no $\lambda$."""
    a_t, s_t = path.alpha(t), path.sigma(t)
    a_s, s_s = path.alpha(t_next), path.sigma(t_next)
    return (a_s * x0 + (s_s / s_t) * (x - a_t * x0)).astype(x.dtype)


def evaluate_and_data_step(
    predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
) -> IntegratorState:
    """One evaluation at `(state.position, t)`, then [`data_step`][diffuse_eqx.data_step] to
    `t_next` with its data estimate (the endpoint step of integrators that cannot evaluate the
    velocity at $\\sigma = 0$)."""
    x = state.position
    pred, state = evaluate(predictor, state, x, t)
    return state.replace(position=data_step(predictor.path, x, t, t_next, pred.x0))
