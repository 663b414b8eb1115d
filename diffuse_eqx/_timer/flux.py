import equinox as eqx
import jax.numpy as jnp

from .._check import concrete
from .._custom_types import Grid
from .base import AbstractTimer, check_grid, check_n_steps


class FluxTimer(AbstractTimer):
    r"""The FLUX.1 schedule (Black Forest Labs' `get_schedule`): a shifted uniform grid on $[0, 1]$.

    $$t_i = \frac{e^{\mu}}{e^{\mu} + (1/u_i - 1)}, \qquad u_i = 1 - i/N,$$

    finest near $t = 1$ for $\mu > 0$. **Static** shift $s$: $e^\mu = s$ (SD3 and diffusers' `shift`).
    **Dynamic** shift: $\mu$ linear in the number of image tokens ($\mu = 0.63$ at 512x512, $1.15$ at
    1024x1024). Give exactly one of `shift` and `image_seq_len`. Details:
    [Concepts → The FLUX.1 schedule][flux-schedule].

    **Arguments:**

    - `n_steps`: the number of steps $N$.
    - `shift`: a static shift $s = e^\mu > 0$ (`shift=1` is the uniform grid).
    - `image_seq_len`: the number of packed image tokens (`(height // 16) * (width // 16)` for FLUX).
    - `base_seq_len`, `max_seq_len`, `base_shift`, `max_shift`: the line through
      (`base_seq_len`, `base_shift`) and (`max_seq_len`, `max_shift`) that gives $\mu$
      (defaults: BFL's 256, 4096, 0.5, 1.15).

    ??? cite "Reference"
        ```bibtex
        @misc{flux2024,
          author={Black Forest Labs}, title={FLUX},
          year={2024}, howpublished={\url{https://github.com/black-forest-labs/flux}}}
        ```
    """

    n_steps: int = eqx.field(static=True)
    shift: float | None = None
    image_seq_len: int | None = None
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def __check_init__(self):
        check_n_steps("FluxTimer", self.n_steps)
        if (self.shift is None) == (self.image_seq_len is None):
            raise ValueError(
                "FluxTimer needs exactly one of `shift` (static) and `image_seq_len` (dynamic); got "
                f"shift={self.shift}, image_seq_len={self.image_seq_len}."
            )
        if self.shift is not None and concrete(self.shift) and not self.shift > 0:
            raise ValueError(f"FluxTimer shift must be > 0; got shift={self.shift}.")
        if self.image_seq_len is not None and concrete(self.image_seq_len):
            if not self.image_seq_len > 0:
                raise ValueError(
                    f"FluxTimer image_seq_len must be > 0; got image_seq_len={self.image_seq_len}."
                )
        if concrete(self.base_seq_len, self.max_seq_len) and self.base_seq_len == self.max_seq_len:
            raise ValueError("FluxTimer needs base_seq_len != max_seq_len to define the mu line.")
        check_grid("FluxTimer", self.times())

    @property
    def mu(self):
        r"""The shift exponent $\mu$ ($e^\mu$ is the static shift)."""
        if self.shift is not None:
            return jnp.log(jnp.asarray(self.shift, dtype=float))
        m = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        b = self.base_shift - m * self.base_seq_len
        return m * self.image_seq_len + b

    def times(self) -> Grid:
        u = jnp.linspace(1.0, 0.0, self.n_steps + 1)
        e = jnp.exp(jnp.asarray(self.mu, dtype=u.dtype))
        safe_u = jnp.where(u > 0, u, 1.0)
        return jnp.where(u > 0, e / (e + (1.0 / safe_u - 1.0)), 0.0)  # BFL's time_shift
