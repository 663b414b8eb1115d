"""Diffrax solvers as integrators: ODE order on Gaussian data (closed-form probability-flow ODE),
agreement with `diffrax.diffeqsolve`, exact NFE against a network that counts its calls, adaptive
accuracy, reverse-SDE sample moments, and the errors for bad input."""

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import PATHS, diagonal_gaussian, exact_pf_ode, warped_grid
from hypothesis import given, settings, strategies as st

import diffuse_eqx as dx


FLOW = PATHS["flow"]
MEAN, VAR = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0])
X_START = np.asarray([0.3, -1.2])


# ---------------------------------------------------------------------------------------------
# ODE order
# ---------------------------------------------------------------------------------------------

#: Grids of 4 ... 256 steps, ratio sqrt(2): the asymptotic regime of the fifth-order solvers lies
#: between their pre-asymptotic coarse grids and float64 rounding, and is narrow.
STEPS = tuple(int(round(4 * 2 ** (k / 2))) for k in range(13))
#: Errors are trusted above 1e-13, a hundred times the rounding floor of these solves (~1e-15).
FLOOR = 1e-13
MAX_STEPS = 256


@eqx.filter_jit
def solve_on_padded_grid(integrator, predictor, ts, n, x):
    """The first `n` steps of `integrator` over `ts` (padded to a fixed length): one compilation per
    solver serves every grid size."""
    state = integrator.init(predictor, x, jr.PRNGKey(0), ts[:2])
    state = lax.fori_loop(0, n, lambda i, state: integrator.step(predictor, state, ts[i], ts[i + 1]), state)
    return state.position


def errors_on_grids(integrator, path, mean, var, z, grid_of_n, steps):
    """Error against the closed-form solution, for each number of steps."""
    predictor = dx.Predictor(diagonal_gaussian(mean, var).network(path, "velocity"), path, "velocity")
    errors = []
    for n in steps:
        ts = np.asarray(grid_of_n(n))
        t0, t1 = ts[0], ts[-1]
        x = (
            float(path.alpha(t0)) * mean
            + np.sqrt(float(path.alpha(t0)) ** 2 * var + float(path.sigma(t0)) ** 2) * z
        )
        padded = jnp.asarray(np.pad(ts, (0, MAX_STEPS + 1 - len(ts)), mode="edge"))
        # n as an array: traced, so that every grid size shares one compilation
        x_end = solve_on_padded_grid(integrator, predictor, padded, jnp.asarray(n), jnp.asarray(x))
        errors.append(np.linalg.norm(np.asarray(x_end) - exact_pf_ode(path, mean, var, x, t0, t1)))
    return np.asarray(errors)


def assert_order(order, declared, errors):
    """Orders up to 3 match within 0.3. Higher orders reach float64 rounding before their asymptotic
    regime is clean: with e(h) = C h^p + D h^(p+1) and C small (Tsit5 minimises its leading error
    coefficients, and on `Flow` a Gaussian coordinate can nearly cancel it), the slope measured above
    rounding exceeds p (up to 6.3 for Tsit5 on examples that hypothesis finds). For them the error
    must fall at least as fast as order p: a slope of at least p - 0.3."""
    if declared <= 3:
        assert abs(order - declared) <= 0.3, (order, errors)
    else:
        assert order >= declared - 0.3, (order, errors)


def finest_order(steps, errors):
    """The convergence order between the two finest grids whose errors are above `FLOOR`."""
    keep = errors > FLOOR
    (n0, n1), (e0, e1) = np.asarray(steps)[keep][-2:], errors[keep][-2:]
    return np.log(e0 / e1) / np.log(n1 / n0)


# Eight independent coordinates: the error norm does not vanish where one coordinate's error
# changes sign, which would fake a local order.
gaussians_8d = st.tuples(
    st.lists(st.floats(-3, 3), min_size=8, max_size=8).map(np.asarray),
    st.lists(st.floats(0.05, 4.0), min_size=8, max_size=8).map(np.asarray),
    st.lists(st.floats(0.5, 2.0), min_size=8, max_size=8).map(np.asarray),
    st.lists(st.sampled_from([-1.0, 1.0]), min_size=8, max_size=8).map(np.asarray),
)

SOLVERS = [
    diffrax.Euler(),
    diffrax.Heun(),
    diffrax.Midpoint(),
    diffrax.Ralston(),
    diffrax.Bosh3(),
    diffrax.Tsit5(),
    diffrax.Dopri5(),
]


