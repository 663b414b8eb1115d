import jax.numpy as jnp

from .._check import check_nonnegative, check_traced, finite_nonnegative
from .._custom_types import Grid, Hyperparameter, Key, Particle, Time
from .._path import Flow
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate, noise


class EulerAncestralRF(AbstractIntegrator):
    r"""Euler ancestral sampling for rectified flows (k-diffusion / ComfyUI
    `sample_euler_ancestral_RF`), on the [`Flow`][diffuse_eqx.Flow] path only: the split keeps
    $\alpha + \sigma = 1$. An Euler step of the flow ODE to
    $t_{\rm down} = s\,\big(1 + (s/t - 1)\,\eta\big)$ (clipped at 0), then the forward kernel from
    $t_{\rm down}$ up to $s$,

    $$x_{\rm down} = \frac{t_{\rm down}}{t} x_t + \Big(1 - \frac{t_{\rm down}}{t}\Big)\hat x_0, \qquad
      x_s = \frac{1 - s}{1 - t_{\rm down}}\, x_{\rm down}
      + \sqrt{s^2 - \Big(\frac{(1 - s)\, t_{\rm down}}{1 - t_{\rm down}}\Big)^2}\; z .$$

    With $\hat x_0$ replaced by the true $x_0$, $x_s$ has the law of $(1 - s) x_0 + s\varepsilon$.
    $\eta = 0$ is [`Euler`][diffuse_eqx.Euler]; the final step to $s = 0$ returns $\hat x_0$. One
    evaluation per step; first order (weakly, for $\eta > 0$). The split in the scaled variable
    $x/\alpha$, for any path, is [`EulerAncestral`][diffuse_eqx.EulerAncestral]
    ([Concepts → Ancestral sampling][ancestral-sampling]).

    ??? cite "Reference"
        ```bibtex
        @misc{crowson2022kdiffusion,
          author={Crowson, Katherine}, title={k-diffusion},
          year={2022}, howpublished={\url{https://github.com/crowsonkb/k-diffusion}}}
        ```

    **Arguments:**

    - `eta`: the ancestral noise $\eta \ge 0$ (default 1; 0 is deterministic; $t_{\rm down}$ is
      clipped at 0 for large values).
    """

    eta: Hyperparameter = 1.0

    def __check_init__(self):
        check_nonnegative("EulerAncestralRF eta", self.eta)

    @property
    def order(self) -> int:
        return 1

    @property
    def nfe_per_step(self) -> int:
        return 1

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        if not isinstance(predictor.path, Flow):
            raise ValueError(
                f"EulerAncestralRF is the rectified-flow split and needs the Flow path; got "
                f"{type(predictor.path).__name__}. Use EulerAncestral for other paths."
            )
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x = state.position
        pred, state = evaluate(predictor, state, x, t)
        z, state = noise(state)
        z = check_traced(z, "EulerAncestralRF eta", self.eta, finite_nonnegative, ">= 0 and finite")
        t, s = jnp.asarray(t), jnp.asarray(t_next)
        t_down = jnp.maximum(s * (1 + (s / t - 1) * self.eta), 0.0)
        x_down = (t_down / t) * x + (1 - t_down / t) * pred.x0
        alpha_ratio = (1 - s) / (1 - t_down)
        x_next = alpha_ratio * x_down + jnp.sqrt(jnp.maximum(s**2 - (alpha_ratio * t_down) ** 2, 0.0)) * z
        return state.replace(position=x_next.astype(x.dtype))
