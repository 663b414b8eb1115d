"""Posterior guidance: predictors that add an estimate of $\\nabla_x \\log p(y \\mid x_t)$ to a prior
predictor, so that every integrator samples (approximately) the posterior $p(x_0 \\mid y)$."""

import abc
from typing import Literal, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as jsla
from jaxtyping import Array, ArrayLike, Inexact, PyTree, Real

from .._check import concrete
from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor, Prediction
from .._targets import GaussianMixture
from .operators import AbstractLinearOperator, AbstractOperator, Downsampling, Inpainting, Matrix


Measurement: TypeAlias = Inexact[Array, "*y"]
Hyperparameter: TypeAlias = Real[ArrayLike, ""]


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by the integrator-type samplers in samplers.py)
# --------------------------------------------------------------------------------------------------


def check_y(name: str, operator: AbstractOperator, y, x_shape: tuple[int, ...]) -> None:
    """Raises a `ValueError` naming `name` if `y` is not shaped like `operator.apply(x)`."""
    expected = tuple(operator.y_shape(tuple(x_shape)))
    if tuple(y.shape) != expected:
        raise ValueError(
            f"{name}: y has shape {tuple(y.shape)}, but {type(operator).__name__} maps a signal of shape "
            f"{tuple(x_shape)} to a measurement of shape {expected}. Pass the measurement of this "
            "operator, e.g. y = operator.measure(key, x)."
        )


def check_matrix_y(name: str, operator: AbstractOperator, y) -> None:
    """For a [`Matrix`][diffuse_eqx.Matrix] the measurement shape is known at construction."""
    if isinstance(operator, Matrix):
        check_y(name, operator, y, operator.A.shape[1:])


def check_operator(name: str, operator, linear: bool = False, pinv: bool = False) -> None:
    kind = AbstractLinearOperator if linear else AbstractOperator
    if not isinstance(operator, kind):
        raise TypeError(
            f"{name} operator must be an {kind.__name__} (e.g. dx.Matrix(A, sigma_y)); got "
            f"{type(operator).__name__}."
        )
    if pinv and not callable(getattr(operator, "pinv", None)):
        raise TypeError(
            f"{name} needs an operator with a pseudo-inverse `pinv` (Inpainting, Downsampling, Blur, MRI, "
            f"Matrix); {type(operator).__name__} has none."
        )


def check_noisy(name: str, operator: AbstractOperator, why: str) -> None:
    """Refuses a noiseless operator for a method that needs the likelihood (sigma_y > 0)."""
    if concrete(operator.sigma_y) and not float(operator.sigma_y) > 0:
        raise ValueError(
            f"{name} needs a noisy operator, sigma_y > 0 ({why}); got sigma_y={operator.sigma_y}. "
            "Give the operator the measurement's noise level, e.g. dx.Matrix(A, sigma_y=0.1)."
        )


def check_predictor(name: str, predictor) -> None:
    if not isinstance(predictor, AbstractPredictor):
        raise TypeError(
            f"{name} predictor must be an AbstractPredictor (e.g. dx.Predictor(network, path)); got "
            f"{type(predictor).__name__}."
        )


def check_positive(name: str, argument: str, value) -> None:
    if concrete(value) and not float(value) > 0:
        raise ValueError(f"{name} {argument} must be > 0; got {argument}={value}.")


def prior_variance(path: AbstractPath, t: Time, data_var: Hyperparameter) -> Array:
    r"""$r_t^2 = \mathrm{Var}[x_0 \mid x_t]$ for data $x_0 \sim \mathcal N(\mu, v I)$:
    $r_t^2 = v\sigma_t^2 / (v\alpha_t^2 + \sigma_t^2)$ (the PiGDM / DAPS heuristic; exact for such data)."""
    a, s = path.alpha(t), path.sigma(t)
    return data_var * s**2 / (data_var * a**2 + s**2)


def _to_real(v: Array) -> Array:
    """A complex measurement as a real array of twice the size (the inner product of C^n = R^2n)."""
    return jnp.stack([v.real, v.imag]) if jnp.iscomplexobj(v) else v


def _from_real(v: Array, like: Array) -> Array:
    return jax.lax.complex(v[0], v[1]) if jnp.iscomplexobj(like) else v