def expected_order_on_flow(solver) -> int:
    """The declared order, except for the explicit midpoint rule: on `Flow` with Gaussian data every
    coordinate is x = a(t) m + sd(t) u with sd^2 quadratic in t, and the midpoint rule's local error
    is then h^3 (sd''' + 3 sd' sd'' / sd) / 24 = h^3 (sd^2)''' / (48 sd) = 0 at leading order: it
    converges at order 3 there (order 2 on VP, below)."""
    return 3 if isinstance(solver, diffrax.Midpoint) else solver.order(diffrax.ODETerm(lambda t, y, a: y))


@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
@settings(max_examples=3)
@given(
    gaussian=gaussians_8d, t_hi=st.floats(0.6, 0.95), t_lo=st.floats(0.05, 0.3), kappa=st.floats(-1.5, 1.5)
)
def test_order_inside_the_interval(solver, gaussian, t_hi, t_lo, kappa):
    """Grids strictly inside (0, 1): the measured order matches the solver's (see `assert_order`)."""
    mean, var, z_abs, z_sign = gaussian
    integrator = dx.DiffraxIntegrator(solver)
    errors = errors_on_grids(
        integrator, FLOW, mean, var, z_abs * z_sign, warped_grid(t_hi, t_lo, kappa), STEPS
    )
    order = finest_order(STEPS, errors)
    print(f"{type(solver).__name__}: measured order {order:.2f} (declared {integrator.order})")
    assert_order(order, expected_order_on_flow(solver), errors)


@pytest.mark.slow
def test_midpoint_is_second_order_on_vp():
    path = PATHS["vp_linear"]
    rng = np.random.default_rng(0)
    mean, var, z = rng.uniform(-3, 3, 8), rng.uniform(0.05, 4, 8), rng.uniform(-2, 2, 8)
    integrator = dx.DiffraxIntegrator(diffrax.Midpoint())
    errors = errors_on_grids(integrator, path, mean, var, z, warped_grid(0.8, 0.1, 0.5), STEPS)
    order = finest_order(STEPS, errors)
    print(f"Midpoint on VP: measured order {order:.2f}")
    assert integrator.order == 2 and abs(order - 2) <= 0.3, (order, errors)


@pytest.mark.slow
def test_dopri8_order():
    """Dopri8 on coarse grids (2 ... 32 steps): its error falls from ~1e-6 to the float64 floor within
    a factor of 16 in the step size; the slope fitted over the errors above `FLOOR` is its order (see
    `assert_order`)."""
    steps = (2, 3, 4, 6, 8, 11, 16, 23, 32)
    rng = np.random.default_rng(1)
    integrator = dx.DiffraxIntegrator(diffrax.Dopri8())
    assert integrator.order == 8
    for t_hi, t_lo, kappa in [(0.9, 0.2, 0.5), (0.7, 0.15, -1.0), (0.85, 0.3, 1.2)]:
        mean, var = rng.uniform(-3, 3, 8), rng.uniform(0.05, 4, 8)
        z = rng.uniform(0.5, 2, 8) * rng.choice([-1, 1], 8)
        errors = errors_on_grids(integrator, FLOW, mean, var, z, warped_grid(t_hi, t_lo, kappa), steps)
        keep = errors > FLOOR
        order = -np.polyfit(np.log(np.asarray(steps)[keep]), np.log(errors[keep]), 1)[0]
        print(f"Dopri8 fitted order {order:.2f}, errors {errors}")
        assert keep.sum() >= 4
        assert_order(order, 8, errors)


# ---------------------------------------------------------------------------------------------
# Agreement with diffeqsolve, and exact NFE
# ---------------------------------------------------------------------------------------------


class CallCounter:
    """A network wrapper counting its evaluations through a side channel (`jax.debug.callback`), so
    the count is what actually ran, independent of the integrator's bookkeeping."""

    def __init__(self):
        self.calls = 0

    def wrap(self, network):
        def counted(x, t):
            jax.debug.callback(self._tick, x)
            return network(x, t)

        return counted

    def _tick(self, _):
        self.calls += 1


solve = eqx.filter_jit(dx.integrate)


def counted_solve(integrator, ts, prediction="velocity", path=FLOW, x=X_START):
    counter = CallCounter()
    network = counter.wrap(diagonal_gaussian(MEAN, VAR).network(path, prediction))
    predictor = dx.Predictor(network, path, prediction)
    x_end, nfe, _ = solve(integrator, predictor, jnp.asarray(ts), jnp.asarray(x), jr.PRNGKey(0))
    x_end = jax.block_until_ready(x_end)
    return np.asarray(x_end), int(nfe), counter.calls


