"""Guidance modules against exact references.

Both models are exact Gaussian velocity fields on the `Flow` path, so every CFG-type guided
probability-flow ODE is linear in x and transports N(0, I) at t = 1 to a Gaussian whose mean and
covariance solve the moment ODE dm/dt = A m + b, dC/dt = A C + C A^T (integrated with diffrax Dopri8
at tolerance 1e-12). The samplers' output is then checked in two ways: the discrete sampler is an
affine map x_1 -> M x_1 + c, whose exact moments (c, M M^T) must be within a small fraction of a
Monte Carlo standard error of the ODE's (the discretisation error is negligible), and 10 000 sampled
particles must match the ODE's moments within 4 Monte Carlo standard errors.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffuse_eqx as dx


PATH = dx.Flow()
N = 10_000
N_STEPS = 64
KEY = jr.key(1)
MU_U, COV_U = np.array([0.0, 0.0]), np.array([[1.0, 0.3], [0.3, 0.7]])  # unconditional
MU_C, COV_C = np.array([1.5, -0.5]), np.array([[0.4, -0.1], [-0.1, 0.3]])  # conditional
MU_W, COV_W = np.array([1.0, -0.2]), np.array([[0.8, 0.0], [0.0, 0.6]])  # autoguidance's weak model


def gaussian(mean, cov) -> dx.GaussianMixture:
    return dx.GaussianMixture(np.ones(1), mean[None], cov[None])


G_U, G_C, G_W = gaussian(MU_U, COV_U), gaussian(MU_C, COV_C), gaussian(MU_W, COV_W)


def gaussian_velocity(x, t, g):
    """network(x, t, c): the exact velocity of the Gaussian `c` (a GaussianMixture is a pytree, so
    the condition can be stacked and vmapped over)."""
    return g.velocity(PATH, x, t)


MODEL = dx.ConditionalNetwork(gaussian_velocity, PATH, cond=G_C, null=G_U)
COND = dx.Predictor(G_C.network(PATH), PATH)
UNCOND = dx.Predictor(G_U.network(PATH), PATH)
WEAK = dx.Predictor(G_W.network(PATH), PATH)


# --- the exact reference: moment ODE of the guided linear probability-flow ODE ----------------------


def flow_affine(mean, cov, t):
    """The exact Flow velocity of N(mean, cov) is A x + b: with a = 1 - t, s = t, C = a^2 cov + s^2 I,
    x0 = mean + a cov C^-1 (x - a mean), eps = s C^-1 (x - a mean), v = -x0 + eps."""
    a, s = 1 - t, t
    eye = jnp.eye(2)
    mat = (-a * cov + s * eye) @ jnp.linalg.inv(a**2 * cov + s**2 * eye)
    return mat, -mean - a * mat @ mean


def moment_field(t, y, args):
    (mu_c, cov_c, mu_u, cov_u), w = args
    m, c = y
    a_c, b_c = flow_affine(mu_c, cov_c, t)
    a_u, b_u = flow_affine(mu_u, cov_u, t)
    a, b = a_u + w * (a_c - a_u), b_u + w * (b_c - b_u)
    return a @ m + b, a @ c + c @ a.T


@jax.jit
def moment_segment(y, t0, t1, models, w):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(moment_field),
        diffrax.Dopri8(),
        t0,
        t1,
        -0.01,
        y,
        args=(models, w),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
        max_steps=100_000,
    )
    return jax.tree.map(lambda v: v[-1], sol.ys)


def guided_moments(segments, models=(MU_C, COV_C, MU_U, COV_U)):
    """Mean and covariance at t = 0 from N(0, I) at t = 1, through `segments` of (t0, t1, scale)."""
    y = (jnp.zeros(2), jnp.eye(2))
    models = tuple(jnp.asarray(v) for v in models)
    for t0, t1, w in segments:
        y = moment_segment(y, t0, t1, models, w)
    return np.asarray(y[0]), np.asarray(y[1])


# --- the sampler side ---------------------------------------------------------------------------------


@eqx.filter_jit
def discrete_affine_map(predictor, ts):
    """The deterministic sampler is affine on Gaussian models: x_1 -> M x_1 + c (exactly)."""
    run = jax.vmap(lambda x: dx.integrate(dx.Heun(), predictor, ts, x, KEY)[0])
    out = run(jnp.concatenate([jnp.zeros((1, 2)), jnp.eye(2)]))
    return out[1:].T - out[0][:, None], out[0]


def z_scores(mean, cov, ref_mean, ref_cov, n=N):
    """Deviations of a mean and covariance from the reference in Monte Carlo standard errors of n
    Gaussian samples (Var(S_ij) = (C_ii C_jj + C_ij^2) / n): mean 0, 1, covariance 00, 01, 11."""
    var = np.diag(ref_cov)
    z_mean = (mean - ref_mean) / np.sqrt(var / n)
    z_cov = (cov - ref_cov) / np.sqrt((np.outer(var, var) + ref_cov**2) / n)
    return np.concatenate([z_mean, z_cov[np.triu_indices(2)]])


def check_moments(predictor, timer, mean, cov, label):
    """The discretisation error within 0.25 standard errors, the sampling error within 4."""
    mat, shift = discrete_affine_map(predictor, timer.times())
    disc = z_scores(np.asarray(shift), np.asarray(mat @ mat.T), mean, cov)
    out = dx.Denoiser(predictor, dx.Heun(), timer, (2,)).generate(KEY, N)
    samples = np.asarray(out.samples)
    z = z_scores(samples.mean(0), np.cov(samples.T), mean, cov)
    print(f"{label}: z-scores (mean, cov 00 01 11) {np.round(z, 2)}; discretisation {np.round(disc, 3)}")
    assert np.all(np.abs(disc) < 0.25), disc
    assert np.all(np.abs(z) < 4), z
    return out


def heun_nfe(grid, guided=lambda t: True):
    """Heun evaluates at both ends of every step except t = 0: 2 network evaluations where
    guidance is on, 1 where it is off."""
    evals = np.concatenate([grid[:-1], grid[1:-1]])
    on = np.asarray([guided(t) for t in evals])
    return int(2 * on.sum() + (~on).sum())


# --- the exact moment tests -------------------------------------------------------------------------


@pytest.mark.slow
def test_moment_reference_at_scale_one_is_the_conditional_gaussian():
    mean, cov = guided_moments([(1.0, 0.0, 1.0)])
    np.testing.assert_allclose(mean, MU_C, atol=1e-9)
    np.testing.assert_allclose(cov, COV_C, atol=1e-9)


@pytest.mark.slow
def test_cfg_moments_match_the_guided_ode():
    timer = dx.UniformTimer(N_STEPS)
    for scale in (1.0, 2.0, 4.0):
        mean, cov = guided_moments([(1.0, 0.0, scale)])
        out = check_moments(dx.CFG(MODEL, jnp.asarray(scale)), timer, mean, cov, f"CFG w={scale}")
        assert int(out.nfe) == heun_nfe(np.asarray(timer.times()))
        if scale == 1.0:
            np.testing.assert_allclose(mean, MU_C, atol=1e-9)


@pytest.mark.slow
def test_guidance_interval_moments_match_the_piecewise_ode():
    """CFG with w = 3 for 0.25 < t <= 0.75, conditional elsewhere. The guided velocity jumps at both
    ends; the grid has a step of 1e-9 next to each (the only place Heun evaluates on the other
    side), so the jumps cost nothing measurable."""
    scale, t_lo, t_hi = 3.0, 0.25, 0.75
    grid = np.linspace(1, 0, N_STEPS + 1)
    grid = np.sort(np.concatenate([grid, [t_hi + 1e-9, t_lo + 1e-9]]))[::-1]
    assert t_hi in grid and t_lo in grid
    mean, cov = guided_moments([(1.0, t_hi, 1.0), (t_hi, t_lo, scale), (t_lo, 0.0, 1.0)])
    guided = dx.GuidanceInterval(MODEL, jnp.asarray(scale), t_lo, t_hi)
    out = check_moments(guided, dx.CustomTimer(grid), mean, cov, "GuidanceInterval w=3 (0.25, 0.75]")
    assert int(out.nfe) == heun_nfe(grid, lambda t: t_lo < t <= t_hi)  # 2 inside, 1 outside
    plain = guided_moments([(1.0, 0.0, scale)])[0]
    assert np.abs(mean - plain).max() > 0.3  # the interval matters: not the same law as CFG


@pytest.mark.slow
def test_autoguidance_moments_match_the_guided_ode():
    timer = dx.UniformTimer(N_STEPS)
    mean, cov = guided_moments([(1.0, 0.0, 2.5)], models=(MU_C, COV_C, MU_W, COV_W))
    check_moments(dx.AutoGuidance(COND, WEAK, jnp.asarray(2.5)), timer, mean, cov, "AutoGuidance w=2.5")


def test_every_method_at_scale_one_is_the_conditional_model():
    """At w = 1 every guidance returns the conditional prediction exactly, so it samples the
    conditional law (whose moments the CFG test checks at w = 1): the same particles as the
    conditional model, at twice its cost (the interval: 2 inside, 1 outside)."""
    timer, n = dx.UniformTimer(16), 500
    evals = np.asarray(timer.times())[:-1]  # Euler evaluates at the start of each step
    reference = dx.Denoiser(COND, dx.Euler(), timer, (2,)).generate(KEY, n)
    assert int(reference.nfe) == 16
    one = jnp.asarray(1.0)
    for guided, nfe in (
        (dx.CFG(MODEL, one), 32),
        (dx.GuidanceInterval(MODEL, one, 0.2, 0.7), 16 + int(((evals > 0.2) & (evals <= 0.7)).sum())),
        (dx.APG(MODEL, one, eta=0.3, norm_threshold=0.5, momentum=-0.5), 32),
        (dx.AutoGuidance(COND, WEAK, one), 32),
    ):
        out = dx.Denoiser(guided, dx.Euler(), timer, (2,)).generate(KEY, n)
        name = type(guided).__name__
        np.testing.assert_allclose(out.samples, reference.samples, rtol=0, atol=1e-12, err_msg=name)
        assert int(out.nfe) == nfe, name


# --- exact reductions ---------------------------------------------------------------------------------


POINTS = jr.normal(jr.key(5), (6, 2)) * 1.5
TIMES = jnp.asarray([1.0, 0.93, 0.6, 0.31, 0.05, 0.002])


@eqx.filter_jit
def predictions(predictor):
    return jax.vmap(predictor.predict)(POINTS, TIMES)


@eqx.filter_jit
def both_predictions(model):
    return jax.vmap(lambda x, t: model.evaluate(x, t, model.init(x)))(POINTS, TIMES)


def test_one_batched_call_two_calls_and_two_predictors_agree():
    c0, u0, _, n0 = both_predictions(MODEL)
    separate = dx.ConditionalNetwork(gaussian_velocity, PATH, cond=G_C, null=G_U, batch=False)
    for model in (separate, dx.PredictorPair(COND, UNCOND)):
        c1, u1, _, n1 = both_predictions(model)
        for a, b in ((c0, c1), (u0, u1)):
            np.testing.assert_allclose(a.x0, b.x0, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(a.noise, b.noise, rtol=1e-12, atol=1e-12)
        assert np.all(n0 == 2) and np.all(n1 == 2)
    np.testing.assert_allclose(c0.x0, predictions(COND).x0, rtol=1e-12)
    np.testing.assert_allclose(u0.noise, predictions(UNCOND).noise, rtol=1e-12, atol=1e-12)


@eqx.filter_jit
def all_quantities(predictor, x, t):
    return {q: getattr(predictor, q)(x, t) for q in ("x0", "noise", "velocity", "score")}


def test_cfg_is_the_same_affine_map_of_every_parameterization():
    w, x, t = jnp.asarray(2.7), POINTS[2], TIMES[2]
    guided, c, u = (all_quantities(p, x, t) for p in (dx.CFG(MODEL, w), COND, UNCOND))
    for q in guided:
        np.testing.assert_allclose(guided[q], u[q] + w * (c[q] - u[q]), rtol=1e-12, err_msg=q)


def test_apg_with_eta_one_and_no_threshold_or_momentum_is_cfg():
    apg, cfg = dx.APG(MODEL, 3.0, eta=1.0), dx.CFG(MODEL, 3.0)
    a, c = predictions(apg), predictions(cfg)
    np.testing.assert_allclose(a.x0, c.x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.noise, c.noise, rtol=1e-12, atol=1e-12)
    timer = dx.UniformTimer(16)
    a = dx.Denoiser(apg, dx.DPMpp2M(), timer, (2,)).generate(KEY, 200)
    c = dx.Denoiser(cfg, dx.DPMpp2M(), timer, (2,)).generate(KEY, 200)
    np.testing.assert_allclose(a.samples, c.samples, rtol=1e-11, atol=1e-11)
    assert int(a.nfe) == int(c.nfe) == 2 * 16


@eqx.filter_jit
def euler_run(predictor, ts, x):
    return dx.integrate(dx.Euler(), predictor, ts, x, KEY)[:2]


def test_apg_matches_a_reference_loop_with_momentum_and_threshold():
    """Euler with APG against a plain loop of the paper's update (the diffusers `normalized_guidance`
    with `pred_cond + (w - 1) * update`), the running average updated once per evaluation."""
    w, eta, r, beta, n_steps = 4.0, 0.2, 0.4, -0.5, 12
    ts = np.linspace(1.0, 0.0, n_steps + 1)
    x_start = np.array([0.7, -1.2])
    apg = dx.APG(MODEL, w, eta=eta, norm_threshold=r, momentum=jnp.asarray(beta))
    ours, nfe = euler_run(apg, jnp.asarray(ts), jnp.asarray(x_start))
    assert int(nfe) == 2 * n_steps
    x, average = x_start, np.zeros(2)
    for t, s in zip(ts[:-1], ts[1:]):
        x0_c, x0_u = (np.asarray(g.x0(PATH, jnp.asarray(x), t)) for g in (G_C, G_U))
        average = (x0_c - x0_u) + beta * average
        diff = average * min(1.0, r / np.linalg.norm(average))
        parallel = (diff @ x0_c) / (x0_c @ x0_c) * x0_c
        x0 = x0_c + (w - 1) * ((diff - parallel) + eta * parallel)
        noise = (x - (1 - t) * x0) / t  # the noise consistent with x0 at x (Flow)
        x = x + (s - t) * (noise - x0)  # Euler on v = -x0 + noise
    np.testing.assert_allclose(ours, x, rtol=1e-10)
    no_momentum = dx.APG(MODEL, w, eta=eta, norm_threshold=r, momentum=jnp.asarray(0.0))
    assert (
        np.abs(np.asarray(euler_run(no_momentum, jnp.asarray(ts), jnp.asarray(x_start))[0]) - x).max() > 1e-2
    )


def test_cfgpp_at_lambda_zero_is_unconditional_sampling():
    timer = dx.UniformTimer(16)
    for integrator in (dx.DDIM(eta=1.0), dx.Euler()):
        ours = dx.Denoiser(dx.CFGPlusPlus(MODEL, 0.0), integrator, timer, (2,)).generate(KEY, 200)
        ref = dx.Denoiser(UNCOND, integrator, timer, (2,)).generate(KEY, 200)
        np.testing.assert_allclose(ours.samples, ref.samples, rtol=1e-12, atol=1e-12)
        assert int(ours.nfe) == 2 * int(ref.nfe) == 2 * 16


@eqx.filter_jit
def ddim_steps(predictor, t, s, x):
    return jax.vmap(lambda t, s: dx.integrate(dx.DDIM(), predictor, jnp.stack([t, s]), x, KEY)[0])(t, s)


def test_cfgpp_on_ddim_is_cfg_with_a_step_dependent_scale():
    """x_s = a_s x0_lam + s_s eps_u is the DDIM step of CFG with w = lam / (1 - e^-h), where
    e^-h = a_t s_s / (a_s s_t)."""
    lam, x = 0.6, POINTS[1]
    t, s = jnp.asarray([1.0, 0.7, 0.3, 0.1]), jnp.asarray([0.9, 0.55, 0.29, 0.0])
    w = lam / (1 - (1 - t) * s / ((1 - s) * t))
    pp = ddim_steps(dx.CFGPlusPlus(MODEL, lam), t, s, x)
    cfg = jax.vmap(lambda w, t, s: ddim_steps(dx.CFG(MODEL, w), t[None], s[None], x)[0])(w, t, s)
    np.testing.assert_allclose(pp, cfg, rtol=1e-11, atol=1e-11)
    assert np.abs(np.asarray(pp - ddim_steps(dx.CFG(MODEL, lam), t, s, x))).max() > 1e-2


@eqx.filter_jit
def velocities_over_scales(scales):
    return jax.vmap(lambda w: dx.CFG(MODEL, w).velocity(POINTS[0], 0.4))(scales)


def test_hyperparameters_are_pytree_leaves():
    scales = jnp.asarray([0.0, 1.0, 2.5])
    c, u = COND.velocity(POINTS[0], 0.4), UNCOND.velocity(POINTS[0], 0.4)
    for w, v in zip(scales, velocities_over_scales(scales)):
        np.testing.assert_allclose(v, u + w * (c - u), rtol=1e-12)


# --- cost and errors ----------------------------------------------------------------------------------


def test_nfe_counts_every_evaluation_of_every_integrator():
    """8 uniform steps from t = 1: DPM-Solver++(2S) takes first-order steps from alpha = 0 and to
    sigma = 0 (1 evaluation each), so 14 predictor calls; each guided call costs 2."""
    guided = dx.CFG(MODEL, jnp.asarray(2.0))
    for integrator, calls in ((dx.Euler(), 8), (dx.DDIM(), 8), (dx.DPMpp2S(), 14)):
        out = dx.Denoiser(guided, integrator, dx.UniformTimer(8), (2,)).generate(KEY, 3)
        assert int(out.nfe) == 2 * calls, type(integrator).__name__


def test_nested_guidance_costs_add_up():
    """A PredictorPair of guided predictors: 2 + 2 per evaluation."""
    inner = dx.PredictorPair(dx.CFG(MODEL, 2.0), dx.CFG(MODEL, 0.5))
    out = dx.Denoiser(dx.CFG(inner, 1.5), dx.Euler(), dx.UniformTimer(5), (2,)).generate(KEY, 2)
    assert int(out.nfe) == 4 * 5


def test_bad_input_is_a_clear_error():
    for make in (
        lambda: dx.CFG(MODEL, -1.0),
        lambda: dx.GuidanceInterval(MODEL, -0.5, 0.2, 0.6),
        lambda: dx.APG(MODEL, -2.0),
        lambda: dx.AutoGuidance(COND, WEAK, -1.0),
    ):
        with pytest.raises(ValueError, match="scale must be >= 0"):
            make()
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        dx.GuidanceInterval(MODEL, 2.0, 0.7, 0.3)
    with pytest.raises(ValueError, match="0 <= t_lo"):
        dx.GuidanceInterval(MODEL, 2.0, -0.1, 0.3)
    with pytest.raises(ValueError, match="scale must be in"):
        dx.CFGPlusPlus(MODEL, 1.5)
    with pytest.raises(ValueError, match="eta must be in"):
        dx.APG(MODEL, 2.0, eta=-0.1)
    with pytest.raises(ValueError, match="norm_threshold must be > 0"):
        dx.APG(MODEL, 2.0, norm_threshold=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        dx.APG(MODEL, 2.0, momentum=1.0)
    with pytest.raises(TypeError, match="AbstractConditional"):
        dx.CFG(COND, 2.0)
    with pytest.raises(TypeError, match="AbstractPredictor"):
        dx.PredictorPair(COND, G_U.network(PATH))
    with pytest.raises(ValueError, match="same path"):
        dx.AutoGuidance(COND, dx.Predictor(G_W.network(dx.VP()), dx.VP()), 2.0)
    # cond / null of different shapes cannot be batched: the error names them and the way out
    g3 = dx.GaussianMixture(np.ones(1), np.zeros((1, 3)), np.eye(3)[None])
    with pytest.raises(ValueError, match="cond and null must have the same shapes.*batch=False"):
        dx.ConditionalNetwork(gaussian_velocity, PATH, cond=G_C, null=g3)
    with pytest.raises(ValueError, match="same pytree structure"):
        dx.ConditionalNetwork(gaussian_velocity, PATH, cond=G_C, null=(1.0, 2.0))
    # networks returning the wrong shape, and two models of different shapes
    bad = dx.ConditionalNetwork(lambda x, t, c: jnp.zeros(3), PATH, cond=1.0, null=0.0)
    with pytest.raises(ValueError, match="shaped like x"):
        dx.CFG(bad, 2.0).predict(jnp.zeros(2), 0.5)

    class Wrong(dx.AbstractPredictor):
        path: dx.AbstractPath

        def init(self, x):
            return None

        def evaluate(self, x, t, state):
            return dx.Prediction(x0=jnp.zeros(3), noise=jnp.zeros(3)), state, jnp.asarray(1, jnp.int32)

    with pytest.raises(ValueError, match="same shape"):
        dx.CFG(dx.PredictorPair(COND, Wrong(PATH)), 2.0).predict(jnp.zeros(2), 0.5)
