"""Shared test fixtures: exact Gaussian targets and their closed-form probability-flow ODE."""

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