def _cg(matvec, b: Array, maxiter: int | None, tol: float) -> Array:
    """Conjugate gradients for a symmetric positive (semi)definite map of measurement space,
    complex measurements handled as real pairs."""
    solution, _ = jsla.cg(
        lambda v: _to_real(matvec(_from_real(v, b))), _to_real(b), tol=tol, atol=0.0, maxiter=maxiter
    )
    return _from_real(solution, b)


def gram_solve(
    operator: AbstractLinearOperator,
    c,
    r: Measurement,
    maxiter: int | None = None,
    tol: float = 1e-8,
) -> Particle:
    r"""$A^\top (c\,A A^\top + \sigma_y^2 I)^{-1} r$, a vector of signal space.

    Closed forms for [`Matrix`][diffuse_eqx.Matrix] (its SVD: $V\,\mathrm{diag}(S/(cS^2 + \sigma_y^2))
    U^\top r$, a zero singular value giving 0, so $\sigma_y = 0$ is the pseudo-inverse $A^+ r / c$),
    [`Inpainting`][diffuse_eqx.Inpainting] ($A A^\top = \mathrm{diag}(m)$) and
    [`Downsampling`][diffuse_eqx.Downsampling] ($A A^\top = I/k^2$); conjugate gradients on
    $c A A^\top + \sigma_y^2 I$ otherwise (needs that map to be invertible on $r$ when $\sigma_y = 0$)."""
    s2 = jnp.asarray(operator.sigma_y) ** 2
    if isinstance(operator, Matrix):
        U, S, Vt = operator.svd()
        d = c * S**2 + s2
        w = jnp.where(d > 0, S / jnp.where(d > 0, d, 1.0), 0.0)
        return Vt.T @ (w * (U.T @ r))
    if isinstance(operator, Inpainting):
        return operator.adjoint(r) / (c + s2)
    if isinstance(operator, Downsampling):
        return operator.adjoint(r) / (c / operator.factor**2 + s2)
    z = _cg(lambda v: c * operator.apply(operator.adjoint(v)) + s2 * v, r, maxiter, tol)
    return operator.adjoint(z)


def _guided(path: AbstractPath, t: Time, pred: Prediction, g: Particle) -> Prediction:
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


def _shifted(path: AbstractPath, t: Time, pred: Prediction, dx0: Particle) -> Prediction:
    r"""The prediction with $x_0' = \hat x_0 + \Delta$ at the same $x$: $\varepsilon' = \hat\varepsilon
    - (\alpha_t/\sigma_t)\Delta$ (finite where $\alpha_t = 0$; $\sigma_t = 0$ leaves the noise as is)."""
    a, s = path.alpha(t), path.sigma(t)
    ratio = jnp.where(s == 0, 0.0, a / jnp.where(s == 0, 1.0, s))
    return Prediction(
        x0=(pred.x0 + dx0).astype(pred.x0.dtype), noise=(pred.noise - ratio * dx0).astype(pred.x0.dtype)
    )


# --------------------------------------------------------------------------------------------------
# Guidance predictors
# --------------------------------------------------------------------------------------------------


class AbstractPosteriorGuidance(AbstractPredictor):
    r"""A prior predictor guided towards a measurement $y = \mathcal A(x_0) + \sigma_y\varepsilon$.

    At $(x, t)$ it evaluates the prior `predictor` and returns the [`Prediction`][diffuse_eqx.Prediction]
    of the posterior score $\nabla\log p_t(x) + g(x, t)$, with $g \approx \nabla_x \log p(y \mid x_t = x)$:

    $$\varepsilon' = \hat\varepsilon - \sigma_t\, g, \qquad
      x_0' = \frac{x - \sigma_t\varepsilon'}{\alpha_t} = \hat x_0 + \frac{\sigma_t^2}{\alpha_t}\, g
      \;\; \big(= \mathbb E[x_0 \mid x_t = x, y] \text{ when } g \text{ is exact}\big).$$

    It is a predictor, so every integrator (and the [`Denoiser`][diffuse_eqx.Denoiser]) runs it.
    The operator checks the measurement's shape when the sampler starts (a `ValueError` naming `y`).
    Where $\alpha_t = 0$ (`Flow` at $t = 1$) $x_t$ is independent of $x_0$: methods built on the Jacobian
    of $\hat x_0$ return the prior prediction there, so start such grids just below $t_{\max}$ (e.g.
    `dx.UniformTimer(n, t_max=0.999)`) if the first step matters.
    """

    predictor: eqx.AbstractVar[AbstractPredictor]
    operator: eqx.AbstractVar[AbstractOperator]
    y: eqx.AbstractVar[Measurement]

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

    def _x0_map(self, t, state):
        def x0(x):
            pred, new_state, nfe = self.predictor.evaluate(x, t, state)
            return pred.x0, (pred, new_state, nfe)

        return x0


