"""Posterior samplers against exact posteriors: Gaussian priors (closed-form posterior mean and
covariance, Monte Carlo standard errors) and a Gaussian mixture (sliced-Wasserstein noise floor)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import diffuse_eqx as dx


PATH = dx.Flow()
N = 2000  # particles of every sampling test (one size: fewer compilations)

# A Gaussian prior N(m, cov) in d = 3 and a measurement y = A x + sigma_y eps with d_y = 2.
MEAN = np.array([1.0, -0.5, 0.3])
_L = np.array([[0.9, 0.0, 0.0], [0.5, 0.6, 0.0], [-0.3, 0.4, 0.5]])
COV = _L @ _L.T  # anisotropic, correlated
VAR = 1.5  # the isotropic prior N(m, VAR I), for methods that assume Cov[x0 | x_t] = r_t^2 I
A = np.array([[0.6, 0.3, -0.2], [0.0, 0.5, 0.4]])
SIGMA_Y = 0.5
Y = np.array([1.2, -0.4])


def gaussian(isotropic: bool) -> dx.GaussianMixture:
    return dx.GaussianMixture(np.ones(1), MEAN[None], (VAR * np.eye(3) if isotropic else COV)[None])


def prior_predictor(gmm: dx.GaussianMixture) -> dx.Predictor:
    return dx.Predictor(gmm.network(PATH, "velocity"), PATH)


def generate(predictor, integrator, n_steps, t_max=1.0, n=N, shape=(3,), seed=0):
    den = dx.Denoiser(predictor, integrator, dx.UniformTimer(n_steps, t_max=t_max), x0_shape=shape)
    return den.generate(jr.PRNGKey(seed), n)


def assert_moments(samples, mean, cov, n_se=4.0):
    """Sample mean and covariance within `n_se` Monte Carlo standard errors of Gaussian sampling:
    se(mean_i) = sqrt(C_ii / n), se(C_ij) = sqrt((C_ii C_jj + C_ij^2) / n)."""
    s, n = np.asarray(samples), len(samples)
    var = np.diag(cov)
    z_mean = (s.mean(0) - mean) / np.sqrt(var / n)
    z_cov = (np.cov(s.T) - cov) / np.sqrt((np.outer(var, var) + cov**2) / n)
    assert np.all(np.abs(z_mean) <= n_se), f"mean off by {z_mean} standard errors"
    assert np.all(np.abs(z_cov) <= n_se), f"covariance off by {z_cov} standard errors"


# --------------------------------------------------------------------------------------------------
# Exactness of single evaluations (no sampling)
# --------------------------------------------------------------------------------------------------

POINTS = (
    np.array([[0.3, -1.2, 0.8], [-1.0, 0.2, 2.0], [0.3, -1.2, 0.8], [1.5, 0.5, -0.4]]),
    np.array([0.05, 0.4, 0.8, 0.99]),
)


@eqx.filter_jit
def predict_at(predictor, points):
    """The predictions at several points (x, t), in one compiled call."""
    return jax.vmap(predictor.predict)(*points)


def test_tmpd_and_pigdm_give_the_exact_posterior_denoiser_for_gaussian_priors():
    """For a Gaussian prior, TMPD's Gaussian p(x0 | x_t) is exact, and so is PiGDM's when the prior
    covariance is data_var * I: both then equal the oracle (the posterior mixture's denoiser)."""
    op = dx.Matrix(A, SIGMA_Y)
    for isotropic in (False, True):
        gmm = gaussian(isotropic)
        pred = prior_predictor(gmm)
        oracle = dx.ExactPosteriorGuidance(pred, gmm, op, Y)
        if isotropic:
            methods = [dx.PiGDM(pred, op, Y, data_var=VAR)]
        else:
            methods = [dx.TMPD(pred, op, Y), dx.TMPD(pred, op, Y, solver="cg")]
        want = predict_at(oracle, POINTS)
        for method in methods:
            got = predict_at(method, POINTS)
            np.testing.assert_allclose(got.x0, want.x0, rtol=1e-7, atol=1e-9, err_msg=repr(method))
            np.testing.assert_allclose(got.noise, want.noise, rtol=1e-7, atol=1e-9)
    # With the wrong prior variance PiGDM is only an approximation: it must differ.
    gmm = gaussian(True)
    oracle = dx.ExactPosteriorGuidance(prior_predictor(gmm), gmm, op, Y)
    wrong = dx.PiGDM(prior_predictor(gmm), op, Y, data_var=1.0)
    assert np.max(np.abs(predict_at(wrong, POINTS).x0 - predict_at(oracle, POINTS).x0)) > 1e-3


def mixture_2d() -> dx.GaussianMixture:
    """A 2-D mixture of 6 components with unequal weights and anisotropic covariances."""
    rng = np.random.default_rng(3)
    ang = 2 * np.pi * np.arange(6) / 6
    means = 3 * np.stack([np.cos(ang), np.sin(ang)], 1)
    w = rng.uniform(0.5, 1.5, 6)
    a = 0.3 * rng.normal(size=(6, 2, 2))
    return dx.GaussianMixture(w / w.sum(), means, a @ a.transpose(0, 2, 1) + 0.05 * np.eye(2))


MIX = mixture_2d()
MIX_A = np.array([[1.0, 0.4]])
MIX_SIGMA_Y = 0.6
MIX_Y = np.array([1.5])


def test_oracle_is_the_gradient_of_the_exact_log_likelihood():
    r"""`likelihood_score` against autodiff of log p(y | x_t) = log p(x_t, y) - log p(x_t), both mixtures
    of Gaussians in closed form; the shift Delta = (sigma^2 / alpha) * score; at alpha = 0 the posterior
    denoiser is the posterior mean E[x0 | y]."""
    op = dx.Matrix(MIX_A, MIX_SIGMA_Y)
    oracle = dx.ExactPosteriorGuidance(prior_predictor(MIX), MIX, op, MIX_Y)

    @jax.jit
    def compare(x, t):
        a, s = PATH.alpha(t), PATH.sigma(t)
        cov_x = a**2 * MIX.covs + s**2 * jnp.eye(2)
        cross = a * MIX.covs @ MIX_A.T  # Cov[x_t, y | component]
        cov_y = jnp.broadcast_to(MIX_A @ MIX.covs @ MIX_A.T + MIX_SIGMA_Y**2, (6, 1, 1))
        joint_cov = jnp.concatenate(
            [jnp.concatenate([cov_x, cross], 2), jnp.concatenate([cross.transpose(0, 2, 1), cov_y], 2)], 1
        )
        joint = dx.GaussianMixture(
            MIX.weights, jnp.concatenate([a * MIX.means, MIX.means @ MIX_A.T], 1), joint_cov
        )
        marginal = MIX.marginal(PATH, t)

        def log_lik(x):
            return joint.log_prob(jnp.concatenate([x, jnp.asarray(MIX_Y)])) - marginal.log_prob(x)

        score = oracle.likelihood_score(x, t)
        return score, jax.grad(log_lik)(x), oracle.shift(x, t), s**2 / a * score

    x = jnp.asarray([0.7, -1.1])
    for t in (0.1, 0.5, 0.9):
        score, autodiff, shift, from_score = compare(x, t)
        np.testing.assert_allclose(score, autodiff, rtol=1e-8)
        np.testing.assert_allclose(shift, from_score, rtol=1e-8)
    # With the prior's exact network, the guided prediction is the posterior mixture's denoiser; at
    # t = 1 (alpha = 0) it is the posterior mean E[x0 | y].
    post = oracle.posterior
    points = (jnp.asarray([[0.7, -1.1], [2.0, 0.5], [-1.0, 3.0]]), jnp.asarray([0.2, 0.6, 1.0]))
    got = predict_at(oracle, points)
    np.testing.assert_allclose(got.x0, jax.vmap(post.network(PATH, "x0"))(*points), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got.x0[2], post.weights @ post.means, rtol=1e-10)


def test_gram_solve_against_dense_matrices():
    r"""A^T (c A A^T + sigma_y^2 I)^{-1} r from the operator's structure (SVD, diagonal) or conjugate
    gradients, against the dense real matrix of A (complex measurements as real pairs)."""

    def realify(v):
        v = v.ravel()
        return jnp.concatenate([v.real, v.imag]) if jnp.iscomplexobj(v) else v

    rng = np.random.default_rng(1)
    cases = [
        (dx.Matrix(rng.normal(size=(2, 5)), 0.3), (5,)),
        (dx.Matrix(rng.normal(size=(2, 5))), (5,)),  # noiseless: the pseudo-inverse
        (dx.Matrix(rng.normal(size=(6, 4)), 0.2), (4,)),  # tall: A A^T is singular
        (dx.Inpainting(dx.random_mask(jr.key(0), (4, 6), 0.5), 0.1), (4, 6)),
        (dx.Inpainting(dx.random_mask(jr.key(1), (4, 6), 0.5)), (4, 6)),
        (dx.Downsampling(2, 0.2), (4, 6)),
        (dx.Blur(dx.gaussian_kernel(3, 0.7), 0.1), (4, 6)),
        (dx.MRI(dx.random_mask(jr.key(2), (4, 6), 0.5), 0.2), (4, 6)),
    ]
    c = 0.37

    @eqx.filter_jit
    def solve_and_densify(op, x, noise):
        dense = jax.jacfwd(lambda v: realify(op.apply(v.reshape(x.shape))))(jnp.zeros(x.size))
        r = op.apply(x) + op.sigma_y * op.apply(noise)  # y - A x0 of a measurement: in the range of A
        return op.gram_solve(c, r), dense, realify(r)

    for op, shape in cases:
        x, noise = jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.normal(size=shape))
        got, dense, r = solve_and_densify(op, x, noise)
        dense, r = np.asarray(dense), np.asarray(r)
        gram = c * dense @ dense.T + float(op.sigma_y) ** 2 * np.eye(len(dense))
        want = dense.T @ (np.linalg.pinv(gram) @ r)
        np.testing.assert_allclose(np.ravel(got), want, rtol=1e-6, atol=1e-8, err_msg=type(op).__name__)


