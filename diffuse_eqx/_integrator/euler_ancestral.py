from .._check import check_nonnegative, check_traced, finite_nonnegative
from .._custom_types import Hyperparameter, Time
from .._predictor import AbstractPredictor
from .base import AbstractSingleStep, IntegratorState, evaluate, noise
from .ddim import ancestral_step


class EulerAncestral(AbstractSingleStep):
    r"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`), for any path: an Euler step in
    $\tilde\sigma = \sigma/\alpha$ down to $\tilde\sigma_{\rm down}$, then fresh noise back up to
    $\tilde\sigma_s$, rescaled by $\alpha_s$:

    $$\tilde\sigma_{\rm up} = \min\Big(\tilde\sigma_s,\ \eta\,\tilde\sigma_s
      \sqrt{1 - \tilde\sigma_s^2/\tilde\sigma_t^2}\Big), \qquad
      \tilde\sigma_{\rm down} = \sqrt{\tilde\sigma_s^2 - \tilde\sigma_{\rm up}^2},$$

    $$x_s = \alpha_s\big(\hat x_0 + \tilde\sigma_{\rm down}\,\hat\varepsilon + \tilde\sigma_{\rm up}\, z\big),
      \qquad \hat\varepsilon = \frac{x_t/\alpha_t - \hat x_0}{\tilde\sigma_t},\quad z\sim\mathcal N(0, I).$$

    The noise level is exact (with the true $x_0$, $x_s \sim \alpha_s x_0 + \sigma_s\varepsilon$). For
    $\eta \le 1$ this is [`DDIM`][diffuse_eqx.DDIM] with the same $\eta$ (one `ancestral_step`);
    $\eta = 0$ is Euler in $\tilde\sigma$, [`Euler`][diffuse_eqx.Euler] itself on `Flow` and `EDM`. The
    rectified-flow split is [`EulerAncestralRF`][diffuse_eqx.EulerAncestralRF]. The final step to
    $\sigma = 0$ returns $\hat x_0$. One evaluation per step; first order (weakly, for $\eta > 0$).
    Derivation: [Concepts → Ancestral sampling][ancestral-sampling].

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

    **Arguments:**

    - `eta`: the ancestral noise $\eta \ge 0$ (default 1; 0 is deterministic). Values above 1 are
      allowed and clipped as in k-diffusion ($\tilde\sigma_{\rm up} \le \tilde\sigma_s$).
    """

    eta: Hyperparameter = 1.0

    def __check_init__(self):
        check_nonnegative("EulerAncestral eta", self.eta)

    @property
    def order(self) -> int:
        return 1

    @property
    def nfe_per_step(self) -> int:
        return 1

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        pred, state = evaluate(predictor, state, state.position, t)
        z, state = noise(state)
        z = check_traced(z, "EulerAncestral eta", self.eta, finite_nonnegative, ">= 0 and finite")
        return state.replace(position=ancestral_step(predictor.path, pred, t, t_next, self.eta, z))
