import abc
import functools as ft
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Inexact, Real, Shaped

from .._check import as_numpy, concrete
from .._custom_types import Key, Scalar


Signal = Float[Array, "*x"]
Measurement = Inexact[Array, "*y"]  # real, or complex for MRI
RealMeasurement = Float[Array, "*y"]
Mask = Shaped[Array, "*m"]  # boolean or 0/1


def _check_binary(name: str, mask) -> None:
    if concrete(mask) and not np.isin(as_numpy(mask), (0, 1)).all():
        raise ValueError(f"{name} mask must be boolean or hold only 0 and 1.")


def _check_fits(name: str, mask_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> None:
    try:
        fits = len(x_shape) >= len(mask_shape) and np.broadcast_shapes(mask_shape, x_shape) == x_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} mask of shape {mask_shape} does not fit a signal of shape {x_shape}: the mask must "
            "have the signal's shape or broadcast over its leading (channel) axes, e.g. a mask (H, W) "
            "or (1, H, W) for a signal (C, H, W)."
        )


class AbstractOperator(eqx.Module):
    r"""A measurement model $y = \mathcal A(x) + \sigma_y \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$,
    for ONE unbatched signal $x$ (vmap for a batch).

    Complex measurements (e.g. [`MRI`][diffuse_eqx.MRI]) get independent real and imaginary noise of
    standard deviation $\sigma_y$ each, and $\|\cdot\|$ is the norm of $\mathbb C^n \cong \mathbb R^{2n}$.
    Concrete operators implement `apply` and `y_shape`; `y_shape` checks that a signal shape is
    accepted and raises a `ValueError` naming the problem otherwise. Linear operators derive from
    [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator] and also give an exact adjoint.
    """

    sigma_y: eqx.AbstractVar[Real[ArrayLike, ""]]
    r"""Standard deviation $\sigma_y \ge 0$ of the Gaussian measurement noise (0: noiseless)."""

    def __check_init__(self):
        if jnp.ndim(self.sigma_y) != 0:
            raise ValueError(f"sigma_y must be a scalar; got shape {jnp.shape(self.sigma_y)}.")
        if concrete(self.sigma_y) and not float(self.sigma_y) >= 0:
            raise ValueError(f"sigma_y must be >= 0 (0 means noiseless); got sigma_y={self.sigma_y}.")

    @abc.abstractmethod
    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of $\\mathcal A(x)$ for a signal of shape `x_shape`; raises a `ValueError` if the
        operator does not accept that shape."""

    @abc.abstractmethod
    def apply(self, x: Signal) -> Measurement:
        r"""The noiseless measurement $\mathcal A(x)$."""

    def measure(self, key: Key, x: Signal) -> Measurement:
        r"""A noisy measurement $\mathcal A(x) + \sigma_y\varepsilon$ (independent real and imaginary
        noise of std $\sigma_y$ each for complex measurements)."""
        y = self.apply(x)
        real = jnp.finfo(y.dtype).dtype
        if jnp.iscomplexobj(y):
            eps = jr.normal(key, (2, *y.shape), real)
            eps = jax.lax.complex(eps[0], eps[1])
        else:
            eps = jr.normal(key, y.shape, real)
        return (y + self.sigma_y * eps).astype(y.dtype)

    def residual(self, x: Signal, y: Measurement) -> Measurement:
        r"""$y - \mathcal A(x)$; raises a `ValueError` if `y` is not shaped like $\mathcal A(x)$."""
        ax = self.apply(x)
        if y.shape != ax.shape:
            raise ValueError(
                f"y has shape {y.shape} but the operator maps x of shape {x.shape} to shape {ax.shape}."
            )
        return y - ax

    def log_likelihood(self, x: Signal, y: Measurement) -> Scalar:
        r"""$\log p(y \mid x) = -\|y - \mathcal A(x)\|^2 / (2\sigma_y^2)$ up to an additive constant.
        Needs $\sigma_y > 0$."""
        msg = "log_likelihood needs sigma_y > 0; this operator is noiseless (sigma_y = 0)."
        if concrete(self.sigma_y) and self.sigma_y == 0:
            raise ValueError(msg)
        r = self.residual(x, y)
        sigma_y = eqx.error_if(jnp.asarray(self.sigma_y), self.sigma_y <= 0, msg)
        return -jnp.sum(jnp.real(r * jnp.conj(r))) / (2 * sigma_y**2)

    def vjp(self, x: Signal, cotangent: Measurement) -> Signal:
        r"""$J_{\mathcal A}(x)^\top v$: the gradient of $\mathrm{Re}\langle v, \mathcal A(x)\rangle$ with
        respect to $x$ (equal to `adjoint(v)` for linear operators)."""
        y, pullback = jax.vjp(self.apply, x)
        return pullback(jnp.conj(cotangent).astype(y.dtype))[0]


class AbstractLinearOperator(AbstractOperator):
    r"""A linear measurement $y = A x + \sigma_y\varepsilon$ with an exact adjoint $A^\top$ for the real
    inner product, $\langle A x, y\rangle = \langle x, A^\top y\rangle$ ($\mathrm{Re}\langle\cdot,\cdot
    \rangle$ for complex $y$).

    Which operators give more: `pinv` (the Moore–Penrose pseudo-inverse) for
    [`Inpainting`][diffuse_eqx.Inpainting], [`Downsampling`][diffuse_eqx.Downsampling],
    [`Blur`][diffuse_eqx.Blur], [`MRI`][diffuse_eqx.MRI] and [`Matrix`][diffuse_eqx.Matrix]; `svd`
    (dense) for [`Matrix`][diffuse_eqx.Matrix].
    """

    @abc.abstractmethod
    def adjoint(self, y: Measurement) -> Signal:
        r"""The adjoint $A^\top y$."""


class Inpainting(AbstractLinearOperator):
    r"""Inpainting: $y = m \odot x$, observing $x$ where the mask $m$ is 1 (or `True`).

    $y$ has $x$'s shape, with zeros at unobserved entries (plus noise there from `measure`, which carries
    no information about $x$). The operator is a 0/1 diagonal, so $A^\top y = A^+ y = m \odot y$.

    **Arguments:**

    - `mask`: boolean or 0/1, shaped like $x$ or broadcastable over its leading (channel) axes.
    - `sigma_y`: noise standard deviation (default 0).
    """

    mask: Mask = eqx.field(converter=jnp.asarray)
    sigma_y: Real[ArrayLike, ""] = 0.0

    def __check_init__(self):
        _check_binary("Inpainting", self.mask)

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_fits("Inpainting", self.mask.shape, x_shape)
        return x_shape

    def apply(self, x: Signal) -> Signal:
        self.y_shape(x.shape)
        return jnp.where(self.mask, x, 0)

    def adjoint(self, y: Signal) -> Signal:
        return self.apply(y)

    def pinv(self, y: Signal) -> Signal:
        r"""$A^+ y = m \odot y$."""
        return self.apply(y)


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
    if not 0 <= keep_fraction <= 1:
        raise ValueError(f"random_mask: keep_fraction must be in [0, 1]; got {keep_fraction}.")
    return jr.bernoulli(key, keep_fraction, shape)


class Downsampling(AbstractLinearOperator):
    r"""Super-resolution: average pooling by `factor` $k$ over the last two axes, $(\dots, H, W) \to
    (\dots, H/k, W/k)$.

    The adjoint repeats each pixel $k\times k$ times and divides by $k^2$. Since $A A^\top = I / k^2$,
    the pseudo-inverse $A^+ = k^2 A^\top$ is nearest-neighbour upsampling.

    **Arguments:**

    - `factor`: the integer $k \ge 1$; it must divide $H$ and $W$.
    - `sigma_y`: noise standard deviation (default 0).
    """

    factor: int = eqx.field(static=True)
    sigma_y: Real[ArrayLike, ""] = 0.0

    def __check_init__(self):
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"Downsampling factor must be a positive integer; got {self.factor!r}.")

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
    sigma_y: Real[ArrayLike, ""] = 0.0

    def __check_init__(self):
        if self.kernel.ndim != 2:
            raise ValueError(f"Blur kernel must be 2-D (kh, kw); got shape {self.kernel.shape}.")

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


class MRI(AbstractLinearOperator):
    r"""Accelerated MRI: a k-space mask after the orthonormal 2-D FFT of a real image,
    $y = m \odot \mathcal F x$ (complex, unshifted FFT layout: the DC term at index `[0, 0]`).

    For the real inner product $\mathrm{Re}\langle\cdot,\cdot\rangle$ the adjoint is
    $A^\top y = \mathrm{Re}\,\mathcal F^{-1}(m \odot y)$. Since $\mathcal F x$ of a real $x$ is Hermitian,
    a frequency $\kappa$ observed without its mirror $-\kappa$ is seen "twice as weakly":
    $A A^\top = \mathrm{diag}(w)$ on the range of $A$ with $w(\kappa) = m(\kappa)(1 + m(-\kappa))/2$, and
    $A^+ y = A^\top(y / w)$ (0 where $w = 0$).

    **Arguments:**

    - `mask`: boolean or 0/1 k-space mask `(H, W)` (or shaped like $x$); see
      [`kspace_line_mask`][diffuse_eqx.kspace_line_mask].
    - `sigma_y`: noise standard deviation of the real and the imaginary parts (default 0).
    """

    mask: Mask = eqx.field(converter=jnp.asarray)
    sigma_y: Real[ArrayLike, ""] = 0.0

    def __check_init__(self):
        _check_binary("MRI", self.mask)
        if self.mask.ndim < 2:
            raise ValueError(f"MRI mask needs at least the two k-space axes (H, W); got {self.mask.shape}.")

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_fits("MRI", self.mask.shape, x_shape)
        return x_shape

    def apply(self, x: Signal) -> Inexact[Array, "*x"]:
        self.y_shape(x.shape)
        return jnp.where(self.mask, jnp.fft.fft2(x, norm="ortho"), 0)

    def adjoint(self, y: Inexact[Array, "*y"]) -> Signal:
        self.y_shape(y.shape)
        return jnp.fft.ifft2(jnp.where(self.mask, y, 0), norm="ortho").real

    def pinv(self, y: Inexact[Array, "*y"]) -> Signal:
        r"""$A^+ y = A^\top(y / w)$, see above."""
        mirror = jnp.roll(jnp.flip(self.mask, (-2, -1)), 1, axis=(-2, -1))  # m(-kappa)
        return self.adjoint(y * jnp.where(mirror, 1.0, 2.0))


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


class Matrix(AbstractLinearOperator):
    r"""A dense linear measurement $y = A x$ of a vector $x \in \mathbb R^{d_x}$, $y \in \mathbb R^{d_y}$,
    with `svd` and `pinv` from `jnp.linalg`.

    **Arguments:**

    - `A`: the matrix, shape `(d_y, d_x)`.
    - `sigma_y`: noise standard deviation (default 0).
    """

    A: Float[Array, "d_y d_x"] = eqx.field(converter=jnp.asarray)
    sigma_y: Real[ArrayLike, ""] = 0.0

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if x_shape != self.A.shape[1:]:
            raise ValueError(
                f"Matrix A of shape {self.A.shape} needs x of shape {self.A.shape[1:]}; got {x_shape}."
            )
        return self.A.shape[:1]

    def apply(self, x: Float[Array, " d_x"]) -> Float[Array, " d_y"]:
        self.y_shape(x.shape)
        return self.A @ x

    def adjoint(self, y: Float[Array, " d_y"]) -> Float[Array, " d_x"]:
        if y.shape != self.A.shape[:1]:
            raise ValueError(
                f"Matrix A of shape {self.A.shape} needs y of shape {self.A.shape[:1]}; got {y.shape}."
            )
        return self.A.T @ y

    def pinv(self, y: Float[Array, " d_y"]) -> Float[Array, " d_x"]:
        """$A^+ y$ with `jnp.linalg.pinv`."""
        return jnp.linalg.pinv(self.A) @ y

    def svd(self) -> tuple[Float[Array, "d_y r"], Float[Array, " r"], Float[Array, "r d_x"]]:
        """The thin SVD `(U, S, Vt)`, $A = U\\,\\mathrm{diag}(S)\\,V^\\top$, $r = \\min(d_y, d_x)$."""
        return jnp.linalg.svd(self.A, full_matrices=False)


class LatentOperator(AbstractOperator):
    r"""A measurement of a decoded latent, $y = A(D(z)) + \sigma_y \varepsilon$, for latent diffusion
    (e.g. the FLUX autoencoder's decoder).

    The decoder $D$ is nonlinear, so this operator has no adjoint: use `vjp(z, v)`
    $= J_D(z)^\top A^\top v$ (computed by `jax.vjp`), or differentiate `log_likelihood`.

    **Arguments:**

    - `op`: the pixel-space operator $A$.
    - `decoder`: a callable $z \mapsto x$ on one unbatched latent.
    - `sigma_y`: noise standard deviation; defaults to `op.sigma_y`.
    """

    op: AbstractOperator
    decoder: Callable[[Signal], Signal]
    sigma_y: Real[ArrayLike, ""]

    def __init__(self, op: AbstractOperator, decoder: Callable, sigma_y: Real[ArrayLike, ""] | None = None):
        self.op, self.decoder = op, decoder
        self.sigma_y = op.sigma_y if sigma_y is None else sigma_y

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        x = jax.eval_shape(self.decoder, jax.ShapeDtypeStruct(x_shape, float))
        return self.op.y_shape(x.shape)

    def apply(self, x: Signal) -> Measurement:
        return self.op.apply(self.decoder(x))

    def adjoint(self, y: Measurement):
        """Not defined: raises `NotImplementedError` (the decoder is nonlinear); see `vjp`."""
        raise NotImplementedError(
            "LatentOperator has no adjoint: the decoder is nonlinear. Use `vjp(z, cotangent)` (the "
            "pullback J_D(z)^T A^T at z) or differentiate `log_likelihood` instead."
        )
