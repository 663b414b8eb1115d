import math

import numpy as np
import pytest

import diffuse_eqx as dx


def bfl_get_schedule(num_steps, image_seq_len, base_shift=0.5, max_shift=1.15):
    """Black Forest Labs' `flux.sampling.get_schedule`, transcribed to numpy with the same float32
    arithmetic as their torch code (a float32 linspace, Python-float mu)."""
    timesteps = np.linspace(1, 0, num_steps + 1, dtype=np.float32)
    m = (max_shift - base_shift) / (4096 - 256)
    b = base_shift - m * 256
    mu = image_seq_len * m + b
    e = np.float32(math.exp(mu))
    with np.errstate(divide="ignore"):
        shifted = e / (e + (np.float32(1) / timesteps - np.float32(1)))
    return shifted, mu


@pytest.mark.parametrize("steps", [4, 20, 28, 50])
@pytest.mark.parametrize("tokens", [256, 1024, 4096])
def test_flux_timer_matches_bfl(steps, tokens):
    ref, mu = bfl_get_schedule(steps, tokens)
    timer = dx.FluxTimer(n_steps=steps, image_seq_len=tokens)
    ts = np.asarray(timer.times())
    assert ts.shape == (steps + 1,)
    assert float(timer.mu) == pytest.approx(mu, abs=1e-12)
    # equal to float32 rounding: a few ulps of float32
    np.testing.assert_allclose(ts, ref, rtol=4 * np.finfo(np.float32).eps, atol=1e-7)
    assert ts[0] == 1.0 and ts[-1] == 0.0


def test_flux_mu_values():
    assert float(dx.FluxTimer(20, image_seq_len=1024).mu) == pytest.approx(0.63, abs=1e-12)
    assert float(dx.FluxTimer(20, image_seq_len=4096).mu) == pytest.approx(1.15, abs=1e-12)
    assert float(dx.FluxTimer(20, image_seq_len=256).mu) == pytest.approx(0.5, abs=1e-12)


def test_flux_static_shift_is_the_sd3_shift():
    shift, n = 3.0, 20
    sigma = np.linspace(1, 0, n + 1)
    expected = shift * sigma / (1 + (shift - 1) * sigma)  # diffusers' FlowMatchEulerDiscreteScheduler
    np.testing.assert_allclose(dx.FluxTimer(n, shift=shift).times(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx.FluxTimer(n, shift=1.0).times(), sigma, rtol=1e-12, atol=1e-15)


def test_uniform_karras_exponential_custom():
    np.testing.assert_allclose(dx.UniformTimer(4).times(), [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(dx.UniformTimer(2, t_max=80.0, t_min=2.0).times(), [80, 41, 2])

    k = dx.KarrasTimer(5, t_min=0.002, t_max=80.0, rho=7.0)
    ramp = np.linspace(0, 1, 5)
    ref = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # k-diffusion get_sigmas_karras
    np.testing.assert_allclose(k.times(), np.append(ref, 0.0), rtol=1e-12)
    k_no_zero = dx.KarrasTimer(4, t_min=0.002, t_max=80.0, append_zero=False)
    np.testing.assert_allclose(k_no_zero.times(), ref, rtol=1e-12)

    e = dx.ExponentialTimer(4, t_min=0.01, t_max=1.0)
    np.testing.assert_allclose(e.times(), [1, 0.1 ** (2 / 3), 0.1 ** (4 / 3), 0.01, 0], rtol=1e-12)

    c = dx.CustomTimer([1.0, 0.4, 0.1, 0.0])
    assert c.n_steps == 3
    np.testing.assert_allclose(c.times(), [1.0, 0.4, 0.1, 0.0])


@pytest.mark.parametrize(
    "timer",
    [
        dx.UniformTimer(7),
        dx.FluxTimer(7, image_seq_len=1024),
        dx.KarrasTimer(7),
        dx.ExponentialTimer(7),
        dx.CustomTimer(np.linspace(1, 0, 8) ** 2),
    ],
    ids=lambda t: type(t).__name__,
)
def test_timer_call_and_grid_shape(timer):
    ts = np.asarray(timer.times())
    assert ts.shape == (timer.n_steps + 1,) == (8,)
    assert np.all(np.diff(ts) < 0)
    for i in range(8):
        assert float(timer(i)) == ts[i]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dx.UniformTimer(0), "n_steps"),
        (lambda: dx.UniformTimer(10, t_max=0.5, t_min=0.5), "t_min < t_max"),
        (lambda: dx.UniformTimer(10, t_min=-0.1), "t_min"),
        (lambda: dx.FluxTimer(10), "exactly one"),
        (lambda: dx.FluxTimer(10, shift=3.0, image_seq_len=1024), "exactly one"),
        (lambda: dx.FluxTimer(10, shift=-1.0), "shift"),
        (lambda: dx.FluxTimer(10, image_seq_len=0), "image_seq_len"),
        (lambda: dx.KarrasTimer(10, t_min=0.0), "t_min > 0"),
        (lambda: dx.KarrasTimer(10, rho=0.0), "rho"),
        (lambda: dx.ExponentialTimer(10, t_min=0.0), "t_min > 0"),
        (lambda: dx.CustomTimer([1.0, 0.5, 0.5, 0.0]), "strictly decreasing"),
        (lambda: dx.CustomTimer([0.0, 0.5, 1.0]), "strictly decreasing"),
        (lambda: dx.CustomTimer([1.0, np.nan, 0.0]), "non-finite"),
        (lambda: dx.CustomTimer([1.0, 0.5, -0.1]), ">= 0"),
        (lambda: dx.CustomTimer([1.0]), "at least 2"),
    ],
)
def test_invalid_timers_raise_clear_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
