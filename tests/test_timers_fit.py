"""BetaTimer against diffusers and scipy, LogSNRTimer's spacing, and grids fitted by `fit_timer`
against every fixed timer on held-out noise."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import PATHS, circle_mixture

import diffuse_eqx as dx


# --------------------------------------------------------------------------------------------------
# BetaTimer


BETA_PARAMS = [(0.6, 0.6), (0.5, 2.0), (2.0, 0.7), (3.0, 3.0)]


@pytest.mark.parametrize("alpha, beta", BETA_PARAMS)
@pytest.mark.parametrize("n", [4, 10, 28])
@pytest.mark.parametrize("t_min, t_max", [(1e-3, 1.0), (0.002, 80.0)])
def test_beta_timer_matches_diffusers_convert_to_beta(alpha, beta, n, t_min, t_max):
    scheduler = FlowMatchEulerDiscreteScheduler()
    in_sigmas = torch.tensor(np.linspace(t_max, t_min, n), dtype=torch.float64)
    ref = np.asarray(scheduler._convert_to_beta(in_sigmas, n, alpha=alpha, beta=beta))
    ts = np.asarray(dx.BetaTimer(n, alpha=alpha, beta=beta, t_min=t_min, t_max=t_max).times())
    assert ts.shape == (n + 1,) and ts[-1] == 0.0
    np.testing.assert_allclose(ts[:-1], ref, rtol=1e-12, atol=1e-13 * t_max)


def test_beta_timer_is_diffusers_flow_match_euler_grid():
    for n in (8, 20):
        scheduler = FlowMatchEulerDiscreteScheduler(use_beta_sigmas=True)
        scheduler.set_timesteps(n)
        ref = scheduler.sigmas.numpy()  # float32, final 0 appended
        np.testing.assert_allclose(dx.BetaTimer(n).times(), ref, rtol=4 * np.finfo(np.float32).eps, atol=1e-7)


@pytest.mark.parametrize("alpha, beta", BETA_PARAMS + [(0.2, 0.3), (10.0, 1.5)])
def test_beta_quantiles_match_scipy_ppf(alpha, beta):
    n = 40
    ts = np.asarray(dx.BetaTimer(n, alpha=alpha, beta=beta, t_min=0.0, t_max=1.0, append_zero=False).times())
    ref = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n + 1), alpha, beta)
    np.testing.assert_allclose(ts, ref, rtol=1e-11, atol=1e-14)


def test_beta_timer_float32_and_uniform_case():
    np.testing.assert_allclose(
        dx.BetaTimer(6, alpha=1.0, beta=1.0, t_min=0.0, append_zero=False).times(),
        np.linspace(1, 0, 7),
        atol=1e-15,
    )
    with jax.enable_x64(False):
        ts = np.asarray(dx.BetaTimer(10).times())
        assert ts.dtype == np.float32
    ref = scipy.stats.beta.ppf(1 - np.linspace(0, 1, 10), 0.6, 0.6) * (1 - 1e-3) + 1e-3
    np.testing.assert_allclose(ts[:-1], ref, rtol=0, atol=2e-6)


def test_beta_timer_is_not_differentiable_in_its_parameters():
    with pytest.raises(NotImplementedError, match="not differentiable in alpha or beta"):
        jax.grad(lambda a: dx.BetaTimer(10, alpha=a).times().sum())(0.6)


# --------------------------------------------------------------------------------------------------
# LogSNRTimer


@pytest.mark.parametrize(
    "name, append_zero", [("flow", True), ("flow", False), ("vp_linear", True), ("vp_cosine", True)]
)
def test_logsnr_timer_is_uniform_in_lambda(name, append_zero):
    path, n = PATHS[name], 12
    timer = dx.LogSNRTimer(n, path=path, append_zero=append_zero)
    ts = np.asarray(timer.times())
    assert ts.shape == (n + 1,) and np.all(np.diff(ts) < 0)
    assert ts[0] == path.t_max
    body = ts[:-1] if append_zero else ts
    if append_zero:
        assert ts[-1] == 0.0
    t_min = float(path.t_from_lambda(np.log(500.0)))
    assert body[-1] == t_min
    lam = np.asarray(path.lambda_(body))
    pure_noise = not np.isfinite(lam[0])
    assert pure_noise == (name in ("flow", "vp_cosine"))
    if pure_noise:  # the first point of the uniform grid, at -log 80, is moved to t_max
        lam = np.concatenate([[-np.log(80.0)], lam[1:]])
    steps = np.diff(lam)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-10)
    # lambda(t(lam)) = lam to the rounding of the path's inverse (arccos on the cosine VP)
    assert steps[0] == pytest.approx((np.log(500.0) - lam[0]) / (len(lam) - 1), rel=1e-10)


def test_logsnr_timer_on_edm_is_the_exponential_timer_and_flow_is_closed_form():
    np.testing.assert_allclose(
        dx.LogSNRTimer(10, path=dx.EDM()).times(), dx.ExponentialTimer(10).times(), rtol=1e-13
    )
    ts = np.asarray(dx.LogSNRTimer(5, t_min=0.01, t_max=0.9).times())
    lam = np.linspace(np.log(0.1 / 0.9), np.log(0.99 / 0.01), 5)
    np.testing.assert_allclose(ts[:-1], 1 / (1 + np.exp(lam)), rtol=1e-13)


# --------------------------------------------------------------------------------------------------
# fit_timer


PATH = dx.Flow()
FIXED = {
    "Uniform": lambda n: dx.UniformTimer(n),
    "Flux shift 0.5": lambda n: dx.FluxTimer(n, shift=0.5),
    "Flux shift 1": lambda n: dx.FluxTimer(n, shift=1.0),
    "Flux shift 3": lambda n: dx.FluxTimer(n, shift=3.0),
    "Karras": lambda n: dx.KarrasTimer(n, t_min=2e-3, t_max=1.0),
    "Exponential": lambda n: dx.ExponentialTimer(n, t_min=1e-2, t_max=1.0),
    "LogSNR": lambda n: dx.LogSNRTimer(n),
    "Beta": lambda n: dx.BetaTimer(n),
}
N_PARTICLES = 512  # train and held out: one compilation of each solve serves both


@pytest.fixture(scope="module")
def predictor():
    """The 8-component circle mixture of benchmarks/samplers_vs_peers.py, exact velocity."""
    return dx.Predictor(circle_mixture().network(PATH, "velocity"), PATH, "velocity")


def test_fitted_grid_beats_every_fixed_timer_on_held_out_noise(predictor):
    """DPM++ 2M at 10 NFE: fitted on one key's noise, measured on another's, against every fixed timer."""
    integrator, n_steps = dx.DPMpp2M(), 10
    kwargs = dict(x0_shape=(2,), n_particles=N_PARTICLES)
    timer = dx.fit_timer(predictor, integrator, n_steps, jr.key(0), **kwargs)
    ts = np.asarray(timer.times())
    assert isinstance(timer, dx.CustomTimer) and timer.n_steps == n_steps
    assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)

    fixed = [make(n_steps) for make in FIXED.values()]
    errors = dx.timer_error(predictor, integrator, [timer, *fixed], jr.key(1), **kwargs)
    fitted, best = errors[0], min(errors[1:])
    print(
        f"DPMpp2M 10 steps, held out: fitted {fitted:.4g}, best fixed {best:.4g} "
        f"({list(FIXED)[int(np.argmin(errors[1:]))]}), ratio {fitted / best:.3f}"
    )
    assert fitted <= 0.6 * best
    assert dx.timer_error(predictor, integrator, timer, jr.key(1), **kwargs) == fitted  # one, or a list

    # max_iter = 0: the best of the initial grids, here the uniform one (errors above, on other noise)
    inits = [dx.FluxTimer(10, shift=3.0), dx.UniformTimer(10)]
    start = dx.fit_timer(predictor, integrator, n_steps, jr.key(0), init_timer=inits, max_iter=0, **kwargs)
    np.testing.assert_array_equal(start.times(), dx.UniformTimer(10).times())


def test_fit_timer_options(predictor):
    # n_steps = 1: nothing to fit, the ends
    one = dx.fit_timer(predictor, dx.Euler(), 1, jr.key(0), x0_shape=(2,), n_particles=8)
    np.testing.assert_array_equal(one.times(), [1.0, 0.0])
    # a given reference (integrator, grid): here the grid measured itself, so no error
    euler = (dx.Euler(), dx.UniformTimer(4))
    kwargs = dict(x0_shape=(2,), n_particles=64, reference=euler)
    assert dx.timer_error(predictor, *euler, jr.key(0), **kwargs) == 0.0
    flux = dx.FluxTimer(4, shift=3.0)
    error = dx.timer_error(predictor, dx.Euler(), flux, jr.key(0), **kwargs)
    assert error > 0.1
    assert dx.timer_error(predictor, dx.Euler(), flux, jr.key(0), batch_size=16, **kwargs) == pytest.approx(
        error, rel=1e-12
    )


def test_fit_timer_refuses_stochastic_integrators(predictor):
    # eta as an array: one compilation for the three DDIMs
    ddim, ancestral = dx.DDIM(eta=jnp.asarray(0.0)), dx.DDIM(eta=jnp.asarray(1.0))
    kwargs = dict(x0_shape=(2,), n_particles=8)
    with pytest.raises(ValueError, match="fit_timer: DDIM is stochastic"):
        dx.fit_timer(predictor, ancestral, 4, jr.key(0), **kwargs)
    with pytest.raises(ValueError, match="fit_timer reference: DDIM is stochastic"):
        dx.fit_timer(predictor, ddim, 4, jr.key(0), reference=(ancestral, dx.UniformTimer(4)), **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_steps=0), ValueError, "fit_timer n_steps must be a positive integer"),
        (dict(n_steps=2.5), TypeError, "n_steps"),  # jaxtyping's error in the test suite, else ours
        (dict(n_particles=0), ValueError, "fit_timer n_particles must be a positive integer"),
        (dict(max_iter=-1), ValueError, "fit_timer max_iter must be an integer >= 0"),
        (dict(tol=-1.0), ValueError, "fit_timer tol must be >= 0"),
        (dict(x0_shape=(0,)), ValueError, "x0_shape must be a tuple of positive ints"),
        (dict(batch_size=0), ValueError, "fit_timer batch_size"),
        (dict(init_timer=dx.UniformTimer(3)), ValueError, "has n_steps=3; the fit is for n_steps=4"),
        (dict(init_timer=[]), ValueError, "non-empty"),
        (dict(init_timer=[dx.UniformTimer(4), dx.UniformTimer(4, t_min=0.1)]), ValueError, "same ends"),
        (dict(init_timer=dx.UniformTimer(4, t_max=0.5)), ValueError, "below the path's t_max"),
        (dict(reference="exact"), TypeError, "reference"),
        (dict(reference=(dx.Heun(), dx.UniformTimer(8, t_min=0.1))), ValueError, "same ends"),
        (dict(integrator="Heun"), TypeError, "integrator"),
        (dict(predictor=None), TypeError, "predictor"),
    ],
)
def test_fit_timer_bad_arguments(predictor, kwargs, error, match):
    args = dict(
        predictor=predictor, integrator=dx.Heun(), n_steps=4, key=jr.key(0), x0_shape=(2,), n_particles=8
    )
    args.update(kwargs)
    with pytest.raises(error, match=match):
        dx.fit_timer(**args)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dx.BetaTimer(0), "n_steps"),
        (lambda: dx.BetaTimer(10, alpha=0.0), "BetaTimer alpha must be > 0"),
        (lambda: dx.BetaTimer(10, beta=-1.0), "BetaTimer beta must be > 0"),
        (lambda: dx.BetaTimer(10, t_min=0.0), "t_min > 0"),
        (lambda: dx.BetaTimer(10, t_min=1.0), "t_min < t_max"),
        (lambda: dx.BetaTimer(1), "n_steps >= 2"),
        (lambda: dx.LogSNRTimer(0), "n_steps"),
        (lambda: dx.LogSNRTimer(10, t_min=0.0), "t_min > 0"),
        (lambda: dx.LogSNRTimer(10, t_max=1.5), "beyond the path's t_max"),
        (lambda: dx.LogSNRTimer(10, t_min=0.995), "Take a smaller t_min"),
        (lambda: dx.LogSNRTimer(10, path="flow"), "path"),
        (lambda: dx.LogSNRTimer(1), "n_steps >= 2"),
    ],
)
def test_invalid_new_timers_raise_clear_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "integrator",
    [dx.UniPC(2), dx.UniPC(3, "bh1"), dx.DEIS(2), dx.DEIS(3)],
    ids=lambda i: f"{type(i).__name__}",
)
def test_integrators_have_finite_derivatives_in_every_grid_time(integrator):
    """The derivative of the end point in each time of a full grid (t = 1 and t = 0 included) is
    finite: the branches of a lowered order at the ends (h = inf) must not poison it with NaN, or
    `fit_timer` gets a NaN grid (as UniPC's fits once did)."""
    gm = dx.GaussianMixture(np.asarray([0.5, 0.5]), np.asarray([[-2.0], [2.0]]), np.full((2, 1, 1), 0.3))
    pred = dx.Predictor(gm.network(dx.Flow()), dx.Flow())
    ts = jnp.asarray(dx.FluxTimer(8, shift=0.5).times())
    jac = jax.jacobian(lambda ts: dx.integrate(integrator, pred, ts, jnp.asarray([0.7]), jr.key(0))[0])(ts)
    assert bool(jnp.all(jnp.isfinite(jac))), jac
