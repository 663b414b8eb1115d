"""Resampling utilities and the particle (SMC) posterior samplers, against exact posteriors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import diagonal_gaussian

import diffuse_eqx as dx


# ------------------------------------------------------------------------------------------------------
# ESS and resampling
# ------------------------------------------------------------------------------------------------------


def test_ess_formula_and_limits():
    rng = np.random.default_rng(0)
    w = rng.uniform(size=50) ** 3
    expected = w.sum() ** 2 / (w**2).sum()
    # a huge common offset must not matter (logsumexp, no overflow)
    for offset in (0.0, 1e4, -1e4):
        np.testing.assert_allclose(dx.ess(jnp.log(w) + offset), expected, rtol=1e-10)
    assert float(dx.ess(jnp.zeros(17))) == pytest.approx(17.0, rel=1e-12)
    one_hot = jnp.full(9, -jnp.inf).at[4].set(2.0)
    assert float(dx.ess(one_hot)) == pytest.approx(1.0, rel=1e-12)
    assert float(dx.ess(jnp.full(5, -jnp.inf))) == 0.0
    assert np.isnan(float(dx.ess(jnp.array([0.0, jnp.nan]))))


@pytest.mark.parametrize("n_out", [10, 7])
def test_systematic_resampling_is_unbiased(n_out):
    """E[count_i] = n w_i, and each count is floor(n w_i) or ceil(n w_i). The mean count over R draws
    has standard error sqrt(f (1 - f) / R), f = frac(n w_i), the count being floor + Bernoulli(f)."""
    w = np.array([0.31, 0.0, 0.05, 0.22, 0.17, 1e-3, 0.249])
    w = w / w.sum()
    log_w = jnp.log(jnp.asarray(w)) + 3.7  # unnormalised on purpose
    R = 4000
    idx = jax.vmap(lambda k: dx.systematic_resample(k, log_w, n_out))(jr.split(jr.PRNGKey(0), R))
    counts = np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=w.size))(idx))
    nw = n_out * w
    assert (counts >= np.floor(nw - 1e-9)).all() and (counts <= np.ceil(nw + 1e-9)).all()
    assert (counts[:, 1] == 0).all()  # a zero weight is never drawn
    frac = nw - np.floor(nw)
    se = np.sqrt(frac * (1 - frac) / R)
    np.testing.assert_array_less(np.abs(counts.mean(0) - nw), 5 * se + 1e-9)


def test_collapsed_ensemble_resamples_the_one_particle():
    log_w = jnp.full(6, -jnp.inf).at[3].set(-740.0)  # exp(-740) underflows: only logsumexp sees it
    idx = dx.systematic_resample(jr.PRNGKey(1), log_w, 6)
    np.testing.assert_array_equal(idx, np.full(6, 3))
    idx, new_log_w, did = jax.jit(dx.resample_if_needed)(jr.PRNGKey(2), log_w, 0.5)
    assert bool(did)
    np.testing.assert_array_equal(idx, np.full(6, 3))
    np.testing.assert_allclose(new_log_w, np.full(6, -np.log(6)))


def test_resample_if_needed_keeps_a_healthy_ensemble():
    log_w = jnp.log(jnp.array([0.2, 0.3, 0.25, 0.25])) + 10.0
    idx, new_log_w, did = dx.resample_if_needed(jr.PRNGKey(3), log_w, 0.5)  # ESS = 3.92 > 2
    assert not bool(did)
    np.testing.assert_array_equal(idx, np.arange(4))
    np.testing.assert_allclose(new_log_w, np.log([0.2, 0.3, 0.25, 0.25]), rtol=1e-12)
    _, _, did = dx.resample_if_needed(jr.PRNGKey(3), log_w, 1.0)  # threshold 1: resample (ESS < N)
    assert bool(did)


@pytest.mark.parametrize("bad", [jnp.full(4, -jnp.inf), jnp.array([0.0, jnp.nan, 1.0, 0.0])])
def test_degenerate_log_weights_raise(bad):
    with pytest.raises(eqx.EquinoxRuntimeError, match="log weights"):
        dx.systematic_resample(jr.PRNGKey(0), bad, 4)
    with pytest.raises(Exception, match="log weights"):
        jax.block_until_ready(eqx.filter_jit(dx.resample_if_needed)(jr.PRNGKey(0), bad, 0.5))


# ------------------------------------------------------------------------------------------------------
# Samplers: bad input and bookkeeping
# ------------------------------------------------------------------------------------------------------

FLOW = dx.Flow()
GAUSS = diagonal_gaussian([1.0, -2.0, 0.5], [0.5, 2.0, 1.0])
A3 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])


def gauss_predictor(path=FLOW):
    return dx.Predictor(GAUSS.network(path, "velocity"), path, "velocity")


def test_bad_input_gives_clear_errors():
    pred, timer = gauss_predictor(), dx.UniformTimer(10)
    op = dx.Matrix(A3, sigma_y=0.3)
    for cls in (dx.MCGdiff, dx.TDS):
        with pytest.raises(ValueError, match="y has shape"):
            cls(pred, op, jnp.zeros(3), timer)
        with pytest.raises(ValueError, match="resample_threshold"):
            cls(pred, op, jnp.zeros(2), timer, resample_threshold=1.5)
    with pytest.raises(ValueError, match="sigma_y > 0"):
        dx.TDS(pred, dx.Matrix(A3), jnp.zeros(2), timer)
    with pytest.raises(ValueError, match="kappa > 0"):
        dx.MCGdiff(pred, dx.Matrix(A3), jnp.zeros(2), timer, kappa=0.0)
    with pytest.raises(TypeError, match="Matrix"):  # MCGdiff needs an SVD: its operator is a Matrix
        dx.MCGdiff(pred, dx.Inpainting(jnp.array([1, 0, 1])), jnp.zeros(3), timer)
    with pytest.raises(ValueError, match="x0_shape"):
        dx.TDS(pred, dx.Inpainting(jnp.array([1, 0, 1]), sigma_y=0.1), jnp.zeros(3), timer)
    with pytest.raises(ValueError, match="n_particles"):
        dx.TDS(pred, op, jnp.zeros(2), timer).generate(jr.PRNGKey(0), 0)


def test_tds_differentiates_wherever_alpha_is_positive():
    # VP has alpha(1) > 0, so TDS differentiates its twist at every evaluation, t_0 included (on Flow,
    # alpha(1) = 0 and the first VJP is skipped: see the counts in the moment tests).
    op, y = dx.Matrix(A3, sigma_y=0.3), jnp.array([0.4, -1.0])
    out = dx.TDS(gauss_predictor(dx.VP()), op, y, dx.UniformTimer(10)).generate(jr.PRNGKey(0), 8)
    assert (int(out.nfe), int(out.n_vjp), out.ess.shape) == (10, 10, (10,))
    assert out.samples.shape == (8, 3) and np.isfinite(np.asarray(out.samples)).all()


# ------------------------------------------------------------------------------------------------------
# Samplers: moments on a Gaussian prior
# ------------------------------------------------------------------------------------------------------


GAUSS2 = diagonal_gaussian([1.0, -2.0], [0.5, 2.0])
A12 = np.array([[1.0, 0.6]])


def exact_gaussian_posterior(A, y, sigma_y):
    """Mean and covariance of x0 | A x0 + sigma_y n = y for the prior GAUSS2 (sigma_y = 0 allowed)."""
    mu, cov = np.asarray(GAUSS2.means[0]), np.asarray(GAUSS2.covs[0])
    gain = cov @ A.T @ np.linalg.inv(A @ cov @ A.T + sigma_y**2 * np.eye(A.shape[0]))
    return mu + gain @ (y - A @ mu), cov - gain @ A @ cov


MOMENT_CASES = [("MCGdiff", 0.4), ("MCGdiff", 0.0), ("TDS", 0.4)]


@pytest.mark.parametrize("method, sigma_y", MOMENT_CASES)
def test_gaussian_prior_posterior_mean(method, sigma_y):
    """The weighted ensemble's mean, averaged over R independent runs, against the exact posterior mean
    (sigma_y = 0: the prior conditioned on A x = y); the tolerance is 4 standard errors of that average,
    estimated from the R runs. Only the mean: the DDIM transition's O(1/n_steps) discretization bias
    (about -5% on variances at 100 steps, for the prior alone too) is far above the covariance's
    standard error; the mixture test below checks whole distributions."""
    y = np.array([0.7])
    op = dx.Matrix(A12, sigma_y=sigma_y)
    cls = dx.MCGdiff if method == "MCGdiff" else dx.TDS
    pred = dx.Predictor(GAUSS2.network(FLOW, "velocity"), FLOW, "velocity")
    sampler = cls(pred, op, y, dx.UniformTimer(100))
    R, N = 16, 1000

    def weighted_mean(key):
        out = sampler.generate(key, N)
        return jnp.exp(out.log_weights) @ out.particles, out.nfe, out.n_vjp

    means, nfe, n_vjp = jax.jit(jax.vmap(weighted_mean))(jr.split(jr.PRNGKey(7), R))
    # NFE: MCGdiff evaluates once per step of the grid with tau inserted (one more step when
    # sigma_y > 0; with sigma_y = 0, tau = 0 is the last grid time and the inserted step has zero
    # length); TDS at t_0..t_99, differentiating wherever alpha > 0 (not at t_0 = 1 on Flow).
    expected = {"MCGdiff": (101 if sigma_y > 0 else 100, 0), "TDS": (100, 99)}[method]
    assert (int(nfe[0]), int(n_vjp[0])) == expected
    means = np.asarray(means)
    se = means.std(0, ddof=1) / np.sqrt(R)
    err = np.abs(means.mean(0) - exact_gaussian_posterior(A12, y, sigma_y)[0])
    assert (err <= 4 * se).all(), (err, se)


# ------------------------------------------------------------------------------------------------------
# Samplers: the canonical mixture problem (benchmarks/posterior_gmm.py), d_x = 8, d_y = 2
# ------------------------------------------------------------------------------------------------------


def mixture_problem(seed: int, d_x: int = 8, d_y: int = 2):
    """The problem of benchmarks/posterior_gmm.py (Cardoso et al. 2024): 25 unit-covariance components
    at (8i, 8j) tiled to d_x, random weights, A with uniform singular values, sigma_y ~ U(0, max s)."""
    rng = np.random.default_rng(seed)
    means = np.array([[-8.0 * i, -8.0 * j] * (d_x // 2) for i in range(-2, 3) for j in range(-2, 3)])
    w = rng.normal(size=25) ** 2
    prior = dx.GaussianMixture(w / w.sum(), means, np.tile(np.eye(d_x), (25, 1, 1)))
    U, _, Vt = np.linalg.svd(rng.normal(size=(d_y, d_x)), full_matrices=False)
    S = np.sort(rng.uniform(size=d_y))[::-1]
    A = U @ np.diag(S) @ Vt
    sigma_y = rng.uniform() * S.max()
    x = np.asarray(prior.sample(jr.PRNGKey(seed), 1)[0])
    return prior, A, A @ x + sigma_y * rng.normal(size=d_y), sigma_y


@pytest.mark.slow
@pytest.mark.parametrize("method, n_particles", [("MCGdiff", 16000), ("TDS", 8000)])
def test_mixture_posterior_within_twice_the_noise_floor(method, n_particles):
    """Seed 10 of the benchmark's d_y = 2 problems has a posterior with four modes of weight > 1%
    (0.62, 0.21, 0.12, 0.05). M samples drawn from the final weighted ensemble are compared with M exact
    posterior samples; the noise floor is the mean SW between independent exact sets of size M."""
    prior, A, y, sigma_y = mixture_problem(10)
    posterior = prior.posterior(A, y, sigma_y)
    M, sw_key = 500, jr.PRNGKey(12345)
    exact = posterior.sample(jr.PRNGKey(999), M)
    pairs = [
        (posterior.sample(jr.PRNGKey(2 * i), M), posterior.sample(jr.PRNGKey(2 * i + 1), M)) for i in range(8)
    ]
    floor = float(np.mean([dx.sliced_wasserstein(a, b, sw_key) for a, b in pairs]))
    pred = dx.Predictor(prior.network(FLOW, "x0"), FLOW, "x0")
    cls = dx.MCGdiff if method == "MCGdiff" else dx.TDS
    sampler = cls(pred, dx.Matrix(A, sigma_y=sigma_y), y, dx.FluxTimer(100, shift=3.0))
    out = sampler.generate(jr.PRNGKey(40), n_particles)
    samples = out.particles[jr.categorical(jr.PRNGKey(60), out.log_weights, shape=(M,))]
    sw = float(dx.sliced_wasserstein(samples, exact, sw_key))
    assert sw <= 2 * floor, f"{method}: SW {sw:.4f} > 2 x noise floor {floor:.4f}"
