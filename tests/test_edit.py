"""Editing (`diffuse_eqx._edit`): starting from given particles, exact forward noising, ODE inversion
(order, round trip, fixed-point refinement), SDEdit, RF-Inversion, FlowEdit and blending, checked
where the answer is known: Gaussian data (closed-form ODE map, float64) and Gaussian mixtures
(exact velocity, exact conditionals)."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import PATHS, circle_mixture, diagonal_gaussian, exact_pf_ode, warped_grid
from hypothesis import given, settings, strategies as st

import diffuse_eqx as dx


FLOW = dx.Flow()
CIRCLE = circle_mixture()
PRED = dx.Predictor(CIRCLE.network(FLOW), FLOW)
X_DATA = CIRCLE.sample(jr.key(1), 256)
STEPS = (32, 64, 128, 256)


def rms(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.sqrt(np.mean(np.sum((a - b).reshape(len(a), -1) ** 2, -1))))


def round_trip(integrator, n_steps, fixed_point, x=X_DATA, pred=PRED, reduce=None) -> float:
    """Invert `x`, generate from the latents on the same grid: the RMS distance to `x` (or
    `reduce` of the per-particle distances)."""
    timer = dx.UniformTimer(n_steps)
    inv = dx.invert(integrator, pred, timer, x, fixed_point=fixed_point)
    back = dx.Denoiser(pred, integrator, timer, x.shape[1:]).generate(jr.key(0), len(x), x_init=inv.latents)
    if reduce is None:
        return rms(back.samples, x)
    return float(reduce(np.linalg.norm(np.asarray(back.samples - x).reshape(len(x), -1), axis=-1)))


# ------------------------------------------------------------------------------- start anywhere


@pytest.mark.parametrize("path_name", ["flow", "vp_linear", "edm"])
def test_noise_to_has_the_path_marginal(path_name):
    """Exact data noised to t has the marginal p_t: mean and covariance within 4 standard errors."""
    path, gm = PATHS[path_name], circle_mixture()
    n = 20_000
    x0 = gm.sample(jr.key(3), n)
    for frac in (0.1, 0.5, 0.9):
        t = frac * float(path.t_max)
        xt = np.asarray(dx.noise_to(path, x0, t, jr.key(4)))
        marginal = gm.marginal(path, t)
        exact = np.asarray(marginal.sample(jr.key(5), 200_000))
        mean, cov = exact.mean(0), np.cov(exact.T)
        se_mean = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(xt.mean(0) - mean) <= 4 * se_mean), (t, xt.mean(0), mean)
        # the standard error of a variance estimate: sqrt((m4 - var^2) / n)
        m4 = np.mean((exact - mean) ** 4, 0)
        se_var = np.sqrt((m4 - np.diag(cov) ** 2) / n)
        assert np.all(np.abs(np.var(xt, 0) - np.diag(cov)) <= 4 * se_var), (t, np.var(xt, 0), np.diag(cov))


def test_noise_to_is_exactly_alpha_x0_plus_sigma_eps():
    x0 = X_DATA[:8]
    xt = dx.noise_to(FLOW, x0, 0.3, jr.key(0))
    eps = jr.normal(jr.key(0), x0.shape, x0.dtype)
    np.testing.assert_array_equal(np.asarray(xt), np.asarray(0.7 * x0 + 0.3 * eps))
    with pytest.raises(ValueError, match=r"outside \[0, t_max"):
        dx.noise_to(FLOW, x0, 1.5, jr.key(0))


def test_generate_from_given_particles_matches_integrate():
    """`generate(x_init=...)` on a grid below t_max is `integrate` of each given particle."""
    timer = dx.CustomTimer(np.linspace(0.6, 0.0, 13))
    x_init = dx.noise_to(FLOW, X_DATA[:16], 0.6, jr.key(2))
    out = dx.Denoiser(PRED, dx.Heun(), timer, (2,)).generate(jr.key(0), 16, x_init=x_init, keep_history=True)
    one = eqx.filter_jit(dx.integrate)
    for i in (0, 7, 15):
        x_end, nfe, _ = one(dx.Heun(), PRED, timer.times(), x_init[i], jr.key(0))
        np.testing.assert_allclose(np.asarray(out.samples[i]), np.asarray(x_end), rtol=0, atol=1e-12)
        assert int(out.nfe) == int(nfe)
    np.testing.assert_array_equal(np.asarray(out.history[0]), np.asarray(x_init))


def test_given_particles_are_checked():
    den = dx.Denoiser(PRED, dx.Euler(), dx.UniformTimer(4, t_max=0.5), (2,))
    with pytest.raises(ValueError, match=r"x_init must have shape \(n_particles, \*x0_shape\) = \(3, 2\)"):
        den.generate(jr.key(0), 3, x_init=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="x_init has NaN"):
        den.generate(jr.key(0), 2, x_init=jnp.full((2, 2), jnp.nan))
    # (the suite's type checker names the parameter first; without it, the library's own check does)
    with pytest.raises(TypeError, match="x_init"):
        den.generate(jr.key(0), 2, x_init=jnp.zeros((2, 2), jnp.int32))


# ---------------------------------------------------------------------------------- inversion


# (DDIM is Euler's step on `Flow`, written in (x0, noise): a fixed case below)
INVERTERS = [dx.Euler(), dx.Heun(), dx.DPMpp2M()]
solve_invert = dx.invert


def inversion_order(integrator, mean, var, z, grid_of_n):
    """Slope of log(error of `invert` to the exact ODE map) against log(steps), sign flipped."""
    gmm = diagonal_gaussian(mean, var)
    pred = dx.Predictor(gmm.network(FLOW), FLOW)
    errors = []
    for n in STEPS:
        ts = np.asarray(grid_of_n(n))
        t_hi, t_lo = float(ts[0]), float(ts[-1])
        sd = np.sqrt((1 - t_lo) ** 2 * var + t_lo**2)
        x_lo = (1 - t_lo) * mean + sd * z
        inv = solve_invert(integrator, pred, jnp.asarray(ts), jnp.asarray(x_lo)[None])
        exact = exact_pf_ode(FLOW, mean, var, x_lo, t_lo, t_hi)
        errors.append(np.linalg.norm(np.asarray(inv.latents[0]) - exact))
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0], errors


gaussians = st.integers(1, 2).flatmap(
    lambda d: st.tuples(
        st.lists(st.floats(-3, 3), min_size=d, max_size=d).map(np.asarray),
        # variances near 1 leave the velocity nearly affine in x: the leading error term nearly
        # vanishes (as in tests/test_order.py; Heun's inversion measured 3.3 at var = 1.5)
        st.lists(st.floats(0.05, 0.6) | st.floats(2.0, 4.0), min_size=d, max_size=d).map(np.asarray),
        st.lists(st.floats(0.5, 2.0), min_size=d, max_size=d).map(np.asarray),
        st.lists(st.sampled_from([-1.0, 1.0]), min_size=d, max_size=d).map(np.asarray),
    )
)


@pytest.mark.parametrize("integrator", INVERTERS, ids=lambda i: type(i).__name__)
@settings(max_examples=5)  # (the samplers' order tests run the suite's 10 per integrator)
@given(gaussian=gaussians, t_hi=st.floats(0.6, 0.95), t_lo=st.floats(0.05, 0.3), kappa=st.floats(-1.5, 1.5))
def test_inversion_converges_at_the_declared_order(integrator, gaussian, t_hi, t_lo, kappa):
    """`invert` from t_lo up to t_hi against the closed-form ODE map: slope within 0.3 of `order`."""
    mean, var, z_abs, z_sign = gaussian
    order, errors = inversion_order(integrator, mean, var, z_abs * z_sign, warped_grid(t_hi, t_lo, kappa))
    assert abs(order - integrator.order) <= 0.3, (order, errors)


@pytest.mark.parametrize(
    "integrator",
    [dx.DDIM(), dx.DiffraxIntegrator(diffrax.Ralston()), dx.DiffraxIntegrator(diffrax.Bosh3())],
    ids=["DDIM", "Ralston", "Bosh3"],
)
def test_inversion_on_a_fixed_case_converges_at_the_order(integrator):
    """DDIM and diffrax solvers on one Gaussian and one warped grid. (Not diffrax's Midpoint: on
    Gaussian data along `Flow` its O(h^2) error term vanishes, forward too, and it measures 3.)"""
    mean, var, z = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0]), np.asarray([1.2, -0.8])
    order, errors = inversion_order(integrator, mean, var, z, warped_grid(0.9, 0.1, 0.5))
    assert abs(order - integrator.order) <= 0.3, (order, errors)


def test_inversion_of_the_full_grid_reaches_the_exact_noise():
    """From data at t = 0 to noise at t = 1 (both endpoint steps): Heun's latents converge to the
    closed-form ODE map, at order >= 1.4 (the two first-order endpoint steps)."""
    mean, var = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0])
    pred = dx.Predictor(diagonal_gaussian(mean, var).network(FLOW), FLOW)
    x0 = mean + np.sqrt(var) * np.asarray([1.2, -0.8])
    errors = []
    for n in STEPS:
        inv = dx.invert(dx.Heun(), pred, dx.UniformTimer(n), jnp.asarray(x0)[None])
        errors.append(
            np.linalg.norm(np.asarray(inv.latents[0]) - exact_pf_ode(FLOW, mean, var, x0, 0.0, 1.0))
        )
    order = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    assert order >= 1.4 and errors[-1] < 1e-4, (order, errors)


@pytest.mark.parametrize(
    "integrator", [dx.Euler(), dx.Heun(), dx.DDIM(), dx.DPMpp2M()], ids=lambda i: type(i).__name__
)
def test_fixed_point_refinement_tightens_the_round_trip(integrator):
    """Invert, then generate on the same 20-step grid: refinement (3 iterations) cuts the round-trip
    error by at least 10x, and more iterations cut it further. On the circle of std 0.3 a few
    particles between components are ill-conditioned (the flow map from noise is steep there: the
    round trip of particle 160 stays 0.97 for Heun), so there the median is compared; on std 0.5,
    the RMS."""
    wide = circle_mixture(std=0.5)
    pred = dx.Predictor(wide.network(FLOW), FLOW)
    x = wide.sample(jr.key(1), 256)
    plain, refined = round_trip(integrator, 20, 0, x, pred), round_trip(integrator, 20, 3, x, pred)
    assert refined <= plain / 10, (plain, refined)
    medians = [round_trip(integrator, 20, k, X_DATA, PRED, np.median) for k in (0, 3, 6)]
    assert medians[1] <= medians[0] / 10 and medians[2] <= medians[1] / 10, medians


def test_history_runs_from_the_latents_to_the_input():
    inv = dx.invert(dx.DPMpp2M(), PRED, dx.UniformTimer(8), X_DATA[:4], keep_history=True)
    assert inv.history.shape == (9, 4, 2)
    np.testing.assert_array_equal(np.asarray(inv.history[0]), np.asarray(inv.latents))
    np.testing.assert_array_equal(np.asarray(inv.history[-1]), np.asarray(X_DATA[:4]))
    assert int(inv.nfe) == 8


@pytest.mark.parametrize(
    "integrator",
    [dx.DDIM(eta=1.0), dx.EulerMaruyama(), dx.EulerAncestralRF()],
    ids=lambda i: type(i).__name__,
)
def test_inversion_refuses_a_stochastic_integrator(integrator):
    with pytest.raises(ValueError, match="is stochastic"):
        dx.invert(integrator, PRED, dx.UniformTimer(4), X_DATA[:2])


def test_inversion_arguments_are_checked():
    with pytest.raises(ValueError, match="strictly decreasing"):
        dx.invert(dx.Euler(), PRED, jnp.asarray([0.0, 0.5, 1.0]), X_DATA[:2])
    with pytest.raises(ValueError, match="refine='step' needs a single-step"):
        dx.invert(dx.DPMpp2M(), PRED, dx.UniformTimer(4), X_DATA[:2], fixed_point=2, refine="step")
    with pytest.raises(ValueError, match="fixed_point must be an integer >= 0"):
        dx.invert(dx.Euler(), PRED, dx.UniformTimer(4), X_DATA[:2], fixed_point=-1)
    with pytest.raises((ValueError, TypeError), match="x0"):  # the suite's type checker, or ours
        dx.invert(dx.Euler(), PRED, dx.UniformTimer(4), jnp.zeros(()))


# ------------------------------------------------------------------------------------- edits


@functools.lru_cache
def sw_floor(n: int) -> float:
    """The mean SW between 8 pairs of independent exact sets of `n` samples of the circle."""
    pairs = [(CIRCLE.sample(jr.key(20 + 2 * i), n), CIRCLE.sample(jr.key(21 + 2 * i), n)) for i in range(8)]
    return float(np.mean([dx.sliced_wasserstein(a, b, jr.key(0)) for a, b in pairs]))


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_sdedit_of_exact_data_returns_the_data_distribution(strength):
    """SDEdit with the exact predictor keeps exact data exact (in law): SW to fresh exact samples
    within 2x the noise floor of two exact sets (10 000 samples: the SW of a few thousand is
    dominated by how many land in each component)."""
    n = 10_000
    x = CIRCLE.sample(jr.key(10), n)
    out = dx.SDEdit(strength, dx.Heun()).edit(jr.key(11), x, PRED, dx.UniformTimer(20))
    assert float(out.t_start) == pytest.approx(round(20 * strength) / 20)  # the uniform grid's time
    sw = float(dx.sliced_wasserstein(out.samples, CIRCLE.sample(jr.key(12), n), jr.key(0)))
    assert sw <= 2 * sw_floor(n), (sw, sw_floor(n))
    # a low strength keeps each particle near its input; strength 1 forgets it (two independent
    # points of the circle of radius 4 are sqrt(32) = 5.7 apart in RMS)
    moved = rms(out.samples, x)
    assert moved < 1.0 if strength == 0.3 else True, moved
    assert moved > 3.0 if strength == 1.0 else True, moved


def test_flowedit_with_source_equal_to_target_returns_the_input_exactly():
    out = dx.FlowEdit(strength=0.8, n_avg=2).edit(jr.key(0), X_DATA[:32], PRED, PRED, dx.UniformTimer(10))
    np.testing.assert_array_equal(np.asarray(out.samples), np.asarray(X_DATA[:32]))
    assert int(out.nfe) == 8 * 2 * 2  # 8 steps, 2 noises, 2 evaluations each


def test_flowedit_moves_towards_the_target_condition():
    """Source: the mixture; target: the same mixture shifted by (2, 0). The edit of exact source
    samples lands near the target's mass (the component means shift by 2)."""
    shifted = dx.GaussianMixture(CIRCLE.weights, CIRCLE.means + jnp.asarray([2.0, 0.0]), CIRCLE.covs)
    target = dx.Predictor(shifted.network(FLOW), FLOW)
    out = dx.FlowEdit(strength=0.9).edit(jr.key(0), X_DATA, PRED, target, dx.UniformTimer(20))
    shift = np.asarray(out.samples - X_DATA).mean(0)
    assert abs(shift[0] - 2.0) < 0.3 and abs(shift[1]) < 0.3, shift