class DPS(AbstractPosteriorGuidance):
    r"""Diffusion posterior sampling (Chung et al. 2023): the likelihood at the denoised estimate,
    $p(y \mid x_t) \approx p(y \mid x_0 = \hat x_0(x_t))$, differentiated through the network.

    Two variants of the guidance term $g$ (added to the prior score, see
    [`AbstractPosteriorGuidance`][diffuse_eqx.AbstractPosteriorGuidance]):

    - `likelihood="norm"` (the paper's step, Alg. 1 with $\zeta_i = \zeta/\|y - \mathcal A(\hat x_0)\|$, as in
      the official code): $g = -\zeta\,\nabla_x \|y - \mathcal A(\hat x_0(x))\|$;
    - `likelihood="gaussian"`: $g = \zeta\,\nabla_x \log \mathcal N\big(y; \mathcal A(\hat x_0(x)),
      \sigma_y^2 I\big) = \zeta\, J^\top J_{\mathcal A}^\top (y - \mathcal A(\hat x_0))/\sigma_y^2$
      (needs $\sigma_y > 0$; $\zeta = 1$ is the plain approximation above).

    The paper subtracts $\zeta_i \nabla\|\cdot\|$ from $x$ after each DDPM step, so its effect depends on
    the number of steps; here $g$ is a score term, and `scale` ($\zeta$) has the same effect on any grid.
    DPS is not exact even for Gaussian priors: its error is measured in the tests.

    Cost: ONE evaluation of the prior predictor and ONE vector-Jacobian product through it
    (`jax.vjp` of $x \mapsto \hat x_0(x)$, about two forward passes of compute and the activations'
    memory); the NFE counted is the predictor's (1 for a [`Predictor`][diffuse_eqx.Predictor]). Works
    with any operator, nonlinear ones included (through its `vjp`).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{chung2023diffusion,
          title={Diffusion Posterior Sampling for General Noisy Inverse Problems},
          author={Chung, Hyungjin and Kim, Jeongsol and Mccann, Michael T. and Klasky, Marc L.
                  and Ye, Jong Chul},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: any [`AbstractOperator`][diffuse_eqx.AbstractOperator].
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `scale`: $\zeta > 0$ (default 1).
    - `likelihood`: `"norm"` (default) or `"gaussian"`.
    """

    predictor: AbstractPredictor
    operator: AbstractOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    scale: Hyperparameter = 1.0
    likelihood: Literal["norm", "gaussian"] = eqx.field(default="norm", static=True)

    def __check_init__(self):
        check_predictor("DPS", self.predictor)
        check_operator("DPS", self.operator)
        check_matrix_y("DPS", self.operator, self.y)
        check_positive("DPS", "scale", self.scale)
        if self.likelihood not in ("norm", "gaussian"):
            raise ValueError(f"DPS likelihood must be 'norm' or 'gaussian'; got {self.likelihood!r}.")
        if self.likelihood == "gaussian":
            check_noisy("DPS", self.operator, "likelihood='gaussian' divides by sigma_y^2")

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and one VJP through it."""
        check_y("DPS", self.operator, self.y, x.shape)
        t = jnp.asarray(t)
        x0, pullback, (pred, state, nfe) = jax.vjp(self._x0_map(t, state), x, has_aux=True)
        r = self.operator.residual(x0, self.y)
        grad_r = self.operator.vjp(x0, r)  # J_A^T r = grad_{x0} of -|r|^2 / 2
        if self.likelihood == "norm":
            norm = jnp.sqrt(jnp.sum(jnp.real(r * jnp.conj(r))))
            u = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0) * grad_r
        else:
            sigma_y = jnp.asarray(self.operator.sigma_y)
            sigma_y = eqx.error_if(sigma_y, sigma_y <= 0, "DPS likelihood='gaussian' needs sigma_y > 0.")
            u = grad_r / sigma_y**2
        (g,) = pullback((self.scale * u).astype(x0.dtype))
        return _guided(self.path, t, pred, g), state, nfe


class PiGDM(AbstractPosteriorGuidance):
    r"""Pseudoinverse-guided diffusion ($\Pi$GDM, Song et al. 2023): $p(x_0 \mid x_t)$ approximated by
    $\mathcal N(\hat x_0(x_t), r_t^2 I)$, so $p(y \mid x_t) \approx \mathcal N(y; A\hat x_0, r_t^2 AA^\top +
    \sigma_y^2 I)$, and (with $J = \partial\hat x_0/\partial x$, the covariance's dependence on $x$
    neglected)

    $$g = \zeta\, J^\top A^\top \big(r_t^2 A A^\top + \sigma_y^2 I\big)^{-1}\big(y - A\hat x_0(x)\big),
      \qquad r_t^2 = \frac{v\,\sigma_t^2}{v\,\alpha_t^2 + \sigma_t^2}.$$

    $r_t^2$ is $\mathrm{Var}[x_0 \mid x_t]$ for data $\mathcal N(\mu, vI)$ (the paper's heuristic has
    $v = 1$), so with the exact denoiser of such a prior PiGDM samples the exact posterior; otherwise it
    is an approximation. $\sigma_y = 0$ is allowed (then $A^\top (AA^\top)^{-1} = A^+$).

    The solve uses the operator's structure: the SVD of a [`Matrix`][diffuse_eqx.Matrix], the diagonal
    $AA^\top$ of [`Inpainting`][diffuse_eqx.Inpainting] and [`Downsampling`][diffuse_eqx.Downsampling],
    conjugate gradients on $AA^\top$ for other linear operators. Cost: one predictor evaluation and one
    VJP through it (NFE: the predictor's).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{song2023pseudoinverse,
          title={Pseudoinverse-Guided Diffusion Models for Inverse Problems},
          author={Song, Jiaming and Vahdat, Arash and Mardani, Morteza and Kautz, Jan},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: an [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator].
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `data_var`: $v > 0$, the per-coordinate variance assumed for the data (default 1).
    - `scale`: $\zeta > 0$, a multiplier of the guidance (default 1, the posterior).
    - `cg_maxiter`, `cg_tol`: for the conjugate-gradient solve (other operators).
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    data_var: Hyperparameter = 1.0
    scale: Hyperparameter = 1.0
    cg_maxiter: int | None = eqx.field(default=None, static=True)
    cg_tol: float = eqx.field(default=1e-8, static=True)

    def __check_init__(self):
        check_predictor("PiGDM", self.predictor)
        check_operator("PiGDM", self.operator, linear=True)
        check_matrix_y("PiGDM", self.operator, self.y)
        check_positive("PiGDM", "data_var", self.data_var)
        check_positive("PiGDM", "scale", self.scale)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and one VJP through it."""
        check_y("PiGDM", self.operator, self.y, x.shape)
        t = jnp.asarray(t)
        x0, pullback, (pred, state, nfe) = jax.vjp(self._x0_map(t, state), x, has_aux=True)
        r2 = prior_variance(self.path, t, self.data_var)
        r = self.operator.residual(x0, self.y)
        u = gram_solve(self.operator, r2, r, self.cg_maxiter, self.cg_tol)
        (g,) = pullback((self.scale * u).astype(x0.dtype))
        return _guided(self.path, t, pred, g), state, nfe


class TMPD(AbstractPosteriorGuidance):
    r"""Tweedie moment projected diffusion (Boys et al. 2023): $p(x_0 \mid x_t)$ approximated by the
    Gaussian with Tweedie's first two moments, mean $\hat x_0(x)$ and covariance
    $C = \mathrm{Cov}[x_0 \mid x_t] = (\sigma_t^2/\alpha_t)\, J$, $J = \partial \hat x_0 / \partial x$, so

    $$g = J^\top A^\top \big(A C A^\top + \sigma_y^2 I\big)^{-1}\big(y - A \hat x_0(x)\big), \qquad
      x_0' = \hat x_0 + C^\top A^\top\big(A C A^\top + \sigma_y^2 I\big)^{-1}\big(y - A\hat x_0\big)$$

    (a Kalman update of $\hat x_0$). Exact for Gaussian priors (where $C$ does not depend on $x$): with
    the exact denoiser, an accurate probability-flow integrator samples the exact posterior.

    `solver="dense"` (default) forms the full Jacobian with `jax.jacrev` (one forward pass and $d$
    vectorised vector-Jacobian products: about $2d$ forward passes of compute, and the activations'
    memory) and $A$ as a dense matrix, for small $d$. `solver="cg"` never forms them: conjugate
    gradients on $A C A^\top + \sigma_y^2 I$ with one JVP per iteration (`jax.linearize`, the forward
    pass made once) and a final VJP (its transpose); it needs that matrix symmetric positive definite,
    true for an exact denoiser. Either way the NFE counted is the predictor's (1 for a
    [`Predictor`][diffuse_eqx.Predictor]), the derivative products are extra compute.

    ??? cite "Reference"
        ```bibtex
        @article{boys2023tweedie,
          title={Tweedie Moment Projected Diffusions for Inverse Problems},
          author={Boys, Benjamin and Girolami, Mark and Pidstrigach, Jakiw and Reich, Sebastian
                  and Mosca, Alan and Akyildiz, O. Deniz},
          journal={arXiv:2310.06721}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: an [`AbstractLinearOperator`][diffuse_eqx.AbstractLinearOperator].
    - `y`: the measurement, shaped like `operator.apply(x)`.
    - `solver`: `"dense"` (default) or `"cg"`.
    - `cg_maxiter`, `cg_tol`: for `solver="cg"`.
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    solver: Literal["dense", "cg"] = eqx.field(default="dense", static=True)
    cg_maxiter: int | None = eqx.field(default=None, static=True)
    cg_tol: float = eqx.field(default=1e-8, static=True)

    def __check_init__(self):
        check_predictor("TMPD", self.predictor)
        check_operator("TMPD", self.operator, linear=True)
        check_matrix_y("TMPD", self.operator, self.y)
        if self.solver not in ("dense", "cg"):
            raise ValueError(f"TMPD solver must be 'dense' or 'cg'; got {self.solver!r}.")

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and its Jacobian (dense) or products (CG)."""
        check_y("TMPD", self.operator, self.y, x.shape)
        t = jnp.asarray(t)
        a, s = self.path.alpha(t), self.path.sigma(t)
        c = jnp.where(a == 0, 0.0, s**2 / jnp.where(a == 0, 1.0, a))  # C = c J
        op, shape = self.operator, x.shape
        if self.solver == "dense":
            flat = self._x0_map(t, state)
            # Reverse mode: its solves follow the forward pass (forward mode would run the network's
            # batched LAPACK solves concurrently, which can deadlock jaxlib 0.10 on CPU).
            jac, (pred, state, nfe) = jax.jacrev(lambda v: _aux_ravel(flat(v.reshape(shape))), has_aux=True)(
                x.ravel()
            )
            r = op.residual(pred.x0, self.y)
            A = jax.jacfwd(lambda v: _to_real(op.apply(v.reshape(shape))).ravel())(jnp.zeros(x.size, x.dtype))
            cov = c * jac
            gram = A @ cov @ A.T
            gram = 0.5 * (gram + gram.T) + jnp.asarray(op.sigma_y) ** 2 * jnp.eye(A.shape[0], dtype=A.dtype)
            dx0 = (cov.T @ (A.T @ jnp.linalg.solve(gram, _to_real(r).ravel()))).reshape(shape)
        else:
            x0, jvp, (pred, state, nfe) = jax.linearize(self._x0_map(t, state), x, has_aux=True)
            vjp = jax.linear_transpose(jvp, x)
            r = op.residual(x0, self.y)
            z = _cg(
                lambda v: c * op.apply(jvp(op.adjoint(v).astype(x.dtype))) + jnp.asarray(op.sigma_y) ** 2 * v,
                r,
                self.cg_maxiter,
                self.cg_tol,
            )
            dx0 = c * vjp(op.adjoint(z).astype(x.dtype))[0]
        dx0 = jnp.where(a == 0, 0.0, dx0)  # C is unknown where alpha = 0: the prior prediction
        return _shifted(self.path, t, pred, dx0.astype(x.dtype)), state, nfe


def _aux_ravel(out):
    x0, aux = out
    return x0.ravel(), aux


class DDNM(AbstractPosteriorGuidance):
    r"""Denoising diffusion null-space model (Wang et al. 2023): the denoised estimate is corrected in
    the range of $A^\top$ and kept in its null space,

    $$x_0' = \hat x_0 + \lambda_t A^+\big(y - A\hat x_0\big), \qquad
      \varepsilon' = \frac{x - \alpha_t x_0'}{\sigma_t}$$

    (the noise consistent with $x$, so a [`DDIM`][diffuse_eqx.DDIM] step with `eta=1` is the paper's
    $x_{t-1} \sim q(x_{t-1} \mid x_t, x_0')$). Noiseless ($\sigma_y = 0$): $\lambda_t = 1$ and
    $A x_0' = y$ for any $y$ in the range of $A$, so the final data step returns a sample with
    $Ax = y$. Noisy ($\sigma_y > 0$): $\lambda_t = \min(1, \sigma_t/(\alpha_t\sigma_y))$, the range-space
    weight of DDNM$^+$ (the paper also lowers the noise that the DDPM step adds by as much, which is the
    integrator's business and is not done here).

    Meant for data-prediction steps ([`DDIM`][diffuse_eqx.DDIM], DPM-Solver++): it replaces $\hat x_0$
    rather than adding a score, so it is not the drift of a posterior probability-flow ODE. One
    predictor evaluation (NFE: the predictor's), no derivative.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{wang2023zeroshot,
          title={Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model},
          author={Wang, Yinhuai and Yu, Jiwen and Zhang, Jian},
          booktitle={ICLR}, year={2023}}
        ```

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `operator`: a linear operator with `pinv` ([`Inpainting`][diffuse_eqx.Inpainting],
      [`Downsampling`][diffuse_eqx.Downsampling], [`Blur`][diffuse_eqx.Blur], [`MRI`][diffuse_eqx.MRI],
      [`Matrix`][diffuse_eqx.Matrix]).
    - `y`: the measurement, shaped like `operator.apply(x)`.
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        check_predictor("DDNM", self.predictor)
        check_operator("DDNM", self.operator, linear=True, pinv=True)
        check_matrix_y("DDNM", self.operator, self.y)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The range-null-space corrected prediction (one predictor evaluation)."""
        check_y("DDNM", self.operator, self.y, x.shape)
        t = jnp.asarray(t)
        pred, state, nfe = self.predictor.evaluate(x, t, state)
        a, s = self.path.alpha(t), self.path.sigma(t)
        sigma_y = jnp.asarray(self.operator.sigma_y)
        noisy = sigma_y * a > 0
        lam = jnp.where(noisy, jnp.minimum(1.0, s / jnp.where(noisy, sigma_y * a, 1.0)), 1.0)
        correction = self.operator.pinv(self.operator.residual(pred.x0, self.y))
        x0 = (pred.x0 + lam * correction).astype(x.dtype)
        noise = jnp.where(s == 0, pred.noise, (x - a * x0) / jnp.where(s == 0, 1.0, s))
        return Prediction(x0=x0, noise=noise.astype(x.dtype)), state, nfe


class ExactPosteriorGuidance(AbstractPosteriorGuidance):
    r"""The oracle: the exact guidance $\nabla_x \log p(y \mid x_t = x)$ for a
    [`GaussianMixture`][diffuse_eqx.GaussianMixture] prior and a linear Gaussian measurement
    $y = A x_0 + \sigma_y\varepsilon$ ([`Matrix`][diffuse_eqx.Matrix], $\sigma_y > 0$).

    Given $x_0$ the measurement is independent of $x_t$, so $p(x_0 \mid x_t, y) \propto p(x_0 \mid y)\,
    p(x_t \mid x_0)$: the posterior denoiser is the denoiser of the posterior mixture
    $p(x_0 \mid y)$ (`prior.posterior(A, y, sigma_y)`), and by Tweedie's formula for both,

    $$\nabla_x \log p(y \mid x_t = x) = \frac{\alpha_t}{\sigma_t^2}\,\Delta(x, t), \qquad
      \Delta = \mathbb E[x_0 \mid x_t = x, y] - \mathbb E[x_0 \mid x_t = x],$$

    both in closed form. The prediction is the prior predictor's shifted by $\Delta$:
    $x_0' = \hat x_0 + \Delta$, $\varepsilon' = \hat\varepsilon - (\alpha_t/\sigma_t)\Delta$, the form of
    [`AbstractPosteriorGuidance`][diffuse_eqx.AbstractPosteriorGuidance] written so that it stays exact
    where $\alpha_t = 0$. With the prior's exact network, any exact probability-flow sampler then samples
    the exact posterior: the reference for the approximate methods. NFE: the predictor's.

    **Arguments:**

    - `predictor`: the prior [`AbstractPredictor`][diffuse_eqx.AbstractPredictor] (usually
      `dx.Predictor(prior.network(path), path)`).
    - `prior`: the [`GaussianMixture`][diffuse_eqx.GaussianMixture] prior.
    - `operator`: a [`Matrix`][diffuse_eqx.Matrix] with $\sigma_y > 0$.
    - `y`: the measurement, shape `(d_y,)`.
    """

    predictor: AbstractPredictor
    prior: GaussianMixture
    operator: Matrix
    y: Measurement
    posterior: GaussianMixture
    r"""The exact posterior mixture $p(x_0 \mid y)$ (`prior.posterior(A, y, sigma_y)`, computed once)."""

    def __init__(self, predictor: AbstractPredictor, prior: GaussianMixture, operator: Matrix, y: ArrayLike):
        check_predictor("ExactPosteriorGuidance", predictor)
        if not isinstance(prior, GaussianMixture):
            raise TypeError(
                f"ExactPosteriorGuidance prior must be a dx.GaussianMixture; got {type(prior).__name__}."
            )
        if not isinstance(operator, Matrix):
            raise TypeError(
                "ExactPosteriorGuidance needs a dx.Matrix operator (a linear Gaussian measurement); got "
                f"{type(operator).__name__}."
            )
        check_noisy("ExactPosteriorGuidance", operator, "the exact likelihood is Gaussian")
        y = jnp.asarray(y)
        check_matrix_y("ExactPosteriorGuidance", operator, y)
        if operator.A.shape[1] != prior.dim:
            raise ValueError(
                f"ExactPosteriorGuidance: A of shape {operator.A.shape} does not act on the prior's "
                f"dimension {prior.dim}."
            )
        self.predictor, self.prior, self.operator, self.y = predictor, prior, operator, y
        self.posterior = prior.posterior(operator.A, y, operator.sigma_y)

    def shift(self, x: Particle, t: Time) -> Particle:
        r"""$\Delta(x, t) = \mathbb E[x_0 \mid x_t = x, y] - \mathbb E[x_0 \mid x_t = x]$."""
        t = jnp.asarray(t)
        prior_x0 = self.prior.x0(self.path, x, t)
        # One mixture after the other: jaxlib 0.10's CPU LAPACK kernels can deadlock XLA's thread pool
        # when independent batched solves run concurrently (fixed upstream in jax 0.11).
        x, t = _after((x, t), prior_x0)
        return self.posterior.x0(self.path, x, t) - prior_x0

    def likelihood_score(self, x: Particle, t: Time) -> Particle:
        r"""$\nabla_x \log p(y \mid x_t = x)$, the difference of the posterior and prior scores."""
        t = jnp.asarray(t)
        prior_score = self.prior.score(self.path, x, t)
        x, t = _after((x, t), prior_score)
        return self.posterior.score(self.path, x, t) - prior_score

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        r"""The prior prediction shifted by the exact $\Delta$."""
        check_y("ExactPosteriorGuidance", self.operator, self.y, x.shape)
        t = jnp.asarray(t)
        pred, state, nfe = self.predictor.evaluate(x, t, state)
        shift = self.shift(*_after((x, t), pred))
        return _shifted(self.path, t, pred, shift.astype(x.dtype)), state, nfe


def _after(values, dependency):
    """`values` made to depend on `dependency` (adding `0 * sum(dependency)`, which XLA does not fold
    for floats), so that the computations that use them run after it. A non-finite dependency makes
    them non-finite, but the dependency is part of the same prediction anyway."""
    zero = 0 * sum(jnp.sum(leaf) for leaf in jax.tree.leaves(dependency))
    return jax.tree.map(lambda v: (v + zero).astype(v.dtype), values)
