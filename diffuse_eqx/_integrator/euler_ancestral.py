from typing import ClassVar

import jax.numpy as jnp
import jax.random as jr

from .._check import concrete
from .._custom_types import Grid, Key, Particle, Time
from .._path import Flow
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate


class EulerAncestral(AbstractIntegrator):
    r"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`): a deterministic Euler step
    down to a noise level below the target, then fresh noise back up to it with the exact forward
    kernel of the path, for any path.

    **Any path.** In the scaled variable $y = x/\alpha$ the path is variance exploding,
    $y_t = x_0 + \tilde\sigma_t\varepsilon$ with $\tilde\sigma = \sigma/\alpha$, and the ancestral split
    of a step from $t$ to $s$ is

    $$\tilde\sigma_{\rm up} = \min\Big(\tilde\sigma_s,\ \eta\,\tilde\sigma_s
      \sqrt{1 - \tilde\sigma_s^2/\tilde\sigma_t^2}\Big), \qquad
      \tilde\sigma_{\rm down} = \sqrt{\tilde\sigma_s^2 - \tilde\sigma_{\rm up}^2},$$

    $$x_s = \alpha_s\big(\hat x_0 + \tilde\sigma_{\rm down}\,\hat\varepsilon + \tilde\sigma_{\rm up}\, z\big),
      \qquad \hat\varepsilon = \frac{x_t/\alpha_t - \hat x_0}{\tilde\sigma_t},\quad z\sim\mathcal N(0, I),$$

    an Euler step in $\tilde\sigma$ to $\tilde\sigma_{\rm down}$, then noise of variance
    $\tilde\sigma_{\rm up}^2$, rescaled by $\alpha_s$. For $\eta \le 1$ this is
    [`DDIM`][diffuse_eqx.DDIM] with the same $\eta$.

    **`Flow`** uses the rectified-flow split (k-diffusion / ComfyUI `sample_euler_ancestral_RF`),
    which keeps $\alpha + \sigma = 1$: an Euler step of the flow ODE to
    $t_{\rm down} = s\,\big(1 + (s/t - 1)\,\eta\big)$ (clipped at 0), then the forward kernel from
    $t_{\rm down}$ up to $s$,

    $$x_{\rm down} = \frac{t_{\rm down}}{t} x_t + \Big(1 - \frac{t_{\rm down}}{t}\Big)\hat x_0, \qquad
      x_s = \frac{1 - s}{1 - t_{\rm down}}\, x_{\rm down}
      + \sqrt{s^2 - \Big(\frac{(1 - s)\, t_{\rm down}}{1 - t_{\rm down}}\Big)^2}\; z .$$

    Both splits keep the noise level exact: with $\hat x_0$ replaced by the true $x_0$, $x_s$ has the
    law of $\alpha_s x_0 + \sigma_s\varepsilon$. $\eta = 0$ is the deterministic
    DDIM ($\eta = 0$), i.e. Euler in $\tilde\sigma$; on `Flow` and `EDM` that is
    [`Euler`][diffuse_eqx.Euler] itself. The final step to $\sigma = 0$ returns $\hat x_0$. One
    evaluation per step; first order (weakly, for $\eta > 0$).

    **Arguments:**

    - `eta`: the ancestral noise $\eta \ge 0$ (default 1; 0 is deterministic). Values above 1 are
      allowed and clipped as in k-diffusion ($\tilde\sigma_{\rm up} \le \tilde\sigma_s$,
      $t_{\rm down} \ge 0$).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{ho2020denoising,
          title={Denoising Diffusion Probabilistic Models},
          author={Ho, Jonathan and Jain, Ajay and Abbeel, Pieter},
          booktitle={NeurIPS}, year={2020}}
        @inproceedings{karras2022elucidating,
          title={Elucidating the Design Space of Diffusion-Based Generative Models},
          author={Karras, Tero and Aittala, Miika and Aila, Timo and Laine, Samuli},
          booktitle={NeurIPS}, year={2022}}
        ```
    """

    eta: float = 1.0
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1

    def __check_init__(self):
        if concrete(self.eta) and not self.eta >= 0:
            raise ValueError(f"EulerAncestral eta must be >= 0; got eta={self.eta}.")

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        return IntegratorState(x, key)

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path, eta = state.position, predictor.path, self.eta
        pred, state = evaluate(predictor, state, x, t)
        key, sub = jr.split(state.key)
        z = jr.normal(sub, x.shape, x.dtype)
        if isinstance(path, Flow):
            t, s = jnp.asarray(t), jnp.asarray(t_next)
            t_down = jnp.maximum(s * (1 + (s / t - 1) * eta), 0.0)
            x_down = (t_down / t) * x + (1 - t_down / t) * pred.x0
            alpha_ratio = (1 - s) / (1 - t_down)
            x_next = alpha_ratio * x_down + jnp.sqrt(jnp.maximum(s**2 - (alpha_ratio * t_down) ** 2, 0.0)) * z
        else:
            a_t, s_t = path.alpha(t), path.sigma(t)
            a_s, s_s = path.alpha(t_next), path.sigma(t_next)
            ratio2 = ((a_t * s_s) / (a_s * s_t)) ** 2  # (sigma~_s / sigma~_t)^2, 0 where alpha_t = 0
            up = jnp.minimum(1.0, eta * jnp.sqrt(1 - ratio2))  # sigma~_up / sigma~_s
            down = jnp.sqrt(1 - up**2)  # sigma~_down / sigma~_s
            x_next = a_s * pred.x0 + s_s * (down * pred.noise + up * z)
        return state.replace(position=x_next.astype(x.dtype), key=key)
