"""Samples against the exact distribution, and the exact mixture network against autodiff."""

import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import MIXTURE_8, PATHS, SW_KEY

import diffuse_eqx as dx


N = 4000


GMM = MIXTURE_8


@pytest.fixture(scope="module")
def exact_and_floor():
    return helpers.exact_and_floor(N)


CASES = [
    ("flow", "velocity", dx.Euler()),
    ("flow", "velocity", dx.Heun()),
    ("flow", "velocity", dx.DDIM()),
    ("flow", "velocity", dx.DDIM(eta=1.0)),
    ("flow", "x0", dx.DPMpp2S()),
    ("flow", "x0", dx.DPMpp2M()),
    ("vp_cosine", "velocity", dx.DPMpp2M()),
    ("vp_linear", "noise", dx.DDIM(eta=1.0)),
]


@pytest.mark.parametrize("path_name, prediction, integrator", CASES, ids=lambda c: str(c))
def test_samples_within_twice_the_noise_floor(exact_and_floor, path_name, prediction, integrator):
    exact, floor = exact_and_floor
    path = PATHS[path_name]
    t_max = 0.999 if prediction == "noise" and float(path.alpha(1.0)) == 0 else path.t_max
    predictor = dx.Predictor(GMM.network(path, prediction), path, prediction)
    den = dx.Denoiser(predictor, integrator, dx.UniformTimer(50, t_max=t_max), x0_shape=(2,))
    out = den.generate(jr.PRNGKey(7), N)
    assert out.samples.shape == (N, 2)
    sw = float(dx.sliced_wasserstein(out.samples, exact, SW_KEY))
    assert sw <= 2 * floor, f"SW {sw:.4f} > 2 x noise floor {floor:.4f}"


@pytest.mark.parametrize("name", PATHS)
def test_exact_network_agrees_with_autodiff_of_the_marginal(name):
    path = PATHS[name]
    x = jnp.asarray([0.4, -1.3])
    for u in (0.05, 0.3, 0.7, 0.95):
        t = u * path.t_max
        marginal = GMM.marginal(path, t)
        score = jax.grad(marginal.log_prob)(x)
        a, s = path.alpha(t), path.sigma(t)
        np.testing.assert_allclose(GMM.score(path, x, t), score, rtol=1e-9)
        np.testing.assert_allclose(GMM.network(path, "score")(x, t), score, rtol=1e-9)
        # Tweedie: E[x0 | x] = (x + s^2 score) / a, E[eps | x] = -s score
        np.testing.assert_allclose(GMM.network(path, "x0")(x, t), (x + s**2 * score) / a, rtol=1e-9)
        np.testing.assert_allclose(GMM.network(path, "noise")(x, t), -s * score, rtol=1e-9)
        v = path.d_alpha(t) * (x + s**2 * score) / a - path.d_sigma(t) * s * score
        np.testing.assert_allclose(GMM.network(path, "velocity")(x, t), v, rtol=1e-9)


def test_marginal_log_prob_matches_scipy():
    from scipy.stats import multivariate_normal

    x = np.asarray([0.3, 2.1])
    ref = sum(
        w * multivariate_normal(m, c).pdf(x)
        for w, m, c in zip(np.asarray(GMM.weights), np.asarray(GMM.means), np.asarray(GMM.covs))
    )
    assert float(GMM.log_prob(jnp.asarray(x))) == pytest.approx(np.log(ref), rel=1e-12)


def test_sample_moments():
    xs = np.asarray(GMM.sample(jr.PRNGKey(3), 200_000))
    w, m, c = np.asarray(GMM.weights), np.asarray(GMM.means), np.asarray(GMM.covs)
    mean = w @ m
    cov = np.einsum("k,kij->ij", w, c + np.einsum("ki,kj->kij", m - mean, m - mean))
    se = np.sqrt(np.diag(cov) / xs.shape[0])
    assert np.all(np.abs(xs.mean(0) - mean) < 4 * se)
    centred = xs - mean
    products = centred[:, :, None] * centred[:, None, :]
    cov_se = products.std(0) / np.sqrt(xs.shape[0])
    assert np.all(np.abs(products.mean(0) - cov) < 4 * cov_se)


