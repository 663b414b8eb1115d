import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from ..._custom_types import Hyperparameter
from .base import AbstractLinearOperator


class Matrix(AbstractLinearOperator):
    r"""A dense linear measurement $y = A x$ of a vector $x \in \mathbb R^{d_x}$, $y \in \mathbb R^{d_y}$,
    with its thin SVD (`svd`), and `pinv` and the normal equations solved by lineax's SVD solver
    (minimum-norm least squares: the pseudo-inverse).

    **Arguments:**

    - `A`: the matrix, shape `(d_y, d_x)`.
    - `sigma_y`: noise standard deviation (default 0).
    """

    A: Float[Array, "d_y d_x"] = eqx.field(converter=jnp.asarray)
    sigma_y: Hyperparameter = 0.0

    def __check_init__(self):
        if self.A.ndim != 2 or not jnp.issubdtype(self.A.dtype, jnp.floating):
            raise ValueError(
                f"Matrix A must be a real floating-point matrix of shape (d_y, d_x); got shape "
                f"{self.A.shape} and dtype {self.A.dtype}."
            )

    @property
    def signal_shape(self) -> tuple[int]:
        """`(d_x,)`."""
        return self.A.shape[1:]

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
        """$A^+ y$: the minimum-norm least-squares solution (`lx.SVD`)."""
        return lx.linear_solve(lx.MatrixLinearOperator(self.A), y, lx.SVD()).value

    def normal(self, c: Hyperparameter, x: Float[Array, " d_x"]) -> tuple[lx.MatrixLinearOperator, lx.SVD]:
        r"""The dense $cA^\top A + \sigma_y^2 I$, solved by its SVD (`lx.SVD`)."""
        gram = c * self.A.T @ self.A + jnp.asarray(self.sigma_y) ** 2 * jnp.eye(self.A.shape[1])
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return lx.MatrixLinearOperator(gram.astype(x.dtype), tags), lx.SVD()

    def svd(self) -> tuple[Float[Array, "d_y r"], Float[Array, " r"], Float[Array, "r d_x"]]:
        """The thin SVD `(U, S, Vt)`, $A = U\\,\\mathrm{diag}(S)\\,V^\\top$, $r = \\min(d_y, d_x)$."""
        return jnp.linalg.svd(self.A, full_matrices=False)
