import functools as ft
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, Inexact

from ..._check import check_int
from ..._custom_types import Hyperparameter, Key
from .base import AbstractLinearOperator, Signal, normal_cg


class Blur(AbstractLinearOperator):
    r"""Deblurring: circular convolution $y = k \circledast x$ over the last two axes, computed by FFT.

    The kernel's centre (index `(kh // 2, kw // 2)`) sits at the origin, so a symmetric kernel does not
    shift the image; the result equals `scipy.ndimage.convolve(x, kernel, mode="wrap")`. With
    $\hat k$ the transfer function, $A^\top y = \mathcal F^{-1}(\overline{\hat k}\,\hat y)$ (correlation)
    and $A^+ y = \mathcal F^{-1}(\hat k^+ \hat y)$ where $\hat k^+ = 1/\hat k$ if $|\hat k| > $ `rcond`
    $\max|\hat k|$, else 0.

    **Arguments:**

    - `kernel`: the 2-D kernel `(kh, kw)`, no larger than the image; see
      [`gaussian_kernel`][diffuse_eqx.gaussian_kernel] and [`motion_kernel`][diffuse_eqx.motion_kernel].
    - `sigma_y`: noise standard deviation (default 0).
    """

    kernel: Float[Array, "kh kw"] = eqx.field(converter=jnp.asarray)
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        if self.kernel.ndim != 2:
            raise ValueError(f"Blur kernel must be 2-D (kh, kw); got shape {self.kernel.shape}.")

    @property
    def signal_shape(self) -> None:
        return None

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(x_shape) < 2 or x_shape[-2] < self.kernel.shape[0] or x_shape[-1] < self.kernel.shape[1]:
            raise ValueError(
                f"Blur kernel of shape {self.kernel.shape} is larger than the image axes (H, W) of a "
                f"signal of shape {x_shape}; use a smaller kernel."
            )
        return x_shape

    def _transfer(self, x_shape: tuple[int, ...]) -> Inexact[Array, "H W2"]:
        (kh, kw), (H, W) = self.kernel.shape, self.y_shape(x_shape)[-2:]
        k = jnp.zeros((H, W), self.kernel.dtype).at[:kh, :kw].set(self.kernel)
        return jnp.fft.rfft2(jnp.roll(k, (-(kh // 2), -(kw // 2)), axis=(0, 1)))

    def _filter(self, x: Signal, transfer: Inexact[Array, "H W2"]) -> Signal:
        return jnp.fft.irfft2(jnp.fft.rfft2(x) * transfer, s=x.shape[-2:]).astype(x.dtype)

    def apply(self, x: Signal) -> Signal:
        return self._filter(x, self._transfer(x.shape))

    def adjoint(self, y: Signal) -> Signal:
        return self._filter(y, jnp.conj(self._transfer(y.shape)))

    def pinv(self, y: Signal, rcond: float = 1e-6) -> Signal:
        """$A^+ y$, treating frequencies with $|\\hat k| \\le$ `rcond` $\\max|\\hat k|$ as unobserved."""
        k = self._transfer(y.shape)
        keep = jnp.abs(k) > rcond * jnp.max(jnp.abs(k))
        return self._filter(y, jnp.where(keep, 1 / jnp.where(keep, k, 1), 0))

    def normal(self, c: Hyperparameter, x: Signal) -> tuple[lx.FunctionLinearOperator, lx.CG]:
        r"""$cA^\top A + \sigma_y^2 I$, matrix-free, solved by conjugate gradients."""
        return normal_cg(self, c, x)


def gaussian_kernel(size: int, std: float) -> Float[Array, "size size"]:
    r"""A `size` $\times$ `size` Gaussian blur kernel $\propto e^{-(i^2 + j^2)/(2\,\mathrm{std}^2)}$ centred
    at `size // 2`, normalised to sum 1."""
    if size < 1 or not std > 0:
        raise ValueError(f"gaussian_kernel needs size >= 1 and std > 0; got size={size}, std={std}.")
    r = jnp.arange(size) - size // 2
    g = jnp.exp(-(r**2) / (2 * std**2))
    return jnp.outer(g, g) / jnp.sum(g) ** 2


def motion_kernel(key: Key, size: int, intensity: float, n_points: int = 256) -> Float[Array, "size size"]:
    r"""A random motion-blur kernel: the trajectory of a camera shake, rasterised.

    The path has `n_points` unit steps whose direction starts uniformly at random and turns by
    Gaussian increments of std $\pi\,$`intensity`$/\sqrt{n}$ (a random walk of the heading): `intensity`
    0 gives a straight line, 1 a strongly curved path. The path is centred and scaled to span the
    `size` $\times$ `size` box, splatted bilinearly onto the pixel grid and normalised to sum 1. A short
    stand-in for the kernels of Boracchi & Foi (2012) used in DPS, not the same random law.
    """
    if size < 2 or not 0 <= intensity <= 1:
        raise ValueError(f"motion_kernel needs size >= 2 and intensity in [0, 1]; got {size}, {intensity}.")
    check_int("motion_kernel n_points", n_points, minimum=2, hint=" (a path of at least two steps)")
    return _motion_kernel(key, size, intensity, n_points)


@ft.partial(jax.jit, static_argnums=(1, 3))
def _motion_kernel(key, size, intensity, n_points):
    k_start, k_turn = jr.split(key)
    turns = jr.normal(k_turn, (n_points,)) * jnp.pi * intensity / math.sqrt(n_points)
    heading = jr.uniform(k_start, (), maxval=2 * jnp.pi) + jnp.cumsum(turns)
    path = jnp.cumsum(jnp.stack([jnp.cos(heading), jnp.sin(heading)], axis=-1), axis=0)
    path = path - (path.max(0) + path.min(0)) / 2
    path = (size - 1) / 2 * (1 + path / jnp.max(jnp.abs(path)))  # in [0, size - 1]
    i0 = jnp.clip(jnp.floor(path), 0, size - 2).astype(int)
    corners = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]])  # bilinear splatting onto 4 pixels
    frac = (path - i0)[:, None, :]
    weights = jnp.prod(jnp.where(corners, frac, 1 - frac), axis=-1)
    idx = i0[:, None, :] + corners
    kernel = jnp.zeros((size, size)).at[idx[..., 0], idx[..., 1]].add(weights)
    return kernel / jnp.sum(kernel)
