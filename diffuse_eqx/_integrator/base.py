import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from .._custom_types import NFE, Grid, Key, Particle, Time
from .._path import AbstractPath
from .._predictor import Predictor


class IntegratorState(eqx.Module):
    """What an integrator carries from one step to the next through `lax.scan`.

    - `position`: the current particle $x_t$.
    - `key`: this particle's PRNG key, split by stochastic integrators at each step (never reused).
    - `memory`: integrator-specific values (multistep history), or `None`.
    """

    position: Particle
    key: Key
    memory: PyTree = None


class AbstractIntegrator(eqx.Module):
    """Moves one particle from time `t` to `t_next < t` on the timer's grid.

    Concrete integrators declare `order` (their order of accuracy as ODE solvers; 0 for none) and
    `nfe_per_step` (network evaluations of a regular step), and implement `init` and `step`.
    `step` returns the evaluations it really made, which the [`Denoiser`][diffuse_eqx.Denoiser]
    adds up (endpoint steps may use fewer).
    """

    order: eqx.AbstractClassVar[int]
    r"""Order of accuracy as an ODE solver (global error $O(h^{\rm order})$)."""
    nfe_per_step: eqx.AbstractClassVar[int]
    """Network evaluations of a regular step."""

    @abc.abstractmethod
    def init(self, predictor: Predictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """The state before the first step, for initial particle `x` on grid `ts`."""

    @abc.abstractmethod
    def step(
        self, predictor: Predictor, state: IntegratorState, t: Time, t_next: Time
    ) -> tuple[IntegratorState, NFE]:
        """One step from `t` to `t_next`; returns the new state and the network evaluations made."""


def data_step(path: AbstractPath, x: Particle, t: Time, t_next: Time, x0: Particle) -> Particle:
    r"""The exponential-integrator step for a data estimate held fixed over $[t_{\rm next}, t]$:

    $$x_{s} = \alpha_s \hat x_0 + \frac{\sigma_s}{\sigma_t}\,(x_t - \alpha_t \hat x_0)
      = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s\,(e^{-h} - 1)\,\hat x_0,\quad h = \lambda_s - \lambda_t,$$

    the DDIM update and the base of DPM-Solver++. Exact at both ends: $x_s = \hat x_0$ when
    $\sigma_s = 0$, and $\alpha_t = 0$ needs no $\lambda$."""
    a_t, s_t = path.alpha(t), path.sigma(t)
    a_s, s_s = path.alpha(t_next), path.sigma(t_next)
    return (a_s * x0 + (s_s / s_t) * (x - a_t * x0)).astype(x.dtype)


def nfe(n: int) -> NFE:
    return jnp.asarray(n, dtype=jnp.int32)