def test_rf_inversion_without_control_is_inversion_then_generation():
    timer = dx.UniformTimer(12)
    out = dx.RFInversion(gamma=0.0, eta=0.0, integrator=dx.Heun()).edit(
        jr.key(0), X_DATA[:16], PRED, PRED, timer
    )
    inv = dx.invert(dx.Heun(), PRED, timer, X_DATA[:16], key=jr.key(0))
    regen = dx.Denoiser(PRED, dx.Heun(), timer, (2,)).generate(jr.key(0), 16, x_init=inv.latents)
    np.testing.assert_allclose(np.asarray(out.samples), np.asarray(regen.samples), rtol=0, atol=1e-12)
    assert int(out.nfe) == int(inv.nfe) + int(regen.nfe)


def test_anchored_fields_reach_their_anchors():
    """gamma = 1: the inversion lands on the noise sample; eta = 1: generation lands on the input
    (straight lines, which Euler integrates exactly)."""
    eps = jr.normal(jr.key(5), (2,))
    toward_noise = dx.Anchored(PRED, eps, 1.0, "noise")
    inv = dx.invert(dx.Euler(), toward_noise, dx.UniformTimer(7), X_DATA[:1])
    np.testing.assert_allclose(np.asarray(inv.latents[0]), np.asarray(eps), rtol=0, atol=1e-12)
    toward_data = dx.Anchored(PRED, X_DATA[3], 1.0, "data")
    x_end, _, _ = dx.integrate(dx.Euler(), toward_data, dx.UniformTimer(7).times(), eps, jr.key(0))
    np.testing.assert_allclose(np.asarray(x_end), np.asarray(X_DATA[3]), rtol=0, atol=1e-12)


