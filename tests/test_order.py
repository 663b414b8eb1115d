"""ODE convergence order of every integrator, on Gaussian data whose probability-flow ODE is solved
in closed form (float64)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import PATHS, diagonal_gaussian, exact_pf_ode, warped_grid
from hypothesis import given, strategies as st

import diffuse_eqx as dx


INTEGRATORS = [dx.Euler(), dx.Heun(), dx.DDIM(), dx.DPMpp2S(), dx.DPMpp2M()]
STEPS = (32, 64, 128, 256)
solve = eqx.filter_jit(dx.integrate)


def measured_order(path, integrator, mean, var, z, grid_of_n):
    """Slope of log(error) against log(number of steps), sign flipped (so Euler gives ~1)."""
    gmm = diagonal_gaussian(mean, var)
    pred = dx.Predictor(gmm.network(path, "velocity"), path, "velocity")
    errors = []
    for n in STEPS:
        ts = jnp.asarray(grid_of_n(n))
        t0, t1 = float(ts[0]), float(ts[-1])
        sd0 = np.sqrt(float(path.alpha(t0)) ** 2 * var + float(path.sigma(t0)) ** 2)
        x_start = float(path.alpha(t0)) * mean + sd0 * z
        x_end, _, _ = solve(integrator, pred, ts, jnp.asarray(x_start), jr.PRNGKey(0))
        exact = exact_pf_ode(path, mean, var, x_start, t0, t1)
        errors.append(np.linalg.norm(np.asarray(x_end) - exact))
    slope = np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    return -slope, errors


gaussians = st.integers(1, 3).flatmap(
    lambda d: st.tuples(
        st.lists(st.floats(-3, 3), min_size=d, max_size=d).map(np.asarray),
        st.lists(st.floats(0.05, 4.0), min_size=d, max_size=d).map(np.asarray),
        st.lists(st.floats(0.5, 2.0), min_size=d, max_size=d).map(np.asarray),
        st.lists(st.sampled_from([-1.0, 1.0]), min_size=d, max_size=d).map(np.asarray),
    )
)


@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
@given(
    gaussian=gaussians,
    t_hi=st.floats(0.6, 0.95),
    t_lo=st.floats(0.05, 0.3),
    kappa=st.floats(-1.5, 1.5),
)
def test_order_inside_the_interval(integrator, gaussian, t_hi, t_lo, kappa):
    """Grids strictly inside (0, 1): the measured order matches the declared one within 0.3."""
    mean, var, z_abs, z_sign = gaussian
    order, errors = measured_order(
        PATHS["flow"], integrator, mean, var, z_abs * z_sign, warped_grid(t_hi, t_lo, kappa)
    )
    assert abs(order - integrator.order) <= 0.3, (order, errors)


@pytest.mark.parametrize("path_name", ["vp_linear", "vp_cosine", "edm"])
@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
def test_order_on_other_paths(path_name, integrator):
    path = PATHS[path_name]
    grid = warped_grid(0.8 * path.t_max, 0.1 * path.t_max, 0.0)
    mean, var, z = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0]), np.asarray([1.2, -0.8])
    order, errors = measured_order(path, integrator, mean, var, z, grid)
    assert abs(order - integrator.order) <= 0.3, (order, errors)


@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
def test_order_on_the_full_grid(integrator):
    """Flow from t = 1 (pure noise) to t = 0 (data) on a uniform grid: endpoint steps may lower the
    order; the measured order must stay within 0.6 below the declared one."""
    mean, var, z = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0]), np.asarray([1.2, -0.8])
    order, errors = measured_order(
        PATHS["flow"], integrator, mean, var, z, lambda n: np.linspace(1, 0, n + 1)
    )
    print(f"{type(integrator).__name__}: full-grid order {order:.2f} (declared {integrator.order})")
    assert order >= integrator.order - 0.6, (order, errors)
