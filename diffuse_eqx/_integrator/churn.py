import math

import equinox as eqx
import jax.numpy as jnp

from .._check import check_nonnegative, check_positive, concrete
from .._custom_types import Grid, Hyperparameter, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, noise


class _GridSize(eqx.Module):
    r"""The grid's number of steps, kept as static data in the integrator state: `vmap` over
    particles then leaves gamma and $\hat t$ one scalar for all of them, as the grid times are
    (a traced per-particle copy makes XLA round them differently with the batch size)."""

    n_steps: int = eqx.field(static=True)


class Churn(AbstractIntegrator):
    r"""Stochastic churn (Karras et al. 2022, Alg. 2) around any integrator: before each step, raise
    the time from $t$ to $\hat t$ by adding fresh noise, then let the inner integrator step from
    $\hat t$ to $t_{\rm next}$ (so the network is evaluated at $\hat t$):

    $$\gamma = \begin{cases}\min\big(S_{\rm churn}/N,\ \sqrt2 - 1\big) & S_{t\min} \le t \le S_{t\max}\\
      0 & \text{otherwise}\end{cases}, \qquad \hat t = \min\big(t\,(1 + \gamma),\ t_{\max}\big),$$

    $$\hat x = \frac{\alpha_{\hat t}}{\alpha_t}\, x_t
      + \sqrt{\sigma_{\hat t}^2 - \Big(\frac{\alpha_{\hat t}}{\alpha_t}\Big)^2 \sigma_t^2}\;
      S_{\rm noise}\, z, \qquad z\sim\mathcal N(0, I),$$

    with $N$ the number of steps of the grid. With $S_{\rm noise} = 1$ this is the path's forward
    kernel from $t$ to $\hat t$: if $x_t \sim p_t$ then $\hat x \sim p_{\hat t}$ exactly, for any path
    ([Concepts → Stochastic churn][stochastic-churn]). No noise is added where $\hat t = t$ (outside
    $[S_{t\min}, S_{t\max}]$, or at $t = t_{\max}$). `order` and `nfe_per_step` are the inner
    integrator's.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{karras2022elucidating,
          title={Elucidating the Design Space of Diffusion-Based Generative Models},
          author={Karras, Tero and Aittala, Miika and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2022}}
        ```

    **Arguments:**

    - `integrator`: the inner [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator] (EDM uses
      [`Heun`][diffuse_eqx.Heun]).
    - `s_churn`: $S_{\rm churn} \ge 0$, the total amount of churn (0: no churn).
    - `s_tmin`, `s_tmax`: the times (the path's $t$; for `EDM` the noise level) between which churn
      is applied (defaults 0 and $\infty$).
    - `s_noise`: $S_{\rm noise} > 0$, scales the added noise (default 1; EDM's 1.003 leaves
      $p_{\hat t}$, as does any value other than 1).
    """

    integrator: AbstractIntegrator
    s_churn: Hyperparameter
    s_tmin: Hyperparameter = 0.0
    s_tmax: Hyperparameter = math.inf
    s_noise: Hyperparameter = 1.0

    def __check_init__(self):
        check_nonnegative("Churn s_churn", self.s_churn)
        if concrete(self.s_tmin, self.s_tmax) and not self.s_tmin <= self.s_tmax:
            raise ValueError(f"Churn needs s_tmin <= s_tmax; got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}.")
        check_positive("Churn s_noise", self.s_noise)

    @property
    def order(self) -> int:
        """The inner integrator's order."""
        return self.integrator.order

    @property
    def nfe_per_step(self) -> int:
        """The inner integrator's evaluations per step."""
        return self.integrator.nfe_per_step

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        state = self.integrator.init(predictor, x, key, ts)
        return state.replace(memory=(state.memory, _GridSize(ts.shape[0] - 1)))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path, t = state.position, predictor.path, jnp.asarray(t)
        inner_memory, grid_size = state.memory
        z, state = noise(state)
        gamma_churn = jnp.minimum(self.s_churn / grid_size.n_steps, math.sqrt(2) - 1)
        gamma = jnp.where((self.s_tmin <= t) & (t <= self.s_tmax), gamma_churn, 0.0).astype(t.dtype)
        t_hat = jnp.minimum(t * (1 + gamma), path.t_max)
        churned = t_hat > t
        ratio = jnp.where(churned, path.alpha(t_hat) / path.alpha(t), 1.0)  # alpha_t > 0 where churned
        var = jnp.where(churned, path.sigma(t_hat) ** 2 - (ratio * path.sigma(t)) ** 2, 0.0)
        x_hat = (ratio * x + jnp.sqrt(jnp.maximum(var, 0.0)) * self.s_noise * z).astype(x.dtype)
        state = state.replace(position=x_hat, memory=inner_memory)
        state = self.integrator.step(predictor, state, t_hat, t_next)
        return state.replace(memory=(state.memory, grid_size))
