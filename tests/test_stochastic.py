"""Stochastic integrators (EulerMaruyama, EulerAncestral, DPMpp2MSDE) and Churn.

On Gaussian data with the exact network every one of these samplers is affine in the particle and
the injected noise, so the mean and covariance of its output follow an exact recursion. The
recursions below are written independently in numpy from the published update rules (k-diffusion's
form in the scaled variable x/alpha, the reverse SDE with f and g^2 for Euler-Maruyama); Monte
Carlo moments of the library's samplers are compared with them within 4 standard errors, and the
recursions themselves are checked to converge to the target at the declared order.
"""

import functools
import math
from typing import ClassVar

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import MIXTURE_8, PATHS, SW_KEY

import diffuse_eqx as dx


MEAN = np.asarray([1.0, -2.0])
COV = np.asarray([[0.5, 0.3], [0.3, 0.8]])
GAUSS = dx.GaussianMixture(np.ones(1), MEAN[None], COV[None])


# ----------------------------------------------------------------------------------------------
# Exact moment recursions of the discrete samplers on N(MEAN, COV) (numpy, independent code)


def em_ref(c, x, prev, z, post, eps):
    """Euler-Maruyama on dx = [f x - (1 + eps^2)/2 g^2 score] dt + eps g dW, h = s - t < 0."""
    x0, e = post(x)
    if c["s_s"] == 0:  # final step to sigma = 0: the data estimate
        return x0, x0
    a, s, h = c["a_t"], c["s_t"], c["s"] - c["t"]
    if a == 0:  # g^2 = inf at alpha = 0: the probability-flow Euler step
        return x + h * (c["da_t"] * x0 + c["ds_t"] * e), x0
    f = c["da_t"] / a
    g2 = 2 * s * c["ds_t"] - 2 * f * s**2
    score = -e / s
    return x + h * (f * x - (1 + eps**2) / 2 * g2 * score) + eps * np.sqrt(-h * g2) * z, x0


def ea_ref(c, x, prev, z, post, eta, flow):
    """k-diffusion's sample_euler_ancestral in y = x/alpha (sample_euler_ancestral_RF for Flow)."""
    x0, e = post(x)
    t, s = c["t"], c["s"]
    if flow:
        t_down = max(s * (1 + (s / t - 1) * eta), 0.0)
        x_down = t_down / t * x + (1 - t_down / t) * x0
        alpha_ratio = (1 - s) / (1 - t_down)
        return alpha_ratio * x_down + np.sqrt(max(s**2 - (t_down * alpha_ratio) ** 2, 0.0)) * z, x0
    ratio = c["a_t"] * c["s_s"] / (c["a_s"] * c["s_t"])  # sigma~_s / sigma~_t, finite at alpha_t = 0
    sig_s = c["s_s"] / c["a_s"]
    sig_up = min(sig_s, eta * sig_s * np.sqrt(1 - ratio**2))
    sig_down = np.sqrt(sig_s**2 - sig_up**2)
    # y + d (sig_down - sig_t) + sig_up z with d = (y - x0)/sig_t = eps-hat
    return c["a_s"] * (x0 + e * sig_down + sig_up * z), x0


def sde2m_ref(c, x, prev, z, post, eta):
    """k-diffusion's sample_dpmpp_2m_sde (midpoint), rescaled by alpha."""
    x0, _ = post(x)
    if c["s_s"] == 0:
        return x0, x0
    h, h_last = c["lam_s"] - c["lam_t"], c["h_prev"]
    d = x0 if h_last is None else x0 + h / (2 * h_last) * (x0 - prev)
    x_next = c["s_s"] / c["s_t"] * np.exp(-eta * h) * x + c["a_s"] * -np.expm1(-(1 + eta) * h) * d
    return x_next + c["s_s"] * np.sqrt(-np.expm1(-2 * eta * h)) * z, x0


