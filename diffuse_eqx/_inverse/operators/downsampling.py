import equinox as eqx
import jax.numpy as jnp
import lineax as lx

from ..._check import check_int
from ..._custom_types import Hyperparameter
from .base import AbstractLinearOperator, RealMeasurement, Signal, normal_cg


class Downsampling(AbstractLinearOperator):
    r"""Super-resolution: average pooling by `factor` $k$ over the last two axes, $(\dots, H, W) \to
    (\dots, H/k, W/k)$.

    The adjoint repeats each pixel $k\times k$ times and divides by $k^2$. Since $A A^\top = I / k^2$,
    the pseudo-inverse $A^+ = k^2 A^\top$ is nearest-neighbour upsampling, and $A^\top r$ is an
    eigenvector of the normal operator (conjugate gradients solve it in one step).

    **Arguments:**

    - `factor`: the integer $k \ge 1$; it must divide $H$ and $W$.
    - `sigma_y`: noise standard deviation (default 0).
    """

    factor: int = eqx.field(static=True)
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        check_int("Downsampling factor", self.factor)

    @property
    def signal_shape(self) -> None:
        return None

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        k = self.factor
        if len(x_shape) < 2 or x_shape[-2] % k or x_shape[-1] % k:
            raise ValueError(
                f"Downsampling factor {k} must divide the last two axes (H, W) of the signal; "
                f"got shape {x_shape}."
            )
        return (*x_shape[:-2], x_shape[-2] // k, x_shape[-1] // k)

    def apply(self, x: Signal) -> RealMeasurement:
        *lead, h, w = self.y_shape(x.shape)
        return x.reshape(*lead, h, self.factor, w, self.factor).mean(axis=(-3, -1))

    def adjoint(self, y: RealMeasurement) -> Signal:
        return self.pinv(y) / self.factor**2

    def pinv(self, y: RealMeasurement) -> Signal:
        """$A^+ y$: nearest-neighbour upsampling."""
        if y.ndim < 2:
            raise ValueError(f"Downsampling measurements need two image axes; got shape {y.shape}.")
        return jnp.repeat(jnp.repeat(y, self.factor, axis=-2), self.factor, axis=-1)

    def normal(self, c: Hyperparameter, x: Signal) -> tuple[lx.FunctionLinearOperator, lx.CG]:
        r"""$cA^\top A + \sigma_y^2 I$, matrix-free, solved by conjugate gradients."""
        return normal_cg(self, c, x)
