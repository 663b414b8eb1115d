from typing import ClassVar

from .._custom_types import NFE, Grid, Key, Particle, Time
from .._predictor import Predictor
from .base import AbstractIntegrator, IntegratorState, nfe


class Euler(AbstractIntegrator):
    r"""Euler's method on the probability-flow ODE $dx/dt = v(x, t)$:

    $$x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\, v(x_{t_i}, t_i).$$

    First order, one network evaluation per step.
    """

    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1

    def init(self, predictor: Predictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: Predictor, state: IntegratorState, t: Time, t_next: Time
    ) -> tuple[IntegratorState, NFE]:
        x = state.position
        x = x + (t_next - t) * predictor.velocity(x, t)
        return IntegratorState(x.astype(state.position.dtype), state.key), nfe(1)
