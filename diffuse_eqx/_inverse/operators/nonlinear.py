from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact

from ..._custom_types import Hyperparameter
from .base import AbstractOperator, Measurement, Signal


class FunctionOperator(AbstractOperator):
    r"""Any callable as a forward model, $y = f(x) + \sigma_y\varepsilon$: a simulator, a network, a
    nonlinear map. Its derivative comes from `jax.vjp` through `f` if `differentiable` (default);
    a black box (not JAX-traceable, or whose derivative is meaningless) is declared
    `differentiable=False`, and gradient-based samplers then refuse it.

    **Arguments:**

    - `f`: `f(x) -> y` for one unbatched signal.
    - `x_shape`: the one signal shape `f` accepts (its output shape is found by tracing).
    - `sigma_y`: noise standard deviation (default 0).
    - `differentiable`: whether gradient-based samplers may differentiate `f` (default `True`).
    """

    f: Callable
    x_shape: tuple[int, ...] = eqx.field(static=True, converter=tuple)
    sigma_y: Hyperparameter = 0.0
    differentiable: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not callable(self.f):
            raise TypeError(f"FunctionOperator f must be callable, f(x) -> y; got {self.f!r}.")

    @property
    def signal_shape(self) -> tuple[int, ...]:
        return self.x_shape

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(x_shape) != self.x_shape:
            raise ValueError(f"FunctionOperator needs x of shape {self.x_shape}; got {tuple(x_shape)}.")
        out = jax.eval_shape(self.f, jax.ShapeDtypeStruct(self.x_shape, jnp.result_type(float)))
        return tuple(out.shape)

    def apply(self, x: Signal) -> Measurement:
        if tuple(x.shape) != self.x_shape:  # (y_shape's check, without tracing f again)
            raise ValueError(f"FunctionOperator needs x of shape {self.x_shape}; got {tuple(x.shape)}.")
        return jnp.asarray(self.f(x))


class PhaseRetrieval(AbstractOperator):
    r"""Phase retrieval, $y = |A x| + \sigma_y\varepsilon$ for a (real or complex) matrix $A$, or the
    Fourier magnitudes $y = |\mathcal F x|$ (orthonormal FFT over the signal's axes) without one. The
    magnitudes lose the phase: $x$ and $-x$ (for real $A$), and for the Fourier transform shifts and
    flips of $x$, give the same $y$, so the posterior is multimodal. Differentiable except where a
    component of $Ax$ is zero.

    **Arguments:**

    - `A`: a matrix of shape `(d_y, d_x)`, or `None` for the Fourier transform.
    - `sigma_y`: noise standard deviation (default 0).
    """

    A: Inexact[Array, "d_y d_x"] | None = None
    sigma_y: Hyperparameter = 0.0
    differentiable: ClassVar[bool] = True

    def __check_init__(self):
        if self.A is not None and jnp.ndim(self.A) != 2:
            raise ValueError(f"PhaseRetrieval A must be a matrix (d_y, d_x); got shape {jnp.shape(self.A)}.")

    @property
    def signal_shape(self) -> tuple[int, ...] | None:
        return None if self.A is None else tuple(jnp.shape(self.A)[1:])

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.A is None:
            return tuple(x_shape)
        if tuple(x_shape) != self.signal_shape:
            raise ValueError(
                f"PhaseRetrieval A of shape {jnp.shape(self.A)} needs x of shape {self.signal_shape}; "
                f"got {x_shape}."
            )
        return tuple(jnp.shape(self.A)[:1])

    def apply(self, x: Float[Array, "*x"]) -> Float[Array, "*y"]:
        self.y_shape(x.shape)
        z = jnp.fft.fftn(x, norm="ortho") if self.A is None else jnp.asarray(self.A) @ x
        # |z| with a finite derivative at z = 0 (the subgradient 0 there)
        power = jnp.real(z * jnp.conj(z))
        safe = jnp.where(power > 0, power, 1.0)
        return jnp.where(power > 0, jnp.sqrt(safe), 0.0).astype(jnp.real(z).dtype)


class Quantize(AbstractOperator):
    r"""A quantised linear measurement, $y = \delta\,\mathrm{round}(A x / \delta) + \sigma_y\varepsilon$
    (a sensor with resolution $\delta$): piecewise constant, so its derivative is zero almost
    everywhere and undefined at the steps. Not `differentiable`: a black box for the samplers, which
    only derivative-free ones (zero-order, ensemble) run.

    **Arguments:**

    - `A`: a real matrix of shape `(d_y, d_x)`.
    - `step`: the resolution $\delta > 0$ (default 1).
    - `sigma_y`: noise standard deviation (default 0).
    """

    A: Float[Array, "d_y d_x"] = eqx.field(converter=jnp.asarray)
    step: Hyperparameter = 1.0
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        if self.A.ndim != 2 or not jnp.issubdtype(self.A.dtype, jnp.floating):
            raise ValueError(f"Quantize A must be a real matrix (d_y, d_x); got shape {self.A.shape}.")
        if jnp.ndim(self.step) != 0 or not float(self.step) > 0:
            raise ValueError(f"Quantize step must be a number > 0; got {self.step}.")

    differentiable: ClassVar[bool] = False

    @property
    def signal_shape(self) -> tuple[int, ...]:
        return tuple(self.A.shape[1:])

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(x_shape) != self.signal_shape:
            raise ValueError(
                f"Quantize A of shape {self.A.shape} needs x of shape {self.signal_shape}; got {x_shape}."
            )
        return tuple(self.A.shape[:1])

    def apply(self, x: Float[Array, " d_x"]) -> Float[Array, " d_y"]:
        self.y_shape(x.shape)
        return self.step * jnp.round(self.A @ x / self.step)
