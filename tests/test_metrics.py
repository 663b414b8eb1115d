"""`frechet_distance` against closed forms: sample sets built to have exactly a given mean and
covariance, so the Gaussian fits are known and the distance is the 2-Wasserstein distance of two
known Gaussians."""

import numpy as np
import pytest
import scipy.linalg

import diffuse_eqx as dx


def with_moments(rng, n, mean, cov):
    """`n` points whose sample mean is `mean` and (unbiased) sample covariance `cov`, exactly."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance I
    return z @ np.linalg.cholesky(cov).T + mean


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    x = with_moments(rng, 50, np.zeros(3), np.diag(a))
    y = with_moments(rng, 80, np.array([1.0, -2.0, 0.0]), np.diag(b))
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert dx.frechet_distance(x, y) == pytest.approx(expected, rel=1e-10)


def test_general_covariances_against_the_matrix_square_root():
    rng = np.random.default_rng(1)
    d = 6
    la, lb = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    cov_a, cov_b = la @ la.T + 0.1 * np.eye(d), lb @ lb.T + 0.1 * np.eye(d)
    mean_a, mean_b = rng.standard_normal(d), rng.standard_normal(d)
    x, y = with_moments(rng, 40, mean_a, cov_a), with_moments(rng, 30, mean_b, cov_b)
    cross = scipy.linalg.sqrtm(cov_a @ cov_b).real  # the usual FID formula
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross)
    assert dx.frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)
    assert dx.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert dx.frechet_distance(x, y) == pytest.approx(dx.frechet_distance(y, x), rel=1e-10)


def test_bad_inputs():
    x = np.zeros((10, 3))
    for bad in (np.zeros((10, 4)), np.zeros((1, 3)), np.zeros(10)):
        with pytest.raises(ValueError, match="frechet_distance"):
            dx.frechet_distance(x, bad)
    with pytest.raises(ValueError, match="finite"):
        dx.frechet_distance(x, np.full((10, 3), np.nan))
