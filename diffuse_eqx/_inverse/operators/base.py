import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Inexact, Shaped

from ..._check import as_numpy, check_traced, concrete
from ..._custom_types import Hyperparameter, Key, Scalar


Signal = Float[Array, "*x"]
Measurement = Inexact[Array, "*y"]  # real, or complex for MRI
RealMeasurement = Float[Array, "*y"]
Mask = Shaped[Array, "*m"]  # boolean or 0/1


def check_binary(name: str, mask) -> None:
    if concrete(mask) and not np.isin(as_numpy(mask), (0, 1)).all():
        raise ValueError(f"{name} mask must be boolean or hold only 0 and 1.")


def as_mask(mask) -> Array:
    """A mask field's converter: a concrete 0/1 mask becomes boolean (then no check is ever
    compiled in); a traced one (built under `jit`/`vmap`) stays as it is, checked where used."""
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_ and concrete(mask) and np.isin(as_numpy(mask), (0, 1)).all():
        return mask.astype(jnp.bool_)
    return mask


def binary(name: str, mask):
    """`mask`, checked at run time if it is not boolean (a 0/1 mask built under `jit`/`vmap`)."""
    if mask.dtype == jnp.bool_:
        return mask
    return check_traced(
        mask, f"{name} mask", mask, lambda m: (m == 0) | (m == 1), "boolean or hold only 0 and 1"
    )


