from .._custom_types import Time
from .._predictor import AbstractPredictor
from .base import AbstractSingleStep, IntegratorState, evaluate


class Euler(AbstractSingleStep):
    r"""Euler's method on the probability-flow ODE $dx/dt = v(x, t)$:

    $$x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\, v(x_{t_i}, t_i).$$

    First order, one network evaluation per step.
    """

    @property
    def order(self) -> int:
        return 1

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x = state.position
        pred, state = evaluate(predictor, state, x, t)
        x_next = x + (t_next - t) * pred.velocity(predictor.path, t)
        return state.replace(position=x_next.astype(x.dtype))
