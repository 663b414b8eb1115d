from collections.abc import Callable

import jax

from ..._custom_types import Hyperparameter
from .base import AbstractOperator, Measurement, Signal


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
    sigma_y: Hyperparameter

    @property
    def differentiable(self) -> bool:
        """The pixel operator's (the decoder is differentiated through)."""
        return self.op.differentiable

    def __init__(self, op: AbstractOperator, decoder: Callable, sigma_y: Hyperparameter | None = None):
        self.op, self.decoder = op, decoder
        self.sigma_y = op.sigma_y if sigma_y is None else sigma_y

    @property
    def signal_shape(self) -> None:
        """`None`: the latent shape is the decoder's business."""
        return None

    def y_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        x = jax.eval_shape(self.decoder, jax.ShapeDtypeStruct(x_shape, float))
        return self.op.y_shape(x.shape)

    def apply(self, x: Signal) -> Measurement:
        return self.op.apply(self.decoder(x))