@pytest.mark.parametrize(
    "solver, expected_nfe",
    [
        (diffrax.Euler(), lambda n: n),
        (diffrax.Heun(), lambda n: 2 * n),
        (diffrax.Tsit5(), lambda n: 7 + 6 * (n - 1)),  # FSAL: the first step evaluates every stage
    ],
    ids=["Euler", "Heun", "Tsit5"],
)
def test_grid_steps_match_diffeqsolve_and_count_every_evaluation(solver, expected_nfe):
    """Inside (0, 1): the same solution as `diffeqsolve` stepping on the grid (`StepTo`), and the
    reported NFE equals the evaluations that ran. To t = 0: the last step is a data step (one
    evaluation)."""
    integrator = dx.DiffraxIntegrator(solver)
    ts = np.linspace(0.9, 0.1, 6)
    x_end, nfe, calls = counted_solve(integrator, ts)
    predictor = dx.Predictor(diagonal_gaussian(MEAN, VAR).network(FLOW, "velocity"), FLOW, "velocity")
    term = diffrax.ODETerm(lambda s, y, args: -predictor.velocity(y, -s))
    ref = diffrax.diffeqsolve(
        term, solver, -ts[0], -ts[-1], None, jnp.asarray(X_START), stepsize_controller=diffrax.StepTo(-ts)
    )
    np.testing.assert_allclose(x_end, np.asarray(ref.ys[0]), rtol=0, atol=1e-13)
    assert nfe == calls == expected_nfe(5)

    ts = np.linspace(1.0, 0.0, 6)
    x_end, nfe, calls = counted_solve(integrator, ts)
    assert nfe == calls == expected_nfe(4) + 1
    assert np.all(np.isfinite(x_end))


def test_guided_predictor_costs_two_per_evaluation():
    """CFG over a pair of predictors costs 2 network evaluations per call: diffrax's evaluations are
    counted at that cost (read from the predictor without running it)."""
    counter = CallCounter()
    cond = dx.Predictor(
        counter.wrap(diagonal_gaussian(MEAN, VAR).network(FLOW, "velocity")), FLOW, "velocity"
    )
    uncond = dx.Predictor(
        counter.wrap(diagonal_gaussian(-MEAN, VAR).network(FLOW, "velocity")), FLOW, "velocity"
    )
    guided = dx.CFG(dx.PredictorPair(cond, uncond), scale=2.0)
    ts = jnp.linspace(0.9, 0.0, 6)
    x_end, nfe, _ = solve(
        dx.DiffraxIntegrator(diffrax.Tsit5()), guided, ts, jnp.asarray(X_START), jr.PRNGKey(0)
    )
    jax.block_until_ready(x_end)
    assert int(nfe) == counter.calls == 2 * (7 + 6 * 3 + 1)


def test_data_step_to_zero_on_vp():
    """VP has an infinite velocity at t = 0: the last step is a data step, never an evaluation there."""
    path = PATHS["vp_cosine"]
    x_end, nfe, calls = counted_solve(dx.DiffraxIntegrator(diffrax.Tsit5()), np.linspace(1, 0, 9), "x0", path)
    assert np.all(np.isfinite(x_end)) and nfe == calls == 7 + 6 * 6 + 1  # 7 Tsit5 steps, then the data step


# ---------------------------------------------------------------------------------------------
# Adaptive
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), pytest.param(diffrax.Heun(), marks=pytest.mark.slow)], ids=["Tsit5", "Heun"]
)
def test_adaptive_error_and_nfe(solver):
    """One interval [0.95, 0.05] solved adaptively. The controller keeps each step's estimated error
    below atol + rtol |x| (RMS over coordinates); over S steps of a contracting ODE the global error
    is at most S sqrt(d) (atol + rtol max|x|). Tightening the tolerance by 1000 shrinks the error,
    and the reported NFE equals the evaluations that ran: FSAL solvers 1 + (S_stages - 1) per
    attempted step, others S_stages per attempted step."""
    ts = np.asarray([0.95, 0.05])
    exact = exact_pf_ode(FLOW, MEAN, VAR, X_START, ts[0], ts[-1])
    errors = []
    for tol in (1e-4, 1e-7):
        integrator = dx.DiffraxAdaptive(solver, rtol=tol, atol=tol)
        x_end, nfe, calls = counted_solve(integrator, ts)
        fsal = isinstance(solver, diffrax.Tsit5)
        attempts, remainder = divmod(nfe - fsal, integrator.nfe_per_step)
        assert nfe == calls and remainder == 0 and attempts >= 1
        bound = attempts * np.sqrt(2) * (tol + tol * np.abs(exact).max())
        errors.append(np.abs(x_end - exact).max())
        print(f"{type(solver).__name__} rtol={tol:g}: error {errors[-1]:.1e}, bound {bound:.1e}, NFE {nfe}")
        assert errors[-1] <= bound, (errors[-1], bound)
    assert errors[1] < errors[0] / 100, errors


