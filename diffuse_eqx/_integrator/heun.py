from typing import ClassVar

import jax.lax as lax

from .._custom_types import NFE, Grid, Key, Particle, Time
from .._predictor import Predictor
from .base import AbstractIntegrator, IntegratorState, nfe


class Heun(AbstractIntegrator):
    r"""Heun's method (explicit trapezoidal rule, Karras et al. 2022, Alg. 1):

    $$\tilde x = x_t + h\, v(x_t, t), \qquad x_{s} = x_t + \tfrac{h}{2}\big(v(x_t, t) + v(\tilde x, s)\big),
      \qquad h = s - t.$$

    Second order, two evaluations per step; the final step to $t = 0$ is an Euler step (one
    evaluation), as in EDM, so the network is never evaluated at $t = 0$.
    """

    order: ClassVar[int] = 2
    nfe_per_step: ClassVar[int] = 2

    def init(self, predictor: Predictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: Predictor, state: IntegratorState, t: Time, t_next: Time
    ) -> tuple[IntegratorState, NFE]:
        x, h = state.position, t_next - t
        v = predictor.velocity(x, t)
        x_euler = (x + h * v).astype(x.dtype)

        def correct(_):
            return (x + (h / 2) * (v + predictor.velocity(x_euler, t_next))).astype(x.dtype), nfe(2)

        x_next, n = lax.cond(t_next == 0, lambda _: (x_euler, nfe(1)), correct, None)
        return IntegratorState(x_next, state.key), n
