"""The exact mixture network (x0, noise, score, velocity) against an independent NumPy reference, at
both ends of every path, under vmap over particles and over times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PATHS
from jax.extend.core import ClosedJaxpr, Jaxpr
from scipy.special import softmax

import diffuse_eqx as dx


PREDICTIONS = ("x0", "noise", "score", "velocity")
N_TIMES, N_POINTS = 6, 16


def mixture() -> dx.GaussianMixture:
    """Three components in 3-D, unequal weights, anisotropic covariances of different shapes."""
    rng = np.random.default_rng(3)
    b = rng.normal(size=(3, 3, 3))
    covs = np.einsum("kij,klj->kil", b, b) / 3 + np.array([0.05, 0.3, 1.0])[:, None, None] * np.eye(3)
    return dx.GaussianMixture(np.array([0.5, 0.3, 0.2]), 3 * rng.normal(size=(3, 3)), covs)


GMM = mixture()


def reference(gmm, path, xs, ts):
    """x0, noise, score, velocity of `gmm` at points xs (T, N, d) and times ts (T,), in NumPy float64
    through explicit precision matrices: C_k = a^2 Sigma_k + s^2 I, r_k ~ w_k N(x; a mu_k, C_k)."""
    a, s = (np.asarray(f(ts), float)[:, None, None] for f in (path.alpha, path.sigma))
    da, ds = (np.asarray(f(ts), float)[:, None] for f in (path.d_alpha, path.d_sigma))
    w, mu, cov = (np.asarray(v, float) for v in (gmm.weights, gmm.means, gmm.covs))
    cov_t = a[..., None] ** 2 * cov + s[..., None] ** 2 * np.eye(gmm.dim)  # (T, K, d, d)
    prec, logdet = np.linalg.inv(cov_t), np.linalg.slogdet(cov_t)[1]
    diff = xs[:, :, None, :] - a[:, None] * mu  # (T, N, K, d)
    prec_diff = np.einsum("tkij,tnkj->tnki", prec, diff)
    r = softmax(np.log(w) - 0.5 * (np.sum(diff * prec_diff, -1) + logdet[:, None]), axis=-1)
    score = -np.einsum("tnk,tnki->tni", r, prec_diff)
    x0 = np.einsum("tnk,tnki->tni", r, mu + a[:, None] * np.einsum("kij,tnkj->tnki", cov, prec_diff))
    noise = -s * score
    with np.errstate(invalid="ignore"):  # VP: d_sigma is infinite at t = 0 (and the velocity NaN)
        velocity = da[..., None] * x0 + ds[..., None] * noise
    return {"x0": x0, "noise": noise, "score": score, "velocity": velocity}


def times(path):
    """Both ends and interior times (EDM's spread over its range)."""
    return jnp.array([0.0, 1e-4, 0.1, 0.5, 0.9, 1.0]) * path.t_max


@pytest.mark.parametrize("name", list(PATHS))
def test_network_equals_the_reference_at_both_ends(name):
    path = PATHS[name]
    ts = times(path)
    a, s = (np.asarray(f(ts), float)[:, None, None] for f in (path.alpha, path.sigma))
    rng = np.random.default_rng(0)  # points of x_t = a x0 + s eps, x0 from the mixture; one far out
    comp = rng.choice(3, size=(N_TIMES, N_POINTS), p=np.asarray(GMM.weights))
    chol = np.linalg.cholesky(np.asarray(GMM.covs))[comp]
    x0 = np.asarray(GMM.means)[comp] + np.einsum("tnij,tnj->tni", chol, rng.normal(size=comp.shape + (3,)))
    xs = a * x0 + s * rng.normal(size=x0.shape)
    xs[:, 0] *= 3

    def evaluate(x, t):
        return {p: GMM.network(path, p)(x, t) for p in PREDICTIONS}

    @jax.jit
    def both(xs, ts):
        shared = jax.vmap(jax.vmap(evaluate, in_axes=(0, None)))(xs, ts)  # one t per row of particles
        own = jax.vmap(evaluate)(xs.reshape(-1, GMM.dim), jnp.repeat(ts, N_POINTS))  # one t each
        return shared, own

    shared, own = both(xs, ts)
    want = reference(GMM, path, xs, np.asarray(ts))
    for p in PREDICTIONS:
        got_shared, got_own = np.asarray(shared[p]), np.asarray(own[p]).reshape(xs.shape)
        ok = np.isfinite(want[p]).all(axis=(1, 2))
        assert ok.all() or (name.startswith("vp") and p == "velocity" and ok[1:].all()), (p, ok)
        scale = np.max(np.abs(want[p][ok]))
        for got in (got_shared, got_own):
            assert np.isfinite(got[ok]).all(), (p, ts[~np.isfinite(got).all(axis=(1, 2))])
            np.testing.assert_allclose(got[ok], want[p][ok], rtol=1e-9, atol=1e-12 * scale, err_msg=p)


def linalg_shapes(jaxpr):
    """The output shapes of every Cholesky and triangular solve in `jaxpr`, nested calls included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("cholesky", "triangular_solve"):
            shapes.append(eqn.outvars[0].aval.shape)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, ClosedJaxpr | Jaxpr):
                    shapes += linalg_shapes(getattr(sub, "jaxpr", sub))
    return shapes


def test_time_terms_are_computed_once_under_vmap_over_particles():
    """With one t for all particles, the Cholesky factor and its inverse are (K, d, d): computed once
    per time, not per particle, and each particle costs matrix-vector products only."""
    for p in PREDICTIONS:
        net = jax.vmap(GMM.network(dx.Flow(), p), in_axes=(0, None))
        shapes = linalg_shapes(jax.make_jaxpr(net)(jnp.zeros((N_POINTS, GMM.dim)), 0.5).jaxpr)
        assert shapes and all(shape == (3, GMM.dim, GMM.dim) for shape in shapes), (p, shapes)
