from typing import ClassVar

from .._custom_types import Grid, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate


class Euler(AbstractIntegrator):
    r"""Euler's method on the probability-flow ODE $dx/dt = v(x, t)$:

    $$x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\, v(x_{t_i}, t_i).$$

    First order, one network evaluation per step.
    """

    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x = state.position
        pred, state = evaluate(predictor, state, x, t)
        x_next = x + (t_next - t) * pred.velocity(predictor.path, t)
        return state.replace(position=x_next.astype(x.dtype))
