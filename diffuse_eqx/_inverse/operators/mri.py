import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Bool, Inexact

from ..._custom_types import Hyperparameter, Key
from .base import AbstractLinearOperator, Mask, Signal, as_mask, binary, check_binary, check_fits, normal_cg


class MRI(AbstractLinearOperator):
    r"""Accelerated MRI: a k-space mask after the orthonormal 2-D FFT of a real image,
    $y = m \odot \mathcal F x$ (complex, unshifted FFT layout: the DC term at index `[0, 0]`).

    For the real inner product $\mathrm{Re}\langle\cdot,\cdot\rangle$ the adjoint is
    $A^\top y = \mathrm{Re}\,\mathcal F^{-1}(m \odot y)$. Since $\mathcal F x$ of a real $x$ is Hermitian,
    a frequency $\kappa$ observed without its mirror $-\kappa$ is seen "twice as weakly":
    $A A^\top = \mathrm{diag}(w)$ on the range of $A$ with $w(\kappa) = m(\kappa)(1 + m(-\kappa))/2$, and
    $A^+ y = A^\top(y / w)$ (0 where $w = 0$). The normal equations are solved in the (real) signal
    space, where $A^\top A$ is real-linear and symmetric.

    **Arguments:**

    - `mask`: boolean or 0/1 k-space mask `(H, W)` (or shaped like $x$); see
      [`kspace_line_mask`][diffuse_eqx.kspace_line_mask].
    - `sigma_y`: noise standard deviation of the real and the imaginary parts (default 0).
    """

    mask: Mask = eqx.field(converter=as_mask)
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        check_binary("MRI", self.mask)
        if self.mask.ndim < 2:
            raise ValueError(f"MRI mask needs at least the two k-space axes (H, W); got {self.mask.shape}.")

    @property
    def signal_shape(self) -> None:
        return None

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        check_fits("MRI", self.mask.shape, x_shape)
        return x_shape

    def apply(self, x: Signal) -> Inexact[Array, "*x"]:
        self.y_shape(x.shape)
        return jnp.where(binary("MRI", self.mask), jnp.fft.fft2(x, norm="ortho"), 0)

    def adjoint(self, y: Inexact[Array, "*y"]) -> Signal:
        self.y_shape(y.shape)
        return jnp.fft.ifft2(jnp.where(binary("MRI", self.mask), y, 0), norm="ortho").real

    def pinv(self, y: Inexact[Array, "*y"]) -> Signal:
        r"""$A^+ y = A^\top(y / w)$, see above."""
        mirror = jnp.roll(jnp.flip(binary("MRI", self.mask), (-2, -1)), 1, axis=(-2, -1))  # m(-kappa)
        return self.adjoint(y * jnp.where(mirror, 1.0, 2.0))

    def normal(self, c: Hyperparameter, x: Signal) -> tuple[lx.FunctionLinearOperator, lx.CG]:
        r"""$cA^\top A + \sigma_y^2 I$ on real signals, matrix-free, solved by conjugate gradients."""
        return normal_cg(self, c, x)


def kspace_line_mask(
    key: Key, size: int | tuple[int, int], n_lines: int, center_lines: int
) -> Bool[Array, "H W"]:
    """An MRI mask observing `n_lines` full rows (phase-encode lines, axis -2) of an `(H, W)` k-space in the
    unshifted FFT layout: the `center_lines` lowest frequencies (around row 0) always, and the other
    `n_lines - center_lines` rows uniformly at random without replacement. `size` is `H = W` or `(H, W)`."""
    H, W = (size, size) if isinstance(size, int) else size
    if not 0 <= center_lines <= n_lines <= H:
        raise ValueError(
            f"kspace_line_mask needs 0 <= center_lines <= n_lines <= H; got center_lines={center_lines}, "
            f"n_lines={n_lines}, H={H}."
        )
    return _kspace_line_mask(key, H, W, n_lines, center_lines)


@ft.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _kspace_line_mask(key, H, W, n_lines, center_lines):
    order = (jnp.arange(H) - center_lines // 2) % H  # the first `center_lines` are the centre rows
    rest = jr.permutation(key, order[center_lines:])[: n_lines - center_lines]
    rows = jnp.zeros(H, bool).at[order[:center_lines]].set(True).at[rest].set(True)
    return jnp.broadcast_to(rows[:, None], (H, W))
