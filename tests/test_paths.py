import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PATHS

import diffuse_eqx as dx


INTERIOR = np.array([1e-4, 0.01, 0.2, 0.5, 0.8, 0.99, 1 - 1e-4])


@pytest.mark.parametrize("name", PATHS)
def test_derivatives_match_autodiff(name):
    path = PATHS[name]
    ts = jnp.asarray(INTERIOR * path.t_max)
    np.testing.assert_allclose(jax.vmap(path.d_alpha)(ts), jax.vmap(jax.grad(path.alpha))(ts), rtol=1e-9)
    np.testing.assert_allclose(jax.vmap(path.d_sigma)(ts), jax.vmap(jax.grad(path.sigma))(ts), rtol=1e-9)


@pytest.mark.parametrize("name", PATHS)
def test_lambda_inverse(name):
    path = PATHS[name]
    ts = jnp.asarray(INTERIOR * path.t_max)
    lam = path.lambda_(ts)
    np.testing.assert_allclose(lam, jnp.log(path.alpha(ts) / path.sigma(ts)), rtol=1e-12)
    np.testing.assert_allclose(path.t_from_lambda(lam), ts, rtol=1e-9)
    assert np.all(np.diff(np.asarray(lam)) < 0), "lambda must decrease with t"


@pytest.mark.parametrize("name", PATHS)
def test_endpoints(name):
    path = PATHS[name]
    assert float(path.alpha(0.0)) == 1.0 and float(path.sigma(0.0)) == 0.0
    assert float(path.lambda_(0.0)) == np.inf
    if name in ("flow", "vp_cosine"):  # pure noise at t_max, exactly
        assert float(path.alpha(path.t_max)) == 0.0
        assert float(path.lambda_(path.t_max)) == -np.inf
        assert float(path.t_from_lambda(-jnp.inf)) == pytest.approx(path.t_max)
    assert float(path.t_from_lambda(jnp.inf)) == 0.0


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("var", [0.05, 1.0, 7.0])
def test_forward_sde_matches_marginal_variance(name, var):
    """The forward SDE dx = f x dt + g dW must reproduce the path's marginals: for x0 ~ N(0, var),
    d/dt (a^2 var + s^2) = 2 f (a^2 var + s^2) + g^2 at every t (a check of f and g for *this* path)."""
    path = PATHS[name]
    ts = jnp.asarray(INTERIOR[1:-1] * path.t_max)

    def variance(t):
        return path.alpha(t) ** 2 * var + path.sigma(t) ** 2

    lhs = jax.vmap(jax.grad(variance))(ts)
    rhs = 2 * path.drift_coefficient(ts) * variance(ts) + path.diffusion_squared(ts)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-12)


def test_known_sde_coefficients():
    t = jnp.asarray([0.1, 0.5, 0.9])
    vp = dx.VP(beta_min=0.1, beta_max=20.0)
    beta = 0.1 + t * 19.9
    np.testing.assert_allclose(vp.drift_coefficient(t), -beta / 2, rtol=1e-12)
    np.testing.assert_allclose(vp.diffusion_squared(t), beta, rtol=1e-10)
    flow = dx.Flow()
    np.testing.assert_allclose(flow.drift_coefficient(t), -1 / (1 - t), rtol=1e-12)
    np.testing.assert_allclose(flow.diffusion_squared(t), 2 * t / (1 - t), rtol=1e-12)
    edm = dx.EDM()
    np.testing.assert_allclose(edm.drift_coefficient(t), 0.0)
    np.testing.assert_allclose(edm.diffusion_squared(t), 2 * t, rtol=1e-12)


def test_reverse_drift_uses_the_paths_own_coefficients():
    x, score, t = jnp.asarray([1.0, -2.0]), jnp.asarray([0.3, 0.4]), 0.4
    for path in PATHS.values():
        expected = path.drift_coefficient(t) * x - path.diffusion_squared(t) * score
        np.testing.assert_allclose(path.reverse_drift(x, t, score), expected, rtol=1e-12)
    # Flow and VP differ: the original library used the VP drift for every path.
    assert not np.allclose(
        PATHS["flow"].reverse_drift(x, t, score), PATHS["vp_linear"].reverse_drift(x, t, score)
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dx.VP(schedule="quadratic"), "schedule"),
        (lambda: dx.VP(beta_min=-1.0), "beta_min"),
        (lambda: dx.VP(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: dx.VP(schedule="cosine", s=0.0), "s="),
        (lambda: dx.EDM(sigma_max=0.0), "sigma_max"),
    ],
)
def test_invalid_path_parameters(make, match):
    # A wrong literal is caught by the runtime type checker first (TypeCheckError is a TypeError).
    with pytest.raises((ValueError, TypeError), match=match):
        make()