def test_posterior_is_prior_times_likelihood():
    """log p(x | y) - log p(x) - log N(y; A x, sigma_y^2 I) must not depend on x."""
    A = jnp.asarray([[1.0, 0.5]])
    y, sigma_y = jnp.asarray([1.2]), 0.4
    post = GMM.posterior(A, y, sigma_y)

    def log_lik(x):
        r = y - A @ x
        return -0.5 * jnp.sum(r**2) / sigma_y**2

    xs = jr.normal(jr.PRNGKey(0), (50, 2)) * 3
    diff = jax.vmap(lambda x: post.log_prob(x) - GMM.log_prob(x) - log_lik(x))(xs)
    np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-10)
    assert float(post.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_posterior_rejects_bad_input():
    A = jnp.ones((1, 2))
    with pytest.raises(ValueError, match="sigma_y"):
        GMM.posterior(A, jnp.ones(1), 0.0)
    with pytest.raises((ValueError, TypeError), match="dy|shape"):
        GMM.posterior(jnp.ones((1, 3)), jnp.ones(1), 0.5)


def ddim_moments(path, ts, eta, mean, cov):
    """Exact mean and covariance of DDIM's output on a Gaussian target: with the exact network the
    update x_s = M x_t + b + c z is affine, so the moments follow a closed-form recursion."""
    d = mean.shape[0]
    m, c_x = np.zeros(d), float(path.sigma(ts[0])) ** 2 * np.eye(d)
    for t, s in zip(ts[:-1], ts[1:]):
        a_t, s_t, a_s, s_s = (float(v) for v in (path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)))
        prec = np.linalg.inv(a_t**2 * cov + s_t**2 * np.eye(d))
        one_minus_r2 = 1 - ((a_t * s_s) / (a_s * s_t)) ** 2
        k = np.sqrt(1 - eta**2 * one_minus_r2)
        gain = a_s * a_t * cov @ prec + s_s * k * s_t * prec  # x0-hat and eps-hat are affine in x
        m = a_s * mean + gain @ (m - a_t * mean)
        c_x = gain @ c_x @ gain.T + eta**2 * s_s**2 * one_minus_r2 * np.eye(d)
    return m, c_x


@pytest.mark.parametrize("name", ["flow", "vp_cosine", "edm"])
def test_ddim_stochastic_moments_match_exact_recursion(name):
    """DDIM(eta=1) on a Gaussian target: the sample mean and covariance of 10 000 particles match
    the exact moments of the discrete sampler within 4 Monte Carlo standard errors, and those
    moments converge to the target's at first order as the grid is refined."""
    mean, cov = np.asarray([1.0, -2.0]), np.asarray([[0.5, 0.3], [0.3, 0.8]])
    gmm = dx.GaussianMixture(np.ones(1), mean[None], cov[None])
    path, n = PATHS[name], 10_000
    timer = dx.UniformTimer(40, t_max=path.t_max) if name != "edm" else dx.KarrasTimer(40)
    pred = dx.Predictor(gmm.network(path, "x0"), path, "x0")
    xs = np.asarray(dx.Denoiser(pred, dx.DDIM(eta=1.0), timer, (2,)).generate(jr.PRNGKey(1), n).samples)
    m, c = ddim_moments(path, np.asarray(timer.times()), 1.0, mean, cov)
    assert np.all(np.abs(xs.mean(0) - m) < 4 * np.sqrt(np.diag(c) / n)), (xs.mean(0), m)
    cov_se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)  # Var(S_ij) of a Gaussian
    assert np.all(np.abs(np.cov(xs.T) - c) < 4 * cov_se), (np.cov(xs.T), c)
    if name == "flow":  # pure-noise start: the only error is the discretisation, O(h)
        errors = [
            np.abs(ddim_moments(path, np.linspace(1, 0, k + 1), 1.0, mean, cov)[1] - cov).max()
            for k in (100, 200, 400)
        ]
        assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3, errors
