import abc
import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from .._custom_types import NFE, Grid, Key, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction


def _int32(n) -> NFE:
    return jnp.asarray(n, jnp.int32)


class IntegratorState(eqx.Module):
    r"""What an integrator carries from one step to the next through `lax.scan`.

    - `position`: the current particle $x_t$.
    - `key`: this particle's PRNG key, split by stochastic integrators at each step (never reused).
    - `memory`: integrator-specific values (multistep history), or `None`.
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


def evaluate(
    predictor: AbstractPredictor, state: IntegratorState, x: Particle, t: Time
) -> tuple[Prediction, IntegratorState]:
    """Evaluates `predictor` at `(x, t)`: the [`Prediction`][diffuse_eqx.Prediction], and `state`
    with the predictor's state updated and the evaluations added to `state.nfe`. Integrators call
    the predictor only through this, so NFE are counted where they are spent."""
    pred, guidance, n = predictor.evaluate(x, jnp.asarray(t), state.guidance)
    return pred, state.replace(guidance=guidance, nfe=state.nfe + n, x0=pred.x0)


class AbstractIntegrator(eqx.Module):
    """Moves one particle from time `t` to `t_next < t` on the timer's grid.

    Concrete integrators declare `order` (their order of accuracy as ODE solvers; 0 for none) and
    `nfe_per_step` (predictor evaluations of a regular step), and implement `init` and `step`.
    Every evaluation goes through [`evaluate`][diffuse_eqx.evaluate], which counts the network
    evaluations really made in `state.nfe` (endpoint steps may use fewer; a guided predictor costs
    more per evaluation).
    """

    order: eqx.AbstractClassVar[int]
    r"""Order of accuracy as an ODE solver (global error $O(h^{\rm order})$)."""
    nfe_per_step: eqx.AbstractClassVar[int]
    """Network evaluations of a regular step."""

    @abc.abstractmethod
    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """The state before the first step, for initial particle `x` on grid `ts`."""

    @abc.abstractmethod
    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        """One step from `t` to `t_next`."""


def data_step(path: AbstractPath, x: Particle, t: Time, t_next: Time, x0: Particle) -> Particle:
    r"""The exponential-integrator step for a data estimate held fixed over $[t_{\rm next}, t]$:

    $$x_{s} = \alpha_s \hat x_0 + \frac{\sigma_s}{\sigma_t}\,(x_t - \alpha_t \hat x_0)
      = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s\,(e^{-h} - 1)\,\hat x_0,\quad h = \lambda_s - \lambda_t,$$

    the DDIM update and the base of DPM-Solver++. Exact at both ends: $x_s = \hat x_0$ when
    $\sigma_s = 0$, and $\alpha_t = 0$ needs no $\lambda$."""
    a_t, s_t = path.alpha(t), path.sigma(t)
    a_s, s_s = path.alpha(t_next), path.sigma(t_next)
    return (a_s * x0 + (s_s / s_t) * (x - a_t * x0)).astype(x.dtype)