def test_rf_inversion_control_trades_faithfulness_for_the_edit():
    """eta pulls the output towards the input: the distance to the input falls as eta grows."""
    shifted = dx.GaussianMixture(CIRCLE.weights, CIRCLE.means + jnp.asarray([2.0, 0.0]), CIRCLE.covs)
    target = dx.Predictor(shifted.network(FLOW), FLOW)
    dist = []
    for eta in (0.0, 0.5, 1.0):
        out = dx.RFInversion(gamma=0.5, eta=eta, stop=0.5).edit(
            jr.key(0), X_DATA[:64], PRED, target, dx.UniformTimer(20)
        )
        dist.append(rms(out.samples, X_DATA[:64]))
    assert dist[0] > dist[1] > dist[2], dist


def test_blended_keeps_the_unmasked_region_exactly_and_approaches_the_conditional():
    """Keep coordinate 0 of one point, generate coordinate 1: the kept coordinate is the original
    bit for bit; the generated one is closer (SW) to the exact conditional than the prior is."""
    original = jnp.asarray([4.0 * np.cos(np.pi / 4), 4.0 * np.sin(np.pi / 4)])
    mask = jnp.asarray([0.0, 1.0])
    n = 2000
    den = dx.Denoiser(PRED, dx.Blended(dx.Heun(), original, mask), dx.UniformTimer(30), (2,))
    out = den.generate(jr.key(0), n)
    np.testing.assert_array_equal(np.asarray(out.samples[:, 0]), np.full(n, float(original[0])))
    conditional = CIRCLE.posterior(jnp.asarray([[1.0, 0.0]]), original[:1], 1e-4)
    exact = conditional.sample(jr.key(1), n)[:, 1:]
    prior = CIRCLE.sample(jr.key(2), n)[:, 1:]
    sw_blend = float(dx.sliced_wasserstein(out.samples[:, 1:], exact, jr.key(0)))
    sw_prior = float(dx.sliced_wasserstein(prior, exact, jr.key(0)))
    assert sw_blend < sw_prior, (sw_blend, sw_prior)


