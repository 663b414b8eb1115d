import equinox as eqx
import jax.lax as lax

from .._custom_types import Time
from .._predictor import AbstractPredictor
from .base import AbstractSingleStep, IntegratorState, evaluate


class Heun(AbstractSingleStep):
    r"""Heun's method (explicit trapezoidal rule, Karras et al. 2022, Alg. 1):

    $$\tilde x = x_t + h\, v(x_t, t), \qquad x_{s} = x_t + \tfrac{h}{2}\big(v(x_t, t) + v(\tilde x, s)\big),
      \qquad h = s - t.$$

    Second order, two evaluations per step. By default the final step to $t = 0$ is an Euler step
    (one evaluation), as in EDM, so the network is never evaluated at $t = 0$. Where the velocity
    is finite at $t = 0$ (`Flow` and `EDM` with a velocity or $x_0$ network), `euler_last_step=False`
    keeps the last step second order at the price of one more evaluation; on `VP`
    ($\dot\sigma(0) = \infty$) it is not finite.

    **Arguments:**

    - `euler_last_step`: make the step to $t = 0$ an Euler step (default `True`).
    """

    euler_last_step: bool = eqx.field(default=True, static=True)

    @property
    def order(self) -> int:
        return 2

    @property
    def nfe_per_step(self) -> int:
        return 2

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, h, path = state.position, t_next - t, predictor.path
        pred, state = evaluate(predictor, state, x, t)
        v = pred.velocity(path, t)
        x_euler = (x + h * v).astype(x.dtype)

        def correct(state):
            pred_next, state = evaluate(predictor, state, x_euler, t_next)
            v_next = pred_next.velocity(path, t_next)
            return state.replace(position=(x + (h / 2) * (v + v_next)).astype(x.dtype))

        if not self.euler_last_step:
            return correct(state)
        return lax.cond(t_next == 0, lambda state: state.replace(position=x_euler), correct, state)
