import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import PyTree

from .._check import check_int, check_positive
from .._custom_types import NFE, Hyperparameter, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractPosteriorGuidance, guided, prior_variance, x0_map
from .operators import AbstractLinearOperator, Measurement, cg_tolerance


class PiGDM(AbstractPosteriorGuidance):
    r"""Pseudoinverse-guided diffusion ($\Pi$GDM, Song et al. 2023): $p(x_0 \mid x_t)$ approximated by
    $\mathcal N(\hat x_0(x_t), r_t^2 I)$, so $p(y \mid x_t) \approx \mathcal N(y; A\hat x_0, r_t^2 AA^\top +
    \sigma_y^2 I)$, and (with $J = \partial\hat x_0/\partial x$, the covariance's dependence on $x$
    neglected)

    $$g = \zeta\, J^\top A^\top \big(r_t^2 A A^\top + \sigma_y^2 I\big)^{-1}\big(y - A\hat x_0(x)\big),
      \qquad r_t^2 = \frac{v\,\sigma_t^2}{v\,\alpha_t^2 + \sigma_t^2}.$$

    Exact for data $\mathcal N(\mu, vI)$ with its exact denoiser ($r_t^2$ is then
    $\mathrm{Var}[x_0 \mid x_t]$), an approximation otherwise; $\sigma_y = 0$ is allowed. The solve is
    the operator's [`gram_solve`][diffuse_eqx.AbstractLinearOperator.gram_solve]. Cost: one predictor
    evaluation and one VJP through it (NFE: the predictor's). Details:
    [Concepts → ΠGDM's variance][pigdm-variance].

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
    - `cg_maxiter`, `cg_tol`: shorthand for `solver=lx.CG(rtol=cg_tol, atol=cg_tol,
      max_steps=cg_maxiter)` (`cg_tol` defaults to $\sqrt\epsilon$ of the dtype); `None` (default)
      for both keeps the operator's solver.
    - `solver`: a lineax solver for the normal equations instead of the operator's (default `None`).
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    data_var: Hyperparameter = 1.0
    scale: Hyperparameter = 1.0
    cg_maxiter: int | None = eqx.field(default=None, static=True)
    cg_tol: float | None = eqx.field(default=None, static=True)
    solver: lx.AbstractLinearSolver | None = None

    def __check_init__(self):
        check_positive("PiGDM data_var", self.data_var)
        check_positive("PiGDM scale", self.scale)
        check_positive("PiGDM cg_tol", self.cg_tol)
        if self.cg_maxiter is not None:
            check_int("PiGDM cg_maxiter", self.cg_maxiter)
        if self.solver is not None and not (self.cg_maxiter is None and self.cg_tol is None):
            raise ValueError("PiGDM: pass either solver or cg_maxiter / cg_tol (a CG solver), not both.")

    def _solver(self, dtype) -> lx.AbstractLinearSolver | None:
        if self.cg_maxiter is None and self.cg_tol is None:
            return self.solver
        tol = cg_tolerance(dtype) if self.cg_tol is None else self.cg_tol
        return lx.CG(rtol=tol, atol=tol, max_steps=self.cg_maxiter)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and one VJP through it."""
        t = jnp.asarray(t)
        x0, pullback, (pred, state, nfe) = jax.vjp(x0_map(self.predictor, t, state), x, has_aux=True)
        r2 = prior_variance(self.path, t, self.data_var)
        r = self.operator.residual(x0, self.y)
        u = self.operator.gram_solve(r2, r, self._solver(x.dtype))
        (g,) = pullback((self.scale * u).astype(x0.dtype))
        return guided(self.path, t, pred, g), state, nfe
