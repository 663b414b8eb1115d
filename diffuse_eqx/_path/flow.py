import jax
import jax.numpy as jnp

from .._custom_types import PathValue, Times
from .base import AbstractPath


class Flow(AbstractPath):
    r"""Rectified-flow / flow-matching path (FLUX, SD3):

    $$x_t = (1 - t)\, x_0 + t\, \varepsilon, \qquad t \in [0, 1].$$

    $\alpha = 1 - t$, $\sigma = t$, $\dot\alpha = -1$, $\dot\sigma = 1$,
    $\lambda = \log\frac{1-t}{t}$, $t(\lambda) = 1/(1 + e^{\lambda})$. Reverse SDE:
    $f = -1/(1-t)$, $g^2 = 2t/(1-t)$ (singular at $t = 1$, where $\alpha = 0$).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{lipman2023flow,
          title={Flow Matching for Generative Modeling},
          author={Lipman, Yaron and Chen, Ricky T. Q. and Ben-Hamu, Heli and Nickel, Maximilian
                  and Le, Matt},
          booktitle={ICLR}, year={2023}}
        @inproceedings{liu2023flow,
          title={Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow},
          author={Liu, Xingchao and Gong, Chengyue and Liu, Qiang},
          booktitle={ICLR}, year={2023}}
        ```
    """

    @property
    def t_max(self) -> float:
        return 1.0

    def alpha(self, t: Times) -> PathValue:
        return 1.0 - jnp.asarray(t)

    def sigma(self, t: Times) -> PathValue:
        return jnp.asarray(t) + 0.0

    def d_alpha(self, t: Times) -> PathValue:
        return jnp.full_like(jnp.asarray(t) + 0.0, -1.0)

    def d_sigma(self, t: Times) -> PathValue:
        return jnp.ones_like(jnp.asarray(t) + 0.0)

    def t_from_lambda(self, lam: Times) -> PathValue:
        return jax.nn.sigmoid(-jnp.asarray(lam))