def moments(step, path, ts, mean=MEAN, cov=COV):
    """Exact mean and covariance of a sampler's output. The state (x, previous x0-hat) is affine in
    the initial noise and the z's, so each step is read off as w' = A w + b + B z and the moments
    propagate in closed form. Starts from N(0, sigma(t_0)^2 I), as the Denoiser does."""
    ts = np.asarray(ts, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = [np.asarray(f(jnp.asarray(ts))) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma)]
        a, s, da, ds = coef
        lam = np.log(a) - np.log(s)
    d, eye = len(mean), np.eye(len(mean))
    m, cw = np.zeros(2 * d), np.zeros((2 * d, 2 * d))
    cw[:d, :d] = s[0] ** 2 * eye
    for i in range(len(ts) - 1):
        c = dict(t=ts[i], s=ts[i + 1], a_t=a[i], s_t=s[i], da_t=da[i], ds_t=ds[i], a_s=a[i + 1], s_s=s[i + 1])
        c.update(lam_t=lam[i], lam_s=lam[i + 1], h_prev=None if i == 0 else lam[i] - lam[i - 1])
        prec = np.linalg.inv(a[i] ** 2 * cov + s[i] ** 2 * eye)  # exact posterior: affine in x
        gain_x0, gain_eps = a[i] * cov @ prec, s[i] * prec

        def post(x, i=i, gain_x0=gain_x0, gain_eps=gain_eps):
            u = x - a[i] * mean
            return mean + gain_x0 @ u, gain_eps @ u

        def F(w, z, c=c, post=post):
            x_next, x0 = step(c, w[:d], w[d:], z, post)
            return np.concatenate([x_next, x0])

        with np.errstate(divide="ignore", invalid="ignore"):
            b = F(np.zeros(2 * d), np.zeros(d))
            A = np.stack([F(e, np.zeros(d)) - b for e in np.eye(2 * d)], 1)
            B = np.stack([F(np.zeros(2 * d), e) - b for e in eye], 1)
        m, cw = A @ m + b, A @ cw @ A.T + B @ B.T
    return m[:d], cw[:d, :d]


SDE_CASES = {  # the integrator and its numpy reference (given whether the path is Flow)
    "EulerMaruyama": (lambda flow: dx.EulerMaruyama(1.0), lambda flow: functools.partial(em_ref, eps=1.0)),
    # the rectified-flow split on Flow, the scaled-variable split on other paths
    "EulerAncestral": (
        lambda flow: dx.EulerAncestralRF(1.0) if flow else dx.EulerAncestral(1.0),
        lambda flow: functools.partial(ea_ref, eta=1.0, flow=flow),
    ),
    "DPMpp2MSDE": (lambda flow: dx.DPMpp2MSDE(1.0), lambda flow: functools.partial(sde2m_ref, eta=1.0)),
}


@pytest.mark.parametrize("path_name, prediction", [("flow", "velocity"), ("vp_cosine", "x0")])
@pytest.mark.parametrize("name", SDE_CASES)
def test_moments_match_the_exact_recursion(name, path_name, prediction):
    """20 000 particles, 20 steps from pure noise: sample mean and covariance within 4 Monte Carlo
    standard errors of the discrete sampler's exact moments."""
    make, ref = SDE_CASES[name]
    integrator = make(path_name == "flow")
    path, n = PATHS[path_name], 20_000
    timer = dx.UniformTimer(20, t_max=path.t_max)
    pred = dx.Predictor(GAUSS.network(path, prediction), path, prediction)
    xs = np.asarray(dx.Denoiser(pred, integrator, timer, (2,)).generate(jr.PRNGKey(1), n).samples)
    m, c = moments(ref(path_name == "flow"), path, np.asarray(timer.times()))
    mean_se = np.sqrt(np.diag(c) / n)
    cov_se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)  # sd of S_ij for Gaussian data
    print(f"{name}/{path_name}: mean z {(xs.mean(0) - m) / mean_se}, cov z {(np.cov(xs.T) - c) / cov_se}")
    assert np.all(np.abs(xs.mean(0) - m) < 4 * mean_se), (xs.mean(0), m)
    assert np.all(np.abs(np.cov(xs.T) - c) < 4 * cov_se), (np.cov(xs.T), c)


