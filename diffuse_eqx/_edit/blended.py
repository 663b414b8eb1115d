import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._check import concrete
from .._custom_types import Grid, Key, Particle, Time
from .._integrator import AbstractIntegrator, IntegratorState, noise
from .._predictor import AbstractPredictor


class Blended(AbstractIntegrator):
    r"""Blended diffusion (Avrahami et al. 2022, 2023): inpainting and outpainting by blending. After
    every step of the wrapped `integrator` from $t$ to $s$, the region to keep is replaced by the
    original noised to $s$ with fresh noise:

    $$x_s \leftarrow m \odot x_s + (1 - m) \odot (\alpha_s\, x^{\rm orig} + \sigma_s z), \qquad
      z \sim \mathcal N(0, I),$$

    with $m = 1$ where new content is generated. At the grid's end ($\sigma = 0$, $\alpha = 1$) the
    kept region is the original exactly (for a 0/1 mask). Outpainting is the same with the
    original placed on a larger canvas and $m = 1$ outside it. A heuristic: the generated region
    follows the prior guided only through the blended context, not the exact conditional (compare
    [`RePaint`][diffuse_eqx.RePaint], [`MCGdiff`][diffuse_eqx.MCGdiff]).

    ??? cite "Reference"
        ```bibtex
        @article{avrahami2023blendedlatent,
          title={Blended Latent Diffusion},
          author={Avrahami, Omri and Fried, Ohad and Lischinski, Dani},
          journal={ACM Transactions on Graphics}, volume={42}, number={4}, year={2023}}
        ```

    **Arguments:**

    - `integrator`: the wrapped [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator].
    - `original`: the image to keep, shaped like one particle.
    - `mask`: shaped like (or broadcastable to) a particle, values in $[0, 1]$: 1 where content is
      generated, 0 where the original is kept.
    """

    integrator: AbstractIntegrator
    original: Float[Array, "*shape"] = eqx.field(converter=jnp.asarray)
    mask: Float[Array, "*shape"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        if not isinstance(self.integrator, AbstractIntegrator):
            raise TypeError(f"Blended integrator must be an AbstractIntegrator; got {self.integrator!r}.")
        try:
            shape = jnp.broadcast_shapes(self.mask.shape, self.original.shape)
        except ValueError:
            shape = None
        if shape != self.original.shape:
            raise ValueError(
                f"Blended mask of shape {self.mask.shape} does not broadcast to the original's shape "
                f"{self.original.shape}."
            )
        if concrete(self.mask, self.original):
            if not bool(jnp.all((self.mask >= 0) & (self.mask <= 1))):
                raise ValueError("Blended mask values must lie in [0, 1] (1: generate, 0: keep).")
            if not bool(jnp.all(jnp.isfinite(self.original))):
                raise ValueError("Blended original has NaN or infinite values.")

    @property
    def order(self) -> int:
        """0: the replacement is not an ODE step."""
        return 0

    @property
    def nfe_per_step(self) -> int:
        return self.integrator.nfe_per_step

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        if x.shape != self.original.shape:
            raise ValueError(
                f"Blended original has shape {self.original.shape}; the particles have {x.shape}."
            )
        return self.integrator.init(predictor, x, key, ts)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        state = self.integrator.step(predictor, state, t, t_next)
        z, state = noise(state)
        path, x = predictor.path, state.position
        known = path.alpha(t_next) * self.original + path.sigma(t_next) * z
        m = self.mask.astype(x.dtype)
        return state.replace(position=(m * x + (1 - m) * known).astype(x.dtype))
