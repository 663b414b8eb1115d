from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import PyTree

from .._check import check_int, check_positive
from .._custom_types import NFE, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .base import AbstractPosteriorGuidance, shifted, x0_map
from .operators import AbstractLinearOperator, Measurement, cg_tolerance, scaled_solve


class TMPD(AbstractPosteriorGuidance):
    r"""Tweedie moment projected diffusion (Boys et al. 2023): $p(x_0 \mid x_t)$ approximated by the
    Gaussian with Tweedie's first two moments, mean $\hat x_0(x)$ and covariance
    $C = \mathrm{Cov}[x_0 \mid x_t] = (\sigma_t^2/\alpha_t)\, J$, $J = \partial \hat x_0 / \partial x$, so

    $$g = J^\top A^\top \big(A C A^\top + \sigma_y^2 I\big)^{-1}\big(y - A \hat x_0(x)\big), \qquad
      x_0' = \hat x_0 + C^\top A^\top\big(A C A^\top + \sigma_y^2 I\big)^{-1}\big(y - A\hat x_0\big)$$

    (a Kalman update of $\hat x_0$). Exact for Gaussian priors (where $C$ does not depend on $x$). The
    solve is done in the real signal space, as the symmetric system $(GCG + \sigma_y^2 G)\,v = b$,
    $G = A^\top A$, $b = A^\top(y - A\hat x_0)$. `solver="dense"` forms the Jacobian (about $2d$ forward
    passes; for small $d$); `solver="cg"` runs conjugate gradients with one JVP per iteration and needs
    $C$ symmetric positive semidefinite. The NFE counted is the predictor's; the derivative products
    are extra compute. Details: [Concepts → TMPD's solve][tmpd-solve].

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
    - `cg_maxiter`, `cg_tol`: for `solver="cg"` (`lx.CG(rtol=cg_tol, atol=cg_tol,
      max_steps=cg_maxiter)` on the system scaled to $\max_i |b_i| \approx 1$; `cg_tol` defaults to
      $\sqrt\epsilon$ of the dtype).
    """

    predictor: AbstractPredictor
    operator: AbstractLinearOperator
    y: Measurement = eqx.field(converter=jnp.asarray)
    solver: Literal["dense", "cg"] = eqx.field(default="dense", static=True)
    cg_maxiter: int | None = eqx.field(default=None, static=True)
    cg_tol: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.solver not in ("dense", "cg"):
            raise ValueError(f"TMPD solver must be 'dense' or 'cg'; got {self.solver!r}.")
        check_positive("TMPD cg_tol", self.cg_tol)
        if self.cg_maxiter is not None:
            check_int("TMPD cg_maxiter", self.cg_maxiter)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Guided prediction: one predictor evaluation and its Jacobian (dense) or products (CG)."""
        t = jnp.asarray(t)
        a, s = self.path.alpha(t), self.path.sigma(t)
        c = jnp.where(a == 0, 0.0, s**2 / jnp.where(a == 0, 1.0, a))  # C = c J
        op, shape, s2 = self.operator, x.shape, jnp.asarray(self.operator.sigma_y) ** 2

        def gram(v):  # G v = A^T A v, real
            return op.adjoint(op.apply(v)).astype(x.dtype)

        if self.solver == "dense":
            flat = x0_map(self.predictor, t, state)
            # Reverse mode: the network's solves run in the forward pass, before the Jacobian's; forward
            # mode would run them concurrently, which can deadlock jaxlib 0.10 on CPU (see run_after in
            # diffuse_eqx/_workaround.py).
            jac, (pred, state, nfe) = jax.jacrev(lambda v: _aux_ravel(flat(v.reshape(shape))), has_aux=True)(
                x.ravel()
            )
            b = op.adjoint(op.residual(pred.x0, self.y)).ravel()
            G = jax.vmap(lambda e: gram(e.reshape(shape)).ravel())(jnp.eye(x.size, dtype=x.dtype))
            cov = c * jac
            system = G @ (0.5 * (cov + cov.T)) @ G + s2 * G
            system = lx.MatrixLinearOperator(0.5 * (system + system.T), lx.symmetric_tag)
            v = lx.linear_solve(system, b, lx.SVD()).value
            dx0 = (cov.T @ (G @ v)).reshape(shape)
        else:
            x0, jvp, (pred, state, nfe) = jax.linearize(x0_map(self.predictor, t, state), x, has_aux=True)
            vjp = jax.linear_transpose(jvp, x)
            b = op.adjoint(op.residual(x0, self.y)).astype(x.dtype)

            def mv(v):  # (G C G + sigma_y^2 G) v
                return gram(c * jvp(gram(v)) + s2 * v)

            tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
            system = lx.FunctionLinearOperator(mv, jax.eval_shape(lambda: b), tags)
            tol = cg_tolerance(x.dtype) if self.cg_tol is None else self.cg_tol
            v = scaled_solve(system, b, lx.CG(rtol=tol, atol=tol, max_steps=self.cg_maxiter))
            dx0 = c * vjp(gram(v))[0]
        dx0 = jnp.where(a == 0, 0.0, dx0)  # C is unknown where alpha = 0: the prior prediction
        return shifted(self.path, t, pred, dx0.astype(x.dtype)), state, nfe


def _aux_ravel(out):
    x0, aux = out
    return x0.ravel(), aux
