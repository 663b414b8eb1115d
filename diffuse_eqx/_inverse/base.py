"""Posterior guidance: predictors that add an estimate of $\\nabla_x \\log p(y \\mid x_t)$ to a prior
predictor, so that every integrator samples (approximately) the posterior $p(x_0 \\mid y)$; and the
helpers that the posterior samplers share."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._check import concrete
from .._custom_types import NFE, Hyperparameter, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .operators import AbstractOperator, Measurement


def check_y(name: str, operator: AbstractOperator, y, x_shape: tuple[int, ...]) -> None:
    """Raises a `ValueError` naming `name` if `y` is not shaped like `operator.apply(x)`."""
    expected = tuple(operator.y_shape(tuple(x_shape)))
    if tuple(y.shape) != expected:
        raise ValueError(
            f"{name}: y has shape {tuple(y.shape)}, but {type(operator).__name__} maps a signal of shape "
            f"{tuple(x_shape)} to a measurement of shape {expected}. Pass the measurement of this "
            "operator, e.g. y = operator.measure(key, x)."
        )
    measured = jax.eval_shape(operator.apply, jax.ShapeDtypeStruct(tuple(x_shape), jnp.result_type(float)))
    complex_y, complex_out = (jnp.issubdtype(d, jnp.complexfloating) for d in (y.dtype, measured.dtype))
    if not jnp.issubdtype(y.dtype, jnp.inexact) or (complex_y and not complex_out):
        raise TypeError(
            f"{name}: y has dtype {y.dtype}, but {type(operator).__name__} measures "
            f"{'complex' if complex_out else 'real'} values: pass a floating-point y"
            f"{'' if complex_out else ' (its imaginary part would be dropped)'}."
        )


def check_y_now(name: str, operator: AbstractOperator, y) -> None:
    """`check_y` at construction, for an operator that fixes the signal shape (a
    [`Matrix`][diffuse_eqx.Matrix]); other operators are checked when sampling starts."""
    if operator.signal_shape is not None:
        check_y(name, operator, y, operator.signal_shape)


def check_noisy(name: str, operator: AbstractOperator, why: str) -> None:
    """Refuses a noiseless operator for a method that needs the likelihood (sigma_y > 0)."""
    if concrete(operator.sigma_y) and not float(operator.sigma_y) > 0:
        raise ValueError(
            f"{name} needs a noisy operator, sigma_y > 0 ({why}); got sigma_y={operator.sigma_y}. "
            "Give the operator the measurement's noise level, e.g. dx.Matrix(A, sigma_y=0.1)."
        )


def prior_variance(path: AbstractPath, t: Time, data_var: Hyperparameter) -> Array:
    r"""$r_t^2 = \mathrm{Var}[x_0 \mid x_t]$ for data $x_0 \sim \mathcal N(\mu, v I)$:
    $r_t^2 = v\sigma_t^2 / (v\alpha_t^2 + \sigma_t^2)$ (the PiGDM / DAPS heuristic; exact for such data)."""
    a, s = path.alpha(t), path.sigma(t)
    return data_var * s**2 / (data_var * a**2 + s**2)


def guided(path: AbstractPath, t: Time, pred: Prediction, g: Particle) -> Prediction:
    r"""The prediction of the score $\nabla\log p_t(x) + g$ at the same $x$:
    $\varepsilon' = \hat\varepsilon - \sigma_t g$, $x_0' = \hat x_0 + (\sigma_t^2/\alpha_t)\, g$
    (Tweedie). Where $\alpha_t = 0$, $x_t$ carries no information on $x_0$: the prior prediction is
    returned (selected, so that a non-finite derivative there does not leak in)."""
    a, s = path.alpha(t), path.sigma(t)
    x0 = pred.x0 + s**2 / jnp.where(a == 0, 1.0, a) * g
    noise = pred.noise - s * g
    return Prediction(
        x0=jnp.where(a == 0, pred.x0, x0).astype(pred.x0.dtype),
        noise=jnp.where(a == 0, pred.noise, noise).astype(pred.x0.dtype),
    )


def shifted(path: AbstractPath, t: Time, pred: Prediction, dx0: Particle) -> Prediction:
    r"""The prediction with $x_0' = \hat x_0 + \Delta$ at the same $x$: $\varepsilon' = \hat\varepsilon
    - (\alpha_t/\sigma_t)\Delta$ (finite where $\alpha_t = 0$; $\sigma_t = 0$ leaves the noise as is)."""
    a, s = path.alpha(t), path.sigma(t)
    ratio = jnp.where(s == 0, 0.0, a / jnp.where(s == 0, 1.0, s))
    return Prediction(
        x0=(pred.x0 + dx0).astype(pred.x0.dtype), noise=(pred.noise - ratio * dx0).astype(pred.x0.dtype)
    )


def x0_map(predictor: AbstractPredictor, t: Time, state: PyTree) -> Callable:
    """$x \\mapsto \\hat x_0(x, t)$, with the whole evaluation `(prediction, new state, nfe)` as
    auxiliary output (for `jax.vjp` / `jax.linearize` / `jax.jacrev` with `has_aux=True`)."""

    def x0(x):
        pred, new_state, nfe = predictor.evaluate(x, t, state)
        return pred.x0, (pred, new_state, nfe)

    return x0


class AbstractPosteriorGuidance(AbstractPredictor):
    r"""A prior predictor guided towards a measurement $y = \mathcal A(x_0) + \sigma_y\varepsilon$.

    At $(x, t)$ it evaluates the prior `predictor` and returns the [`Prediction`][diffuse_eqx.Prediction]
    of the posterior score $\nabla\log p_t(x) + g(x, t)$, with $g \approx \nabla_x \log p(y \mid x_t = x)$:

    $$\varepsilon' = \hat\varepsilon - \sigma_t\, g, \qquad
      x_0' = \frac{x - \sigma_t\varepsilon'}{\alpha_t} = \hat x_0 + \frac{\sigma_t^2}{\alpha_t}\, g
      \;\; \big(= \mathbb E[x_0 \mid x_t = x, y] \text{ when } g \text{ is exact}\big).$$

    It is a predictor, so every integrator (and the [`Denoiser`][diffuse_eqx.Denoiser]) runs it.
    The measurement's shape is checked at construction when the operator fixes the signal's shape (a
    [`Matrix`][diffuse_eqx.Matrix]), otherwise when the sampler starts (a `ValueError` naming `y`).
    Where $\alpha_t = 0$ (`Flow` at $t = 1$) $x_t$ is independent of $x_0$: methods built on the Jacobian
    of $\hat x_0$ return the prior prediction there, so start such grids just below $t_{\max}$ (e.g.
    `dx.UniformTimer(n, t_max=0.999)`) if the first step matters.
    """

    predictor: eqx.AbstractVar[AbstractPredictor]
    operator: eqx.AbstractVar[AbstractOperator]
    y: eqx.AbstractVar[Measurement]

    def __check_init__(self):
        check_y_now(type(self).__name__, self.operator, self.y)

    @property
    def path(self) -> AbstractPath:
        """The prior predictor's path."""
        return self.predictor.path

    def init(self, x: Particle) -> PyTree:
        """Checks the measurement's shape against `x`; the prior predictor's initial state."""
        check_y(type(self).__name__, self.operator, self.y, x.shape)
        return self.predictor.init(x)

    @abc.abstractmethod
    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The guided prediction at `(x, t)`, the prior predictor's new state, and its cost."""