def test_adaptive_carries_the_last_stage_across_intervals():
    """Tsit5 over several intervals: the first interval evaluates the initial velocity once, every
    later interval starts from the last stage of the previous one (no extra evaluation); the final
    interval to t = 0 is a data step."""
    integrator = dx.DiffraxAdaptive(diffrax.Tsit5(), rtol=1e-6, atol=1e-6)
    x_inside, nfe_inside, calls_inside = counted_solve(integrator, np.asarray([0.95, 0.6, 0.3, 0.05]))
    exact = exact_pf_ode(FLOW, MEAN, VAR, X_START, 0.95, 0.05)
    assert nfe_inside == calls_inside and (nfe_inside - 1) % 6 == 0
    assert np.abs(x_inside - exact).max() < 1e-4
    x_end, nfe, calls = counted_solve(integrator, np.asarray([0.95, 0.6, 0.3, 0.05, 0.0]))
    assert nfe == calls == nfe_inside + 1 and np.all(np.isfinite(x_end))


def test_adaptive_refuses_a_single_data_step():
    with pytest.raises(Exception, match="one-step grid ending at sigma = 0"):
        counted_solve(dx.DiffraxAdaptive(), np.asarray([1.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# Reverse SDE
# ---------------------------------------------------------------------------------------------

SDE_MEAN, SDE_COV = np.asarray([1.0, -2.0]), np.asarray([[0.5, 0.3], [0.3, 0.8]])


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, n_steps, path_name, n_particles",
    [
        (diffrax.ShARK(), 50, "vp_linear", 4_000),
        (diffrax.ShARK(), 50, "flow", 4_000),
        (diffrax.Euler(), 200, "vp_linear", 2_500),
    ],
    ids=["ShARK-vp", "ShARK-flow", "EulerMaruyama-vp"],
)
def test_sde_sample_moments(solver, n_steps, path_name, n_particles):
    """Reverse-SDE samples of a 2-D Gaussian: mean and covariance within 4 Monte Carlo standard
    errors of the target. The discretisation bias is below one standard error at these step counts
    (measured with coupled Brownian paths: ~2e-3 for ShARK at 100 steps, ~6e-3 for Euler--Maruyama
    at 200 steps, against standard errors of 7e-3 and 1.4e-2). On `Flow` the first step, from
    alpha = 0, is the exact posterior step."""
    path = PATHS[path_name]
    gmm = dx.GaussianMixture(np.ones(1), SDE_MEAN[None], SDE_COV[None])
    prediction = "velocity" if path_name == "flow" else "noise"
    predictor = dx.Predictor(gmm.network(path, prediction), path, prediction)
    den = dx.Denoiser(predictor, dx.DiffraxSDE(solver), dx.UniformTimer(n_steps), (2,))
    out = den.generate(jr.PRNGKey(1), n_particles)
    xs, n = np.asarray(out.samples), n_particles
    print(
        f"{type(solver).__name__} {path_name}: mean error / SE",
        (xs.mean(0) - SDE_MEAN) / np.sqrt(np.diag(SDE_COV) / n),
    )
    assert np.all(np.abs(xs.mean(0) - SDE_MEAN) < 4 * np.sqrt(np.diag(SDE_COV) / n)), xs.mean(0)
    cov_se = np.sqrt((np.outer(np.diag(SDE_COV), np.diag(SDE_COV)) + SDE_COV**2) / n)  # Var(S_ij), Gaussian
    assert np.all(np.abs(np.cov(xs.T) - SDE_COV) < 4 * cov_se), np.cov(xs.T)


@pytest.mark.parametrize(
    "solver, drift_evaluations",
    [
        (diffrax.Euler(), 1),
        pytest.param(diffrax.EulerHeun(), 1, marks=pytest.mark.slow),
        (diffrax.ShARK(), 2),
        pytest.param(diffrax.SlowRK(), 2, marks=pytest.mark.slow),
    ],
    ids=["Euler", "EulerHeun", "ShARK", "SlowRK"],
)
def test_sde_nfe_counts_every_drift_evaluation(solver, drift_evaluations):
    """From t = 1 to 0 on `Flow`: the posterior step from alpha = 0 and the data step to sigma = 0
    cost one evaluation each, every other step the solver's drift evaluations."""
    integrator = dx.DiffraxSDE(solver)
    assert integrator.nfe_per_step == drift_evaluations
    x_end, nfe, calls = counted_solve(integrator, np.linspace(1, 0, 11))
    assert nfe == calls == 2 + 8 * drift_evaluations and np.all(np.isfinite(x_end))


def test_sde_keys_are_per_particle_and_fresh():
    """The Brownian path comes from the particle's key: two keys give different samples, one key the
    same sample twice; the key left in the state is not the one the path used."""
    gmm = dx.GaussianMixture(np.ones(1), SDE_MEAN[None], SDE_COV[None])
    predictor = dx.Predictor(gmm.network(FLOW, "velocity"), FLOW, "velocity")
    integrator, ts, x = dx.DiffraxSDE(diffrax.Euler()), jnp.linspace(1, 0, 5), jnp.zeros(2)
    a = solve(integrator, predictor, ts, x, jr.PRNGKey(0))[0]
    b = solve(integrator, predictor, ts, x, jr.PRNGKey(1))[0]
    np.testing.assert_array_equal(a, solve(integrator, predictor, ts, x, jr.PRNGKey(0))[0])
    assert not np.allclose(a, b)
    state = integrator.init(predictor, x, jr.PRNGKey(0), ts)
    brownian = state.memory[0]
    used = [np.asarray(jr.PRNGKey(0)), *(np.asarray(k) for k in jax.tree.leaves(brownian.key))]
    assert not any(np.array_equal(np.asarray(state.key), k) for k in used)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


class StatefulPredictor(dx.AbstractPredictor):
    """A predictor with a momentum-like state (as APG)."""

    inner: dx.Predictor

    @property
    def path(self):
        return self.inner.path

    def init(self, x):
        return jnp.zeros_like(x)

    def evaluate(self, x, t, state):
        pred, _, n = self.inner.evaluate(x, t, None)
        return pred, state + 1, n


class TimeDependentCost(dx.AbstractPredictor):
    """A predictor whose cost depends on t (as a guidance interval)."""

    inner: dx.Predictor

    @property
    def path(self):
        return self.inner.path

    def init(self, x):
        return None

    def evaluate(self, x, t, state):
        pred, _, n = self.inner.evaluate(x, t, None)
        return pred, state, jnp.where(t > 0.5, 2 * n, n)


@pytest.mark.parametrize(
    "integrator",
    [dx.DiffraxIntegrator(diffrax.Tsit5()), dx.DiffraxAdaptive(), dx.DiffraxSDE()],
    ids=lambda i: type(i).__name__,
)
def test_predictors_diffrax_cannot_count_are_refused(integrator):
    inner = dx.Predictor(diagonal_gaussian(MEAN, VAR).network(FLOW, "velocity"), FLOW, "velocity")
    ts, x = jnp.linspace(0.9, 0.1, 3), jnp.zeros(2)
    with pytest.raises(ValueError, match="predictor with state"):
        integrator.init(StatefulPredictor(inner), x, jr.PRNGKey(0), ts)
    with pytest.raises(ValueError, match=r"do not depend on \(x, t\)"):
        integrator.init(TimeDependentCost(inner), x, jr.PRNGKey(0), ts)


def test_bad_solvers_are_refused():
    for make in (dx.DiffraxIntegrator, dx.DiffraxAdaptive, dx.DiffraxSDE):
        with pytest.raises(TypeError, match="solver"):
            make("tsit5")
        with pytest.raises(TypeError, match="solver"):
            make(dx.Heun())
    with pytest.raises(TypeError, match="SDE solver; use it with DiffraxSDE"):
        dx.DiffraxIntegrator(diffrax.ShARK())
    with pytest.raises(TypeError, match="SDE solver; use it with DiffraxSDE"):
        dx.DiffraxAdaptive(diffrax.EulerHeun())
    with pytest.raises(TypeError, match="ODE solver with no strong order"):
        dx.DiffraxSDE(diffrax.Tsit5())
    with pytest.raises(ValueError, match="implicit"):
        dx.DiffraxIntegrator(diffrax.Kvaerno3())
    with pytest.raises(ValueError, match="wrapped"):
        dx.DiffraxIntegrator(diffrax.HalfSolver(diffrax.Euler()))
    with pytest.raises(ValueError, match="error estimate"):
        dx.DiffraxAdaptive(diffrax.Euler())
    with pytest.raises(ValueError, match="max_steps"):
        dx.DiffraxAdaptive(max_steps=0)
    with pytest.raises(ValueError, match="rtol must be positive"):
        dx.DiffraxAdaptive(rtol=0.0)
