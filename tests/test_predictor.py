import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PATHS
from hypothesis import given, strategies as st

import diffuse_eqx as dx


PREDICTIONS = ("velocity", "score", "noise", "x0")


def native(path, prediction, x0, eps, t):
    """The exact output of a `prediction` network for x = a x0 + s eps."""
    s, da, ds = path.sigma(t), path.d_alpha(t), path.d_sigma(t)
    return {"velocity": da * x0 + ds * eps, "score": -eps / s, "noise": eps, "x0": x0}[prediction]


def constant_network(value):
    return lambda x, t: value


# Times in (0, 1) with both ends well represented (relative to t_max): 1e-5 .. 1 - 1e-5.
times = st.one_of(
    st.floats(1e-5, 1e-3),
    st.floats(1e-3, 1 - 1e-3),
    st.floats(1 - 1e-3, 1 - 1e-5),
)
vectors = st.lists(st.floats(-5, 5), min_size=3, max_size=3).map(np.asarray)


def close(actual, expected, scale):
    """Agreement to 1e-10 relative to the size of the quantity (max-norm), in float64."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10 * scale)


def unit(path, prediction, t):
    """The size of a parameterization's value for unit-size x0 and noise: the scale its errors are
    measured in (a velocity near t = 0 on VP is ~ d_sigma, a score ~ 1/sigma)."""
    return {
        "velocity": abs(float(path.d_alpha(t))) + abs(float(path.d_sigma(t))),
        "score": 1 / float(path.sigma(t)),
        "noise": 1.0,
        "x0": 1.0,
    }[prediction]


@pytest.mark.parametrize("name", PATHS)
@given(u=times, x0=vectors, eps=vectors)
def test_every_parameterization_recovers_x0_and_noise(name, u, x0, eps):
    path = PATHS[name]
    t = u * path.t_max
    x = jnp.asarray(path.alpha(t) * x0 + path.sigma(t) * eps)
    scale = max(np.abs(x0).max(), np.abs(eps).max(), 1.0)
    for prediction in PREDICTIONS:
        out = jnp.asarray(native(path, prediction, x0, eps, t))
        pred = dx.Predictor(constant_network(out), path, prediction).predict(x, t)
        close(pred.x0, x0, scale)
        close(pred.noise, eps, scale)


@pytest.mark.parametrize("name", PATHS)
@given(u=times, x0=vectors, eps=vectors)
def test_round_trip_between_parameterizations(name, u, x0, eps):
    """velocity <-> score <-> noise <-> x0: convert a network's output to another parameterization,
    wrap that as a network of the other kind, convert back: the original output is recovered."""
    path = PATHS[name]
    t = u * path.t_max
    x = jnp.asarray(path.alpha(t) * x0 + path.sigma(t) * eps)
    size = max(np.abs(x0).max(), np.abs(eps).max(), 1.0)
    for p_from in PREDICTIONS:
        out = jnp.asarray(native(path, p_from, x0, eps, t))
        for p_to in PREDICTIONS:
            there = getattr(dx.Predictor(constant_network(out), path, p_from), p_to)(x, t)
            close(there, native(path, p_to, x0, eps, t), size * unit(path, p_to, t))
            back = getattr(dx.Predictor(constant_network(there), path, p_to), p_from)(x, t)
            close(back, out, size * unit(path, p_from, t))


@pytest.mark.parametrize("name", PATHS)
def test_endpoints_are_handled_explicitly(name):
    """At t = 0 (sigma = 0) x0 = x for every parameterization that determines it; at alpha = 0
    the noise is x / sigma. All finite, no clipping."""
    path = PATHS[name]
    x, out = jnp.asarray([0.7, -1.2]), jnp.asarray([0.3, 2.0])
    for prediction in ("velocity", "score", "noise"):
        x0 = dx.Predictor(constant_network(out), path, prediction).x0(x, 0.0)
        np.testing.assert_array_equal(x0, x)
    if float(path.alpha(path.t_max)) == 0:
        for prediction in ("velocity", "x0"):
            pred = dx.Predictor(constant_network(out), path, prediction).predict(x, path.t_max)
            np.testing.assert_allclose(pred.noise, x / path.sigma(path.t_max), rtol=1e-12)
            assert np.isfinite(pred.x0).all()


def test_flow_velocity_at_both_ends():
    flow, x, v = dx.Flow(), jnp.asarray([0.5, -1.0]), jnp.asarray([2.0, 1.0])
    pred = dx.Predictor(constant_network(v), flow, "velocity")
    # t = 0: x0 = x, eps = v + x0;  t = 1: eps = x, x0 = x - v.
    np.testing.assert_allclose(pred.noise(x, 0.0), v + x)
    np.testing.assert_allclose(pred.x0(x, 1.0), x - v)
    np.testing.assert_allclose(pred.noise(x, 1.0), x)


def test_predictor_rejects_bad_arguments():
    with pytest.raises((ValueError, TypeError), match="prediction"):
        dx.Predictor(constant_network(jnp.zeros(2)), dx.Flow(), "epsilon")
    pred = dx.Predictor(lambda x, t: jnp.zeros(3), dx.Flow(), "velocity")
    with pytest.raises(ValueError, match="shaped like x"):
        pred.x0(jnp.zeros(2), 0.5)