class CountingNetwork:
    """The exact network, counting how many times it is traced or called."""

    def __init__(self, gmm):
        self.network, self.calls = gmm.network(PATH, "velocity"), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.network(x, t)


def test_dps_makes_one_network_evaluation_and_one_vjp():
    gmm = gaussian(False)
    net = CountingNetwork(gmm)
    dps = dx.DPS(dx.Predictor(net, PATH), dx.Matrix(A, SIGMA_Y), Y)
    pred, _, nfe = eqx.filter_jit(dps.evaluate)(jnp.asarray([0.3, -1.2, 0.8]), jnp.asarray(0.5), None)
    assert net.calls == 1 and int(nfe) == 1  # the network is traced once
    assert np.all(np.isfinite(pred.x0)) and np.all(np.isfinite(pred.noise))


def test_guidance_is_finite_at_alpha_zero():
    """At Flow's t = 1 the Jacobian methods return the prior prediction (x_t carries no information)."""
    gmm = gaussian(False)
    pred = prior_predictor(gmm)
    op = dx.Matrix(A, SIGMA_Y)
    points = (POINTS[0], np.ones(4))
    prior = predict_at(pred, points)
    for method in (dx.DPS(pred, op, Y), dx.PiGDM(pred, op, Y), dx.TMPD(pred, op, Y)):
        got = predict_at(method, points)
        np.testing.assert_allclose(got.x0, prior.x0, atol=1e-12)
        np.testing.assert_allclose(got.noise, prior.noise, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Sampling: Gaussian priors (mean and covariance within 4 Monte Carlo standard errors)
# --------------------------------------------------------------------------------------------------


def test_tmpd_samples_the_exact_posterior_of_a_gaussian_prior():
    """TMPD is exact for Gaussian priors: with Heun (second order, 40 steps: discretisation error
    ~1e-4, far below the standard errors ~0.01) its samples have the posterior's moments. The grid
    starts at t = 0.999 (the Jacobian guidance vanishes at alpha = 0)."""
    gmm = gaussian(False)
    post = gmm.posterior(A, Y, SIGMA_Y)
    out = generate(dx.TMPD(prior_predictor(gmm), dx.Matrix(A, SIGMA_Y), Y), dx.Heun(), 40, t_max=0.999)
    assert int(out.nfe) == 79  # Heun: 2 per step, the last step 1
    assert_moments(out.samples, post.means[0], post.covs[0])


def test_pigdm_samples_the_exact_posterior_of_an_isotropic_gaussian_prior():
    """PiGDM with data_var equal to the prior variance (prior N(m, 1.5 I)) is exact."""
    gmm = gaussian(True)
    post = gmm.posterior(A, Y, SIGMA_Y)
    pigdm = dx.PiGDM(prior_predictor(gmm), dx.Matrix(A, SIGMA_Y), Y, data_var=VAR)
    out = generate(pigdm, dx.Heun(), 40, t_max=0.999)
    assert_moments(out.samples, post.means[0], post.covs[0])


def test_daps_mean_matches_the_posterior_mean():
    r"""DAPS on N(m, 1.5 I) with data_var = 1.5: r_t is exact, so each step would keep the posterior
    marginals if the Langevin chain sampled p(x0 | x_t, y) exactly. Unadjusted Langevin on a Gaussian
    keeps the mean exact (its covariance is biased by O(eta)); 40 steps of contraction at most
    |1 - step_size * lambda| <= 0.8 leave 0.8^40 ~ 1e-4 of the initial error. So the mean is checked
    within 4 standard errors (of the exact posterior's spread)."""
    gmm = gaussian(True)
    post = gmm.posterior(A, Y, SIGMA_Y)
    daps = dx.DAPS(dx.Matrix(A, SIGMA_Y), Y, n_langevin=40, step_size=0.2, data_var=VAR)
    out = generate(prior_predictor(gmm), daps, 20)
    assert int(out.nfe) == 20
    s = np.asarray(out.samples)
    z = (s.mean(0) - post.means[0]) / np.sqrt(np.diag(post.covs[0]) / N)
    assert np.all(np.abs(z) <= 4), z


def test_reddiff_sgd_follows_its_mean_recursion():
    r"""RedDiff with SGD on a Gaussian prior: the denoiser is affine, E_eps[x0_hat(a mu + s eps)] =
    m + a^2 cov C^{-1}(mu - m), C = a^2 cov + s^2 I, so the particles' mean follows the deterministic
    recursion mu <- mu - lr (w A^T (A mu - y) + lambda (mu - E x0_hat)) exactly. Checked within 4
    standard errors of the particles' spread."""
    gmm = gaussian(False)
    lr, lam, n_steps = 0.2, 0.5, 30
    red = dx.RedDiff(dx.Matrix(A, SIGMA_Y), Y, lr=lr, reg_weight=lam, optimizer=optax.sgd(lr))
    out = generate(prior_predictor(gmm), red, n_steps)
    assert int(out.nfe) == n_steps
    ts = np.asarray(dx.UniformTimer(n_steps).times())
    mu = np.linalg.pinv(A) @ Y
    for t in ts[:-1]:
        a, s = 1 - t, t
        x0_mean = MEAN + a**2 * COV @ np.linalg.solve(a**2 * COV + s**2 * np.eye(3), mu - MEAN)
        mu = mu - lr * (A.T @ (A @ mu - Y) + lam * (mu - x0_mean))
    samples = np.asarray(out.samples)
    z = (samples.mean(0) - mu) / (samples.std(0) / np.sqrt(N))
    assert np.all(np.abs(z) <= 4), z
    assert np.all(samples.std(0) > 0)  # the eps draws make the particles differ


@pytest.mark.slow
def test_reddiff_adam_fits_the_measurement():
    """RedDiff with Adam (the paper's optimiser) from zeros: the data misfit ends far below the prior's,
    and the iterate lies in the bulk of the posterior (Mahalanobis distance of the mean < 3)."""
    gmm = gaussian(False)
    post = gmm.posterior(A, Y, SIGMA_Y)
    red = dx.RedDiff(dx.Matrix(A, SIGMA_Y), Y, lr=0.05, mu_init="zeros")
    out = generate(prior_predictor(gmm), red, 50)
    s = np.asarray(out.samples)
    assert np.all(np.isfinite(s))
    prior_misfit = np.mean(np.linalg.norm(np.asarray(gmm.sample(jr.PRNGKey(1), N)) @ A.T - Y, axis=1))
    misfit = np.mean(np.linalg.norm(s @ A.T - Y, axis=1))
    assert misfit < 0.5 * prior_misfit, (misfit, prior_misfit)
    diff = s.mean(0) - post.means[0]
    assert diff @ np.linalg.solve(post.covs[0], diff) < 9


# --------------------------------------------------------------------------------------------------
# Hard constraints: DDNM (noiseless) and RePaint (inpainting)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["matrix", "inpainting"])
def test_ddnm_noiseless_samples_satisfy_the_measurement(kind):
    gmm = gaussian(False)
    x_true = np.array([0.5, 1.0, -0.7])
    op = dx.Matrix(A) if kind == "matrix" else dx.Inpainting(np.array([True, False, True]))
    y = op.apply(jnp.asarray(x_true))
    out = generate(dx.DDNM(prior_predictor(gmm), op, y), dx.DDIM(eta=1.0), 20, n=200)
    residual = jax.vmap(op.apply)(out.samples) - y
    assert np.max(np.abs(residual)) <= 1e-5


@pytest.mark.slow
def test_repaint_keeps_the_observed_entries_and_counts_its_evaluations():
    """Inpainting one coordinate of a correlated Gaussian: the observed entries end equal to y, the
    NFE is n_steps + (n_steps / j)(r - 1) j, and resampling harmonises. RePaint is not exact (the prior
    denoiser reads the replaced entries as noisy): measured here, without resampling the unobserved
    mean covers only about half of the way from the prior mean to the exact conditional mean; with
    j = 2, r = 10 the remaining bias must be below 15% of that gap and below a quarter of the bias
    without resampling (measured: 10% and 19%)."""
    gmm = gaussian(False)
    mask = np.array([True, False, True])
    x_true = np.array([0.5, 1.0, -0.7])
    op = dx.Inpainting(mask)
    y = op.apply(jnp.asarray(x_true))
    k, u = [0, 2], 1  # x_1 | x_0, x_2 under N(MEAN, COV)
    cond_mean = MEAN[u] + COV[u, k] @ np.linalg.solve(COV[np.ix_(k, k)], x_true[k] - MEAN[k])
    bias = {}
    for r in (1, 10):
        repaint = dx.RePaint(dx.DDIM(eta=1.0), op, y, jump_length=2, n_resample=r)
        out = generate(prior_predictor(gmm), repaint, 20)
        s = np.asarray(out.samples)
        assert int(out.nfe) == 20 + 10 * (r - 1) * 2
        np.testing.assert_array_equal(s[:, mask], np.broadcast_to(x_true[mask], (N, 2)))
        bias[r] = abs(s[:, u].mean() - cond_mean)
    gap = abs(MEAN[u] - cond_mean)
    assert bias[10] < 0.15 * gap and bias[10] < 0.25 * bias[1], (bias, gap)


def test_repaint_resamples_only_where_it_should():
    """The network evaluations actually run (counted by a host callback in the network, once per
    batch) are the NFE RePaint reports: the resampling is a branch the whole batch takes or skips,
    not computed at every step and thrown away (9x the work for j = 2, r = 10; before the schedule
    was shared, the branch's predicate was batched and vmap turned it into a select)."""
    gmm = gaussian(False)
    calls = []

    def network(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return gmm.velocity(PATH, x, t)

    op = dx.Inpainting(np.array([True, False, True]))
    repaint = dx.RePaint(dx.DDIM(eta=1.0), op, np.array([0.5, 0.0, -0.7]), jump_length=2, n_resample=3)
    n = 5
    out = dx.Denoiser(dx.Predictor(network, PATH), repaint, dx.UniformTimer(6), (3,)).generate(jr.key(0), n)
    jax.effects_barrier()
    assert int(out.nfe) == 6 + 3 * (3 - 1) * 2
    assert len(calls) == int(out.nfe)  # before: 30, resampling's 12 evaluations at all 6 steps
    assert np.all(np.isfinite(out.samples))


# --------------------------------------------------------------------------------------------------
# The mixture posterior: oracle within 2x the noise floor; DPS measured
# --------------------------------------------------------------------------------------------------

SW_KEY = jr.PRNGKey(12345)


@pytest.fixture(scope="module")
def mixture_posterior():
    """Exact posterior samples, and the noise floor: the mean SW distance from independent exact sets
    of the same size to the same reference set (8 of them: with separated modes the SW between
    exact sets fluctuates by a factor 2, through the modes' sampled weights)."""
    sample = jax.jit(jax.vmap(MIX.posterior(MIX_A, MIX_Y, MIX_SIGMA_Y).sample, (0, None)), static_argnums=1)
    exact, *others = sample(jnp.stack([jr.PRNGKey(999), *(jr.PRNGKey(i) for i in range(8))]), N)
    floor = float(np.mean([dx.sliced_wasserstein(other, exact, SW_KEY) for other in others]))
    return exact, floor


@pytest.mark.slow
def test_oracle_samples_the_exact_mixture_posterior(mixture_posterior):
    """Exact guidance + exact prior network + DPM-Solver++(2M) (the posterior probability-flow ODE) from
    t = 1: within 2x the noise floor of the exact posterior."""
    exact, floor = mixture_posterior
    op = dx.Matrix(MIX_A, MIX_SIGMA_Y)
    oracle = dx.ExactPosteriorGuidance(prior_predictor(MIX), MIX, op, MIX_Y)
    out = generate(oracle, dx.DPMpp2M(), 50, shape=(2,))
    sw = float(dx.sliced_wasserstein(out.samples, exact, SW_KEY))
    print(f"oracle: SW {sw:.4f}, noise floor {floor:.4f}")
    assert sw <= 2 * floor, (sw, floor)


def test_dps_moves_towards_the_measurement_and_its_error_is_measured(mixture_posterior):
    """DPS (DDPM steps, one evaluation each): finite, the measurement misfit well below the prior's,
    1 NFE per step; its sliced-Wasserstein distance to the exact posterior is printed, not hidden."""
    exact, floor = mixture_posterior
    op = dx.Matrix(MIX_A, MIX_SIGMA_Y)
    out = generate(dx.DPS(prior_predictor(MIX), op, MIX_Y), dx.DDIM(eta=1.0), 50, shape=(2,))
    s = np.asarray(out.samples)
    assert int(out.nfe) == 50 and np.all(np.isfinite(s))
    misfit = np.mean(np.abs(s @ MIX_A.T - MIX_Y))
    prior_misfit = np.mean(np.abs(np.asarray(MIX.sample(jr.PRNGKey(1), N)) @ MIX_A.T - MIX_Y))
    assert misfit < 0.5 * prior_misfit, (misfit, prior_misfit)
    sw = float(dx.sliced_wasserstein(out.samples, exact, SW_KEY))
    print(f"DPS: SW {sw:.4f} = {sw / floor:.1f} x the noise floor {floor:.4f}")


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


class NoPinv(dx.AbstractLinearOperator):
    """A linear operator without a pseudo-inverse."""

    A: jax.Array
    sigma_y: float = 0.0

    def y_shape(self, x_shape):
        return self.A.shape[:1]

    def apply(self, x):
        return self.A @ x

    def adjoint(self, y):
        return self.A.T @ y


def test_bad_input_gives_clear_errors():
    gmm = gaussian(False)
    pred = prior_predictor(gmm)
    op = dx.Matrix(A, SIGMA_Y)
    noiseless = dx.Matrix(A)
    with pytest.raises(ValueError, match="y has shape"):
        dx.DPS(pred, op, np.ones(3))
    with pytest.raises(ValueError, match="y has shape"):
        dx.RedDiff(op, np.ones(5))
    with pytest.raises(ValueError, match="sigma_y > 0"):
        dx.DPS(pred, noiseless, Y, likelihood="gaussian")
    with pytest.raises(ValueError, match="sigma_y > 0"):
        dx.DAPS(noiseless, Y)
    with pytest.raises(ValueError, match="sigma_y > 0"):
        dx.ExactPosteriorGuidance(pred, gmm, noiseless, Y)
    with pytest.raises(TypeError, match="AbstractLinearOperator"):
        dx.TMPD(pred, dx.LatentOperator(op, lambda z: z), Y)
    with pytest.raises(TypeError, match="pinv"):
        dx.DDNM(pred, NoPinv(jnp.asarray(A)), Y)
    with pytest.raises(TypeError, match="AbstractPredictor"):
        dx.PiGDM(gmm.network(PATH), op, Y)
    with pytest.raises(ValueError, match="data_var"):
        dx.PiGDM(pred, op, Y, data_var=0.0)
    with pytest.raises(ValueError, match="n_resample"):
        dx.RePaint(dx.DDIM(), dx.Inpainting(np.ones(3, bool)), np.ones(3), n_resample=0)
    # Operators whose measurement shape depends on x are checked when sampling starts.
    inpaint = dx.Inpainting(np.array([True, False, True]))
    with pytest.raises(ValueError, match="y has shape"):
        generate(dx.DDNM(pred, inpaint, np.ones(2)), dx.DDIM(), 2, n=1)
    with pytest.raises(ValueError, match="y has shape"):
        generate(pred, dx.RePaint(dx.DDIM(), inpaint, np.ones(4)), 2, n=1)