def check_fits(name: str, mask_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> None:
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


def check_differentiable(name: str, operator) -> None:
    """Refuses an operator without a useful derivative for a method that differentiates it."""
    if not operator.differentiable:
        raise ValueError(
            f"{name} differentiates the forward model, but {type(operator).__name__} is not "
            "differentiable (a black box, or piecewise constant: its gradient is zero or undefined). "
            "Use a derivative-free sampler: DPSGSG (zero-order DPS)."
        )


class AbstractOperator(eqx.Module):
    r"""A measurement model $y = \mathcal A(x) + \sigma_y \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$,
    for ONE unbatched signal $x$ (vmap for a batch).

    Complex measurements (e.g. [`MRI`][diffuse_eqx.MRI]) get independent real and imaginary noise of
    standard deviation $\sigma_y$ each, and $\|\cdot\|$ is the norm of $\mathbb C^n \cong \mathbb R^{2n}$.
    Concrete operators implement `apply`, `y_shape` and `signal_shape`; `y_shape` checks that a signal
    shape is accepted and raises a `ValueError` naming the problem otherwise. Linear operators derive
    from [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator] and also give an exact adjoint,
    a pseudo-inverse and the structure of their normal equations.
    """

    sigma_y: eqx.AbstractVar[Hyperparameter]
    r"""Standard deviation $\sigma_y \ge 0$ of the Gaussian measurement noise (0: noiseless)."""

    def __check_init__(self):
        if jnp.ndim(self.sigma_y) != 0:
            raise ValueError(f"sigma_y must be a scalar; got shape {jnp.shape(self.sigma_y)}.")
        if concrete(self.sigma_y) and not float(self.sigma_y) >= 0:
            raise ValueError(f"sigma_y must be >= 0 (0 means noiseless); got sigma_y={self.sigma_y}.")

    @property
    @abc.abstractmethod
    def signal_shape(self) -> tuple[int, ...] | None:
        """The one signal shape the operator accepts (a [`Matrix`][diffuse_eqx.Matrix]: `(d_x,)`), or
        `None` if it accepts several (masks broadcast over channels, images of any size)."""

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

    differentiable: eqx.AbstractVar[bool]
    r"""Whether $\mathcal A$ has a useful derivative (`vjp`). `False` for a black box or a
    piecewise-constant map ([`Quantize`][diffuse_eqx.Quantize]): gradient-based samplers refuse it,
    derivative-free ones run it. (Linear operators: `True`.)"""

    def vjp(self, x: Signal, cotangent: Measurement) -> Signal:
        r"""$J_{\mathcal A}(x)^\top v$: the gradient of $\mathrm{Re}\langle v, \mathcal A(x)\rangle$ with
        respect to $x$ (equal to `adjoint(v)` for linear operators). A `ValueError` for an operator
        that is not `differentiable`."""
        check_differentiable("vjp", self)
        y, pullback = jax.vjp(self.apply, x)
        return pullback(jnp.conj(cotangent).astype(y.dtype))[0]


class AbstractLinearOperator(AbstractOperator):
    r"""A linear measurement $y = A x + \sigma_y\varepsilon$ with an exact adjoint $A^\top$ for the real
    inner product, $\langle A x, y\rangle = \langle x, A^\top y\rangle$ ($\mathrm{Re}\langle\cdot,\cdot
    \rangle$ for complex $y$), its Moore–Penrose pseudo-inverse $A^+$, and the structure of its
    normal equations.

    A concrete linear operator implements `adjoint`, `pinv` and `normal`; `normal` returns
    $cA^\top A + \sigma_y^2 I$ as a [lineax](https://docs.kidger.site/lineax/) operator whose tags
    declare its structure, with the lineax solver that uses it, and
    [`gram_solve`][diffuse_eqx.AbstractLinearOperator.gram_solve] (what PiGDM needs) solves with them.
    The signal space is always real, so these solves are real even for complex measurements.
    """

    differentiable: ClassVar[bool] = True

    @abc.abstractmethod
    def adjoint(self, y: Measurement) -> Signal:
        r"""The adjoint $A^\top y$."""

    @abc.abstractmethod
    def pinv(self, y: Measurement) -> Signal:
        r"""The pseudo-inverse $A^+ y$."""

    @abc.abstractmethod
    def normal(
        self, c: Hyperparameter, x: Signal
    ) -> tuple[lx.AbstractLinearOperator, lx.AbstractLinearSolver]:
        r"""The operator $cA^\top A + \sigma_y^2 I$ ($c \ge 0$) of the normal equations on signals
        shaped like `x` (their structure and dtype), as a lineax operator tagged with its structure, and
        the lineax solver that uses it (returning the pseudo-inverse solution where it is singular)."""

    def gram_solve(
        self, c: Hyperparameter, r: Measurement, solver: lx.AbstractLinearSolver | None = None
    ) -> Signal:
        r"""$A^\top (c\,A A^\top + \sigma_y^2 I)^+ r$ for $c \ge 0$, a vector of signal space, solved as

        $$A^\top (c A A^\top + \sigma_y^2 I)^+ r = (c A^\top A + \sigma_y^2 I)^+ A^\top r$$

        (push-through) with the operator's [`normal`][diffuse_eqx.AbstractLinearOperator.normal]
        structure: exact for [`Inpainting`][diffuse_eqx.Inpainting] (diagonal) and
        [`Matrix`][diffuse_eqx.Matrix] (SVD), conjugate gradients for the others. $\sigma_y = 0$ gives
        the pseudo-inverse, $A^+ r / c$.

        **Arguments:**

        - `c`: the scale $c \ge 0$ of $A A^\top$.
        - `r`: a measurement-space vector, shaped like `apply(x)`.
        - `solver`: a lineax solver to use instead of the operator's (it must accept the operator's
          structure, e.g. `lx.CG(rtol, atol, max_steps)`).
        """
        b = self.adjoint(r)
        operator, default = self.normal(c, b)
        return scaled_solve(operator, b, default if solver is None else solver)


def scaled_solve(operator: lx.AbstractLinearOperator, b: Signal, solver: lx.AbstractLinearSolver) -> Signal:
    r"""`lx.linear_solve(operator, b, solver)` for `b` scaled by a power of 2 (exactly) to
    $\max_i |b_i| \in [0.5, 1)$: lineax's tolerances are per entry, `atol + rtol |b_i|`, and so
    become relative to the size of `b`."""
    scale = jnp.ldexp(jnp.ones((), b.dtype), jnp.frexp(jnp.max(jnp.abs(b)))[1])
    return (scale * lx.linear_solve(operator, b / scale, solver).value).astype(b.dtype)


def cg_tolerance(dtype) -> float:
    r"""The default relative tolerance of the conjugate-gradient solves: $\sqrt{\epsilon}$ of `dtype`
    ($1.5\cdot 10^{-8}$ in float64, $3.5 \cdot 10^{-4}$ in float32)."""
    return float(np.sqrt(np.finfo(dtype).eps))


def normal_cg(
    operator: AbstractLinearOperator, c: Hyperparameter, x: Signal
) -> tuple[lx.FunctionLinearOperator, lx.CG]:
    r"""`normal` of a matrix-free operator: $v \mapsto c A^\top A v + \sigma_y^2 v$, symmetric
    positive semidefinite, solved by conjugate gradients (in signal space: real)."""
    s2 = jnp.asarray(operator.sigma_y) ** 2

    def mv(v):
        return (c * operator.adjoint(operator.apply(v)) + s2 * v).astype(v.dtype)

    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    tol = cg_tolerance(x.dtype)
    return lx.FunctionLinearOperator(mv, jax.eval_shape(lambda: x), tags), lx.CG(rtol=tol, atol=tol)
