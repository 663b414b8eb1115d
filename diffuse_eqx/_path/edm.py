import jax.numpy as jnp

from .._check import check_positive
from .._custom_types import PathValue, Times
from .base import AbstractPath


class EDM(AbstractPath):
    r"""Variance-exploding path in the EDM parameterization (Karras et al. 2022):

    $$x_t = x_0 + t\, \varepsilon, \qquad t \in [0, \sigma_{\max}],$$

    so $t$ *is* the noise level $\sigma$. $\alpha = 1$, $\sigma = t$, $\dot\alpha = 0$, $\dot\sigma = 1$,
    $\lambda = -\log t$, $t(\lambda) = e^{-\lambda}$. Reverse SDE: $f = 0$, $g^2 = 2t$.

    **Arguments:**

    - `sigma_max`: the largest noise level, $t_{\max}$ (default 80, as in EDM). Sampling starts from
      $\mathcal N(0, \sigma_{\max}^2 I)$, neglecting the data's spread against $\sigma_{\max}$.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{karras2022elucidating,
          title={Elucidating the Design Space of Diffusion-Based Generative Models},
          author={Karras, Tero and Aittala, Miika and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2022}}
        ```
    """

    sigma_max: float = 80.0

    def __check_init__(self):
        check_positive("EDM sigma_max", self.sigma_max)

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def alpha(self, t: Times) -> PathValue:
        return jnp.ones_like(jnp.asarray(t) + 0.0)

    def sigma(self, t: Times) -> PathValue:
        return jnp.asarray(t) + 0.0

    def d_alpha(self, t: Times) -> PathValue:
        return jnp.zeros_like(jnp.asarray(t) + 0.0)

    def d_sigma(self, t: Times) -> PathValue:
        return jnp.ones_like(jnp.asarray(t) + 0.0)

    def t_from_lambda(self, lam: Times) -> PathValue:
        return jnp.exp(-jnp.asarray(lam))


VE = EDM
r"""Alias of [`EDM`][diffuse_eqx.EDM]: the variance-exploding path $x_t = x_0 + t\,\varepsilon$."""
