import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Bool

from ..._check import check_interval
from ..._custom_types import Hyperparameter, Key
from .base import AbstractLinearOperator, Mask, Signal, as_mask, binary, check_binary, check_fits


class Inpainting(AbstractLinearOperator):
    r"""Inpainting: $y = m \odot x$, observing $x$ where the mask $m$ is 1 (or `True`).

    $y$ has $x$'s shape, with zeros at unobserved entries (plus noise there from `measure`, which carries
    no information about $x$). The operator is a 0/1 diagonal, so $A^\top y = A^+ y = m \odot y$, and
    its normal operator $cA^\top A + \sigma_y^2 I = \mathrm{diag}(cm + \sigma_y^2)$ is solved exactly
    (`lx.Diagonal`, 0 where it vanishes).

    **Arguments:**

    - `mask`: boolean or 0/1, shaped like $x$ or broadcastable over its leading (channel) axes.
    - `sigma_y`: noise standard deviation (default 0).
    """

    mask: Mask = eqx.field(converter=as_mask)
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        check_binary("Inpainting", self.mask)

    @property
    def signal_shape(self) -> None:
        return None

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        check_fits("Inpainting", self.mask.shape, x_shape)
        return x_shape

    def apply(self, x: Signal) -> Signal:
        self.y_shape(x.shape)
        return jnp.where(binary("Inpainting", self.mask), x, 0)

    def adjoint(self, y: Signal) -> Signal:
        return self.apply(y)

    def pinv(self, y: Signal) -> Signal:
        r"""$A^+ y = m \odot y$."""
        return self.apply(y)

    def normal(self, c: Hyperparameter, x: Signal) -> tuple[lx.DiagonalLinearOperator, lx.Diagonal]:
        r"""$\mathrm{diag}(cm + \sigma_y^2)$, solved elementwise."""
        diagonal = jnp.broadcast_to(
            c * binary("Inpainting", self.mask) + jnp.asarray(self.sigma_y) ** 2, x.shape
        )
        return lx.DiagonalLinearOperator(diagonal.astype(x.dtype)), lx.Diagonal()


def box_mask(shape: tuple[int, ...], top: int, left: int, height: int, width: int) -> Bool[Array, "*shape"]:
    """An inpainting mask of `shape` that hides the box `[top:top+height, left:left+width]` of the last two
    axes (`False` inside the box, `True` = observed elsewhere)."""
    H, W = shape[-2:]
    if not (0 <= top and top + height <= H and 0 <= left and left + width <= W and height > 0 < width):
        raise ValueError(
            f"box_mask: the box (top={top}, left={left}, {height}x{width}) must lie inside {H}x{W}."
        )
    return jnp.ones(shape, bool).at[..., top : top + height, left : left + width].set(False)


def random_mask(key: Key, shape: tuple[int, ...], keep_fraction: float) -> Bool[Array, "*shape"]:
    """An inpainting mask of `shape` observing each entry independently with probability `keep_fraction`."""
    check_interval("random_mask: keep_fraction", keep_fraction, 0.0, 1.0)
    return jr.bernoulli(key, keep_fraction, shape)
