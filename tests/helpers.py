"""Shared test helpers: exact Gaussian targets, their closed-form probability-flow ODE, the 8-component
mixture of the sampling tests with its exact samples and noise floor, and warped time grids."""

import functools

import jax.random as jr
import numpy as np

import diffuse_eqx as dx


PATHS = {
    "flow": dx.Flow(),
    "vp_linear": dx.VP(),
    "vp_cosine": dx.VP(schedule="cosine"),
    "edm": dx.EDM(sigma_max=80.0),
}


def diagonal_gaussian(mean, var) -> dx.GaussianMixture:
    mean, var = np.asarray(mean, float), np.asarray(var, float)
    return dx.GaussianMixture(np.ones(1), mean[None], np.diag(var)[None])


def exact_pf_ode(path, mean, var, x_start, t_start, t_end):
    """Closed-form probability-flow ODE solution for data N(mean, diag(var)): each coordinate keeps
    its standardized value, x_t = a_t mean + sd_t (x_s - a_s mean) / sd_s, sd^2 = a^2 var + s^2."""
    a0, s0 = float(path.alpha(t_start)), float(path.sigma(t_start))
    a1, s1 = float(path.alpha(t_end)), float(path.sigma(t_end))
    sd0, sd1 = np.sqrt(a0**2 * var + s0**2), np.sqrt(a1**2 * var + s1**2)
    return a1 * mean + sd1 / sd0 * (x_start - a0 * mean)


def circle_mixture(n_components=8, radius=4.0, std=0.3) -> dx.GaussianMixture:
    ang = 2 * np.pi * np.arange(n_components) / n_components
    means = radius * np.stack([np.cos(ang), np.sin(ang)], -1)
    covs = np.tile(std**2 * np.eye(2), (n_components, 1, 1))
    return dx.GaussianMixture(np.full(n_components, 1 / n_components), means, covs)


def mixture_8() -> dx.GaussianMixture:
    """A 2-D mixture of 8 components with unequal weights and anisotropic covariances."""
    rng = np.random.default_rng(0)
    ang = 2 * np.pi * np.arange(8) / 8
    means = 3 * np.stack([np.cos(ang), np.sin(ang)], 1)
    w = rng.uniform(0.5, 1.5, 8)
    a = 0.25 * rng.normal(size=(8, 2, 2))
    return dx.GaussianMixture(w / w.sum(), means, a @ a.transpose(0, 2, 1) + 0.05 * np.eye(2))


MIXTURE_8 = mixture_8()
#: The key of the sliced-Wasserstein projections, shared by every comparison.
SW_KEY = jr.PRNGKey(12345)


@functools.lru_cache
def exact_and_floor(n: int):
    """`n` exact samples of `MIXTURE_8`, and the noise floor: the mean SW between independent exact
    sets of size `n` (what sampling error has to be compared with). Computed once per size."""
    exact = MIXTURE_8.sample(jr.PRNGKey(999), n)
    pairs = [
        (MIXTURE_8.sample(jr.PRNGKey(2 * i), n), MIXTURE_8.sample(jr.PRNGKey(2 * i + 1), n)) for i in range(4)
    ]
    floor = float(np.mean([dx.sliced_wasserstein(a, b, SW_KEY) for a, b in pairs]))
    return exact, floor


def warped_grid(t_hi, t_lo, kappa):
    """n + 1 times from t_hi down to t_lo, spaced by the smooth monotone warp
    u -> (exp(kappa u) - 1) / (exp(kappa) - 1) (kappa = 0: uniform)."""

    def grid(n):
        u = np.linspace(1, 0, n + 1)
        w = u if abs(kappa) < 1e-8 else np.expm1(kappa * u) / np.expm1(kappa)
        return t_lo + (t_hi - t_lo) * w

    return grid