def test_blended_with_nothing_kept_is_plain_generation():
    den = dx.Denoiser(PRED, dx.Heun(), dx.UniformTimer(10), (2,))
    blended = eqx.tree_at(lambda d: d.integrator, den, dx.Blended(dx.Heun(), jnp.zeros(2), jnp.ones(2)))
    np.testing.assert_array_equal(
        np.asarray(den.generate(jr.key(0), 64).samples), np.asarray(blended.generate(jr.key(0), 64).samples)
    )


def test_edit_arguments_are_checked():
    with pytest.raises(ValueError, match=r"SDEdit strength must be in \(0, 1\]"):
        dx.SDEdit(0.0)
    with pytest.raises(ValueError, match="runs round"):
        dx.SDEdit(0.01).edit(jr.key(0), X_DATA[:2], PRED, dx.UniformTimer(10))
    with pytest.raises(ValueError, match="n_min=9 exceeds"):
        dx.FlowEdit(strength=0.5, n_min=9).edit(jr.key(0), X_DATA[:2], PRED, PRED, dx.UniformTimer(10))
    with pytest.raises(ValueError, match="stop=0.1 must be >= start=0.5"):
        dx.RFInversion(start=0.5, stop=0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        dx.Blended(dx.Euler(), jnp.zeros(2), jnp.ones(3))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        dx.Blended(dx.Euler(), jnp.zeros(2), jnp.asarray([2.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        dx.FlowEdit().edit(jr.key(0), jnp.full((2, 2), jnp.nan), PRED, PRED, dx.UniformTimer(10))
    jax.block_until_ready(X_DATA)