@pytest.mark.parametrize("path_name", ["flow", "vp_cosine"])
@pytest.mark.parametrize("name", SDE_CASES)
def test_exact_moments_converge_at_the_declared_order(name, path_name):
    """The discrete sampler's exact mean and covariance converge to the target's as the grid is
    refined, at least at the declared (weak) order: slope over 100, 200, 400 steps."""
    make, ref = SDE_CASES[name]
    integrator = make(path_name == "flow")
    path, steps = PATHS[path_name], (100, 200, 400)
    errors = []
    for n in steps:
        m, c = moments(ref(path_name == "flow"), path, np.linspace(1, 0, n + 1))
        errors.append(max(np.abs(m - MEAN).max(), np.abs(c - COV).max()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(f"{name}/{path_name}: weak errors {errors}, slope {slope:.2f} (declared {integrator.order})")
    assert slope >= integrator.order - 0.3, (slope, errors)


def test_euler_maruyama_is_slower_near_alpha_zero_for_small_noise():
    """Documented: with alpha(t_max) = 0, f and g^2 blow up at t_max; for noise_scale < 1 a uniform
    grid converges more slowly than first order (about N^-1/2 at noise_scale = 0.5 on cosine VP),
    and at first order where alpha stays positive (linear VP)."""
    ref = functools.partial(em_ref, eps=0.5)

    def slope(path):
        errors = []
        for n in (100, 200, 400):
            m, c = moments(ref, path, np.linspace(1, 0, n + 1))
            errors.append(max(np.abs(m - MEAN).max(), np.abs(c - COV).max()))
        return -np.polyfit(np.log([100, 200, 400]), np.log(errors), 1)[0]

    cosine, linear = slope(PATHS["vp_cosine"]), slope(PATHS["vp_linear"])
    print(f"EulerMaruyama(0.5): slope {cosine:.2f} on cosine VP, {linear:.2f} on linear VP")
    assert 0.3 < cosine < 0.7 and linear > 0.8, (cosine, linear)


# ----------------------------------------------------------------------------------------------
# Samples against an exact 2-D mixture (as tests/test_sampling.py)

N = 4000
MIXTURE = MIXTURE_8


@pytest.fixture(scope="module")
def exact_and_floor():
    return helpers.exact_and_floor(N)


SW_CASES = {  # path, prediction, integrator, timer, network evaluations
    "EulerMaruyama-flow": ("flow", "velocity", dx.EulerMaruyama(1.0), dx.UniformTimer(50), 50),
    "EulerAncestralRF-flow": ("flow", "velocity", dx.EulerAncestralRF(1.0), dx.UniformTimer(50), 50),
    "EulerAncestral-vp_cosine": ("vp_cosine", "x0", dx.EulerAncestral(1.0), dx.UniformTimer(50), 50),
    "DPMpp2MSDE-flow": ("flow", "x0", dx.DPMpp2MSDE(1.0), dx.UniformTimer(50), 50),
    "DPMpp2MSDE-edm": ("edm", "x0", dx.DPMpp2MSDE(1.0), dx.KarrasTimer(50), 50),
    "Churn(Euler)-flow": ("flow", "velocity", dx.Churn(dx.Euler(), s_churn=10.0), dx.UniformTimer(50), 50),
    # Heun's last step to t = 0 is an Euler step: 2 x 25 - 1 evaluations
    "Churn(Heun)-edm": ("edm", "x0", dx.Churn(dx.Heun(), s_churn=10.0), dx.KarrasTimer(25), 49),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SW_CASES)
def test_samples_within_twice_the_noise_floor(exact_and_floor, case):
    path_name, prediction, integrator, timer, nfe = SW_CASES[case]
    exact, floor = exact_and_floor
    path = PATHS[path_name]
    predictor = dx.Predictor(MIXTURE.network(path, prediction), path, prediction)
    out = dx.Denoiser(predictor, integrator, timer, x0_shape=(2,)).generate(jr.PRNGKey(7), N)
    sw = float(dx.sliced_wasserstein(out.samples, exact, SW_KEY))
    print(f"{integrator!r} on {path_name}: SW {sw:.4f}, noise floor {floor:.4f}")
    assert int(out.nfe) == nfe
    assert sw <= 2 * floor, f"SW {sw:.4f} > 2 x noise floor {floor:.4f}"


# ----------------------------------------------------------------------------------------------
# Reductions to the deterministic samplers


@eqx.filter_jit
def solve(integrator, predictor, ts, xs, keys):
    return jax.vmap(lambda x, k: dx.integrate(integrator, predictor, ts, x, k)[0])(xs, keys)


def run(integrator, path, prediction, ts, key=jr.PRNGKey(0)):
    """The integrator's final particles for 8 starting points."""
    predictor = dx.Predictor(MIXTURE.network(path, prediction), path, prediction)
    xs = jr.normal(jr.PRNGKey(5), (8, 2)) * path.sigma(ts[0])
    return np.asarray(solve(integrator, predictor, ts, xs, jr.split(key, 8)))


def grid(path_name, n=8, t_min=0.0):
    return jnp.linspace(PATHS[path_name].t_max, t_min, n + 1)


EDM_GRID = jnp.asarray([80.0, 20, 5, 1, 0.2, 0])
REDUCTIONS = {  # stochastic (eta / noise 0), deterministic, path, prediction, grid
    "DPMpp2MSDE-vp_cosine": (dx.DPMpp2MSDE(0.0), dx.DPMpp2M(), "vp_cosine", "x0", grid("vp_cosine")),
    "EulerMaruyama-flow": (dx.EulerMaruyama(0.0), dx.Euler(), "flow", "velocity", grid("flow")),
    "EulerMaruyama-edm": (dx.EulerMaruyama(0.0), dx.Euler(), "edm", "x0", EDM_GRID),
    # from alpha = 0 (the singular first step) to t = 0.05
    "EulerMaruyama-vp_cosine": (
        dx.EulerMaruyama(0.0),
        dx.Euler(),
        "vp_cosine",
        "velocity",
        grid("vp_cosine", t_min=0.05),
    ),
    "EulerAncestral-flow": (dx.EulerAncestral(0.0), dx.Euler(), "flow", "velocity", grid("flow")),
    "EulerAncestralRF-flow": (dx.EulerAncestralRF(0.0), dx.Euler(), "flow", "velocity", grid("flow")),
    "EulerAncestral-edm": (dx.EulerAncestral(0.0), dx.Euler(), "edm", "x0", EDM_GRID),
    # the scaled-variable split is DDIM with the same eta, the same noise included
    "EulerAncestral(0.6)-vp_cosine": (
        dx.EulerAncestral(0.6),
        dx.DDIM(0.6),
        "vp_cosine",
        "x0",
        grid("vp_cosine"),
    ),
    "Churn(Heun)-edm": (dx.Churn(dx.Heun(), s_churn=0.0), dx.Heun(), "edm", "x0", EDM_GRID),
    "Churn(DPMpp2M)-flow": (
        dx.Churn(dx.DPMpp2M(), 5.0, s_tmax=0.0),
        dx.DPMpp2M(),
        "flow",
        "x0",
        grid("flow"),
    ),
}


@pytest.mark.parametrize("case", REDUCTIONS)
def test_reduces_to_the_deterministic_sampler(case):
    stochastic, deterministic, path_name, prediction, ts = REDUCTIONS[case]
    path = PATHS[path_name]
    got = run(stochastic, path, prediction, ts)
    want = run(deterministic, path, prediction, ts)
    print(f"{case}: max |difference| {np.abs(got - want).max():.1e}")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert stochastic.order == deterministic.order


# ----------------------------------------------------------------------------------------------
# Churn


class Probe(dx.AbstractIntegrator):
    """Leaves the particle alone and records the time it was asked to start from."""

    order: ClassVar[int] = 0
    nfe_per_step: ClassVar[int] = 0

    def init(self, predictor, x, key, ts):
        return dx.IntegratorState(x, key, jnp.zeros((), ts.dtype))

    def step(self, predictor, state, t, t_next):
        return state.replace(memory=jnp.asarray(t, float))


@pytest.mark.parametrize("path_name", ["flow", "vp_cosine", "edm"])
def test_churn_noise_gives_the_exact_marginal_at_t_hat(path_name):
    """x ~ p_t exactly (Gaussian data); after churn, mean and covariance are those of p_{t_hat}
    within 4 standard errors, t_hat = t (1 + gamma) with gamma = min(S_churn/N, sqrt 2 - 1)."""
    path, n = PATHS[path_name], 40_000
    t = 0.4 * path.t_max
    ts = jnp.linspace(path.t_max, 0, 11)  # N = 10 steps
    churn = dx.Churn(Probe(), s_churn=2.0)  # gamma = 0.2
    predictor = dx.Predictor(GAUSS.network(path, "x0"), path, "x0")
    a, s = path.alpha(t), path.sigma(t)
    x = a * MEAN + jr.normal(jr.PRNGKey(0), (n, 2)) @ np.linalg.cholesky(a**2 * COV + s**2 * np.eye(2)).T

    def one(x, key):
        state = churn.step(predictor, churn.init(predictor, x, key, ts), t, 0.1 * t)
        return state.position, state.memory[0], state.key

    x_hat, t_hat, keys = jax.vmap(one)(x, jr.split(jr.PRNGKey(1), n))
    np.testing.assert_allclose(t_hat, t * 1.2, rtol=1e-14)
    a, s = path.alpha(1.2 * t), path.sigma(1.2 * t)
    m, c = a * MEAN, a**2 * COV + s**2 * np.eye(2)
    x_hat = np.asarray(x_hat)
    assert np.all(np.abs(x_hat.mean(0) - m) < 4 * np.sqrt(np.diag(c) / n)), (x_hat.mean(0), m)
    cov_se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)
    assert np.all(np.abs(np.cov(x_hat.T) - c) < 4 * cov_se), (np.cov(x_hat.T), c)
    assert np.abs(x_hat - np.asarray(x)).min() > 0  # noise was added to every particle


def test_churn_window_clipping_and_properties():
    path = PATHS["vp_cosine"]
    predictor = dx.Predictor(GAUSS.network(path, "x0"), path, "x0")
    x, key, ts = jnp.asarray([0.3, -0.2]), jr.PRNGKey(0), jnp.linspace(1, 0, 5)  # N = 4: gamma = sqrt 2 - 1

    def step(churn, t):
        return churn.step(predictor, churn.init(predictor, x, key, ts), t, t / 2)

    state = step(dx.Churn(Probe(), s_churn=80.0), 0.5)
    assert float(state.memory[0]) == pytest.approx(0.5 * math.sqrt(2), rel=1e-14)  # gamma capped
    assert float(step(dx.Churn(Probe(), s_churn=80.0), 0.9).memory[0]) == 1.0  # t_hat clipped to t_max
    for t in (1.0, 0.25):  # at t_max (alpha = 0) and outside [s_tmin, s_tmax]: untouched
        state = step(dx.Churn(Probe(), s_churn=80.0, s_tmin=0.3), t)
        assert float(state.memory[0]) == t
        np.testing.assert_array_equal(state.position, x)
        assert not np.array_equal(state.key, key)
    churn = dx.Churn(dx.Heun(), s_churn=1.0)
    assert (churn.order, churn.nfe_per_step) == (2, 2)
    assert (dx.Churn(dx.EulerAncestral(), 1.0).order, dx.Churn(dx.DPMpp2M(), 1.0).nfe_per_step) == (1, 1)


# ----------------------------------------------------------------------------------------------
# Keys and validation


def test_particle_i_does_not_depend_on_n_particles():
    path = PATHS["flow"]
    predictor = dx.Predictor(MIXTURE.network(path, "velocity"), path, "velocity")
    integrator = dx.Churn(dx.EulerAncestral(1.0), s_churn=4.0)
    den = dx.Denoiser(predictor, integrator, dx.UniformTimer(10), x0_shape=(2,))
    one = den.generate(jr.PRNGKey(3), 1).samples
    many = den.generate(jr.PRNGKey(3), 64).samples
    np.testing.assert_allclose(many[0], one[0], rtol=1e-13, atol=1e-14)
    assert np.unique(np.asarray(many[:, 0])).size == 64


@pytest.mark.parametrize("integrator", [dx.EulerMaruyama(), dx.EulerAncestral(), dx.DPMpp2MSDE()], ids=repr)
def test_every_step_splits_the_key(integrator):
    """Each step uses a fresh key: the carried key changes, and two steps from the same point with
    the carried keys draw different noise."""
    path = PATHS["edm"]
    predictor = dx.Predictor(GAUSS.network(path, "x0"), path, "x0")
    x, key = jnp.asarray([0.3, -0.2]), jr.PRNGKey(0)
    state = integrator.init(predictor, x, key, jnp.asarray([2.0, 1.0, 0.5]))
    s1 = integrator.step(predictor, state, 2.0, 1.0)
    s2 = integrator.step(predictor, state.replace(key=s1.key), 2.0, 1.0)
    assert not np.array_equal(s1.key, key)
    assert np.abs(np.asarray(s1.position - s2.position)).min() > 1e-6
    assert int(s1.nfe) == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="noise_scale"):
        dx.EulerMaruyama(-0.1)
    with pytest.raises(ValueError, match="eta"):
        dx.EulerAncestral(-1.0)
    with pytest.raises(ValueError, match="eta"):
        dx.DPMpp2MSDE(-1.0)
    with pytest.raises(ValueError, match="s_churn"):
        dx.Churn(dx.Heun(), s_churn=-1.0)
    with pytest.raises(ValueError, match="s_tmin"):
        dx.Churn(dx.Heun(), s_churn=1.0, s_tmin=2.0, s_tmax=1.0)
    with pytest.raises(ValueError, match="s_noise"):
        dx.Churn(dx.Heun(), s_churn=1.0, s_noise=0.0)
    with pytest.raises(TypeError, match="AbstractIntegrator"):
        dx.Churn(lambda x: x, s_churn=1.0)
