import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp

from .._check import check_int
from .._custom_types import Grid, Key, Particle, Time
from .._integrator import AbstractIntegrator, IntegratorState, Shared, noise
from .._predictor import AbstractPredictor
from .base import check_y, check_y_now
from .operators import AbstractLinearOperator, Measurement


class RePaint(AbstractIntegrator):
    r"""RePaint (Lugmayr et al. 2022): after every step of the wrapped `integrator` from $t$ to $s$, the
    measured part of the particle is replaced by the measurement noised to time $s$,

    $$x_s \leftarrow x_s + A^+\big(\alpha_s\, y + \sigma_s A z - A x_s\big), \qquad z \sim \mathcal N(0, I),$$

    the paper's $x_s = m \odot (\alpha_s y + \sigma_s z) + (1 - m)\odot x_s$ for
    [`Inpainting`][diffuse_eqx.Inpainting]; the measurement noise is ignored. Resampling (the paper's
    jump schedule): after every $j$-th step the particle is sent back $j$ grid steps by the path's
    forward kernel and brought down again, $r - 1$ times. NFE: a grid of $N$ steps costs
    $N\,n_{\rm inner}$ plus $\lfloor N/j\rfloor\,(r - 1)\,j\,n_{\rm inner}$ for the jumps, with
    $n_{\rm inner}$ the wrapped integrator's `nfe_per_step` (about $r$ times plain sampling), counted
    exactly. The paper uses [`DDIM`][diffuse_eqx.DDIM] with `eta=1` (DDPM), $j = r = 10$. Details:
    [Concepts → RePaint's replacement and jumps][repaint-jumps].

    ??? cite "Reference"
        ```bibtex
        @inproceedings{lugmayr2022repaint,
          title={RePaint: Inpainting using Denoising Diffusion Probabilistic Models},
          author={Lugmayr, Andreas and Danelljan, Martin and Romero, Andres and Yu, Fisher
                  and Timofte, Radu and Van Gool, Luc},
          booktitle={CVPR}, year={2022}}
        ```

    **Arguments:**

    - `integrator`: the [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator] of the prior (e.g.
      `dx.DDIM(eta=1.0)`).
    - `operator`: an [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator] (its `pinv`; made
      for [`Inpainting`][diffuse_eqx.Inpainting]).
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `jump_length`: $j \ge 1$, grid steps per jump (default 10).
    - `n_resample`: $r \ge 1$, passes over each segment (default 10).
    """

    integrator: AbstractIntegrator
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    jump_length: int = eqx.field(default=10, static=True)
    n_resample: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        check_y_now("RePaint", self.operator, self.y)
        check_int("RePaint jump_length", self.jump_length)
        check_int("RePaint n_resample", self.n_resample)

    @property
    def order(self) -> int:
        """0: the replacement is not an ODE step."""
        return 0

    @property
    def nfe_per_step(self) -> int:
        """The wrapped integrator's evaluations per step (steps that jump cost more, see above)."""
        return self.integrator.nfe_per_step

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        check_y("RePaint", self.operator, self.y, x.shape)
        state = self.integrator.init(predictor, x, key, ts)
        # the grid and the step index are the same for every particle: shared, so that the
        # resampling below stays a branch taken (or not) by the whole batch
        return state.replace(memory=(state.memory, Shared((ts, jnp.asarray(0, jnp.int32)))))

    def _replace_step(self, predictor, state, t, t_next):
        state = self.integrator.step(predictor, state, t, t_next)
        path, x, op = predictor.path, state.position, self.operator
        z, state = noise(state)
        known = path.alpha(t_next) * self.y + path.sigma(t_next) * op.apply(z)
        return state.replace(position=(x + op.pinv(known - op.apply(x))).astype(x.dtype))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        memory, shared = state.memory
        ts, i = shared.value
        state = self._replace_step(predictor, state.replace(memory=memory), t, t_next)
        k, j, path = i + 1, self.jump_length, predictor.path
        top = jnp.maximum(k - j, 0)  # the branch runs only at k = j, 2j, ... (clamped if select)

        def one_pass(_, state):
            t_low, t_high = ts[k], ts[top]
            z, state = noise(state)
            ratio = path.alpha(t_high) / path.alpha(t_low)
            var = path.sigma(t_high) ** 2 - (ratio * path.sigma(t_low)) ** 2
            x_up = (ratio * state.position + jnp.sqrt(jnp.maximum(var, 0.0)) * z).astype(z.dtype)
            memory = self.integrator.init(predictor, x_up, state.key, ts).memory
            state = state.replace(position=x_up, memory=memory)
            return lax.fori_loop(
                0, j, lambda m, st: self._replace_step(predictor, st, ts[top + m], ts[top + m + 1]), state
            )

        def resample(state):
            return lax.fori_loop(0, self.n_resample - 1, one_pass, state)

        if self.n_resample > 1:
            state = lax.cond(k % j == 0, resample, lambda st: st, state)
        return state.replace(memory=(state.memory, Shared((ts, k))))
