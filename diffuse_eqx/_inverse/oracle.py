import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree

from .._custom_types import NFE, Particle, Time
from .._predictor import AbstractPredictor, Prediction
from .._targets import GaussianMixture
from .._workaround import run_after
from .base import AbstractPosteriorGuidance, check_noisy, check_y_now, shifted
from .operators import Matrix, Measurement


class ExactPosteriorGuidance(AbstractPosteriorGuidance):
    r"""The oracle: the exact guidance $\nabla_x \log p(y \mid x_t = x)$ for a
    [`GaussianMixture`][diffuse_eqx.GaussianMixture] prior and a linear Gaussian measurement
    $y = A x_0 + \sigma_y\varepsilon$ ([`Matrix`][diffuse_eqx.Matrix], $\sigma_y > 0$).

    $$\nabla_x \log p(y \mid x_t = x) = \frac{\alpha_t}{\sigma_t^2}\,\Delta(x, t), \qquad
      \Delta = \mathbb E[x_0 \mid x_t = x, y] - \mathbb E[x_0 \mid x_t = x],$$

    both denoisers in closed form (the posterior's is that of the mixture
    `prior.posterior(A, y, sigma_y)`). The prediction is shifted by $\Delta$: $x_0' = \hat x_0 + \Delta$,
    $\varepsilon' = \hat\varepsilon - (\alpha_t/\sigma_t)\Delta$. With the prior's exact network, any
    exact probability-flow sampler samples the exact posterior. NFE: the predictor's. Derivation:
    [Concepts → The exact guidance][exact-guidance].

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
        y = jnp.asarray(y)
        check_noisy("ExactPosteriorGuidance", operator, "the exact likelihood is Gaussian")
        check_y_now("ExactPosteriorGuidance", operator, y)
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
        x, t = run_after((x, t), prior_x0)  # one mixture after the other: see run_after
        return self.posterior.x0(self.path, x, t) - prior_x0

    def likelihood_score(self, x: Particle, t: Time) -> Particle:
        r"""$\nabla_x \log p(y \mid x_t = x)$, the difference of the posterior and prior scores."""
        t = jnp.asarray(t)
        prior_score = self.prior.score(self.path, x, t)
        x, t = run_after((x, t), prior_score)
        return self.posterior.score(self.path, x, t) - prior_score

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        r"""The prior prediction shifted by the exact $\Delta$."""
        t = jnp.asarray(t)
        pred, state, nfe = self.predictor.evaluate(x, t, state)
        shift = self.shift(*run_after((x, t), pred))
        return shifted(self.path, t, pred, shift.astype(x.dtype)), state, nfe
