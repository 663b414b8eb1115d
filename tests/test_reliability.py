"""Bad input gets a named error, also under `jit`/`vmap`: non-finite samples, grids that do not start
from noise, checks of traced values, wrong dtypes, low-precision particles and the command line
(docs/reliability.md lists every case)."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import circle_mixture

import diffuse_eqx as dx
from diffuse_eqx import cli


GMM = circle_mixture()
FLOW = dx.Flow()
N_STEPS = 6
VELOCITY = GMM.network(FLOW)


def denoiser(network=VELOCITY, integrator=None, timer=None, path=FLOW, prediction="velocity", **kwargs):
    return dx.Denoiser(
        dx.Predictor(network, path, prediction),
        integrator or dx.Euler(),
        timer or dx.UniformTimer(N_STEPS),
        (2,),
        **kwargs,
    )


# ----------------------------------------------------------------------------- non-finite samples


def blows_up_below(t_bad):
    """The exact velocity, NaN for particles with x[0] > 0 once t < t_bad."""

    def network(x, t):
        return jnp.where((t < t_bad) & (x[0] > 0), jnp.nan, VELOCITY(x, t))

    return network


def test_check_finite_names_the_first_non_finite_step_time_and_particle():
    den = denoiser(blows_up_below(0.6))
    silent = den.generate(jr.key(0), 8).samples  # off by default: NaNs come back unannounced
    assert np.isnan(silent).any()
    ts = np.linspace(1, 0, N_STEPS + 1)
    step = int(np.argmax(ts < 0.6)) + 1  # the first step evaluated below t = 0.6 lands at ts[step]
    with pytest.raises(
        FloatingPointError, match=rf"particle (\d+) became non-finite .* at step {step} "
    ) as e:
        den.generate(jr.key(0), 8, check_finite=True)
    assert f"t = {ts[step - 1]:g} -> {ts[step]:g}" in str(e.value)
    particle = int(e.value.args[0].split("particle ")[1].split()[0])
    history = den.generate(jr.key(0), 8, keep_history=True).history
    assert np.isnan(history[step, particle]).any()  # the particle named is non-finite there...
    assert np.isfinite(history[:step]).all()  # ...and nothing was before that step
    finite = denoiser()
    np.testing.assert_array_equal(  # a finite run: the check changes nothing
        finite.generate(jr.key(0), 8, check_finite=True).samples, finite.generate(jr.key(0), 8).samples
    )


def test_check_finite_under_an_outer_jit_and_non_finite_initial_noise():
    den = denoiser(blows_up_below(0.6))
    with pytest.raises(Exception, match="became non-finite"):
        jax.block_until_ready(
            eqx.filter_jit(lambda d: d.generate(jr.key(0), 8, check_finite=True).samples)(den)
        )
    huge = dx.EDM(sigma_max=1e39)  # beyond float32: the initial noise overflows to inf
    inf_noise = dx.Denoiser(
        dx.Predictor(VELOCITY, huge), dx.Euler(), dx.UniformTimer(2, t_max=1e39), (2,), dtype=jnp.float32
    )
    with pytest.raises(FloatingPointError, match="in the initial noise"):
        inf_noise.generate(jr.key(0), 2, check_finite=True)


@pytest.mark.parametrize("scale", [jnp.nan, jnp.inf, -1.0])
def test_non_finite_or_negative_guidance_scales_are_refused(scale):
    pair = dx.PredictorPair(dx.Predictor(VELOCITY, FLOW), dx.Predictor(VELOCITY, FLOW))
    for guidance in (dx.CFG, dx.CFGPlusPlus, dx.APG):
        with pytest.raises(ValueError, match=r"scale must be (>= 0 and finite|in \[0, 1\])"):
            guidance(pair, scale)


# ------------------------------------------------------------------- grids that start below t_max


@pytest.mark.parametrize(
    "path, timer",
    [
        (dx.Flow(), dx.UniformTimer(20, t_max=0.5)),
        (dx.EDM(), dx.KarrasTimer(10, t_min=0.002, t_max=14.6)),  # SD's sigma_max, below EDM's 80
        (dx.VP(), dx.UniformTimer(10, t_max=0.8)),
    ],
)
def test_pure_noise_below_t_max_is_refused(path, timer):
    den = denoiser(path=path, timer=timer)  # a grid below t_max is for given initial particles
    with pytest.raises(ValueError, match=rf"starts at t0={float(timer(0))}.*below the path's t_max=") as e:
        den.generate(jr.key(0), 2)
    assert "SNR_TOLERANCE" in str(e.value) and "x_init" in str(e.value)
    x_init = jnp.ones((2, 2))
    out = den.generate(jr.key(0), 2, x_init=x_init)
    assert out.samples.shape == (2, 2) and bool(jnp.all(jnp.isfinite(out.samples)))


@pytest.mark.parametrize(
    "path, timer",
    [
        (dx.Flow(), dx.UniformTimer(20, t_max=0.999)),  # alpha/sigma = 1e-3
        (dx.EDM(), dx.KarrasTimer(10, t_min=0.002, t_max=80.0)),  # t_max itself: alpha/sigma = 1/80
        (dx.VP(), dx.UniformTimer(10)),
    ],
)
def test_pure_noise_at_or_just_below_t_max_is_accepted(path, timer):
    den = denoiser(path=path, timer=timer)
    assert float(den.timer(0)) <= float(path.t_max)
    snr = float(path.alpha(den.timer(0)) / path.sigma(den.timer(0)))
    assert snr <= dx._denoiser.SNR_TOLERANCE


# --------------------------------------------------------------------- checks of traced values


def run_traced(make_denoiser, value):
    """`generate` with a module built from a traced `value` (as when vmapping over it)."""
    fn = eqx.filter_jit(lambda v: make_denoiser(v).generate(jr.key(0), 4).samples)
    return jax.block_until_ready(fn(jnp.asarray(value)))


def test_traced_ddim_eta_grid_and_mask_are_checked_at_run_time():
    run_traced(lambda eta: denoiser(integrator=dx.DDIM(eta)), 0.5)  # a valid traced value runs
    with pytest.raises(Exception, match=r"DDIM eta must be in \[0, 1\]"):
        run_traced(lambda eta: denoiser(integrator=dx.DDIM(eta)), 2.0)
    with pytest.raises(Exception, match=r"EulerAncestral eta must be >= 0 and finite"):
        run_traced(lambda eta: denoiser(integrator=dx.EulerAncestral(eta)), jnp.nan)
    with pytest.raises(Exception, match="grid must be finite, strictly decreasing"):
        run_traced(lambda ts: denoiser(timer=dx.CustomTimer(ts)), [1.0, 0.5, 0.7, 0.0])
    with pytest.raises(Exception, match="grid must be finite, strictly decreasing"):
        run_traced(lambda ts: denoiser(timer=dx.CustomTimer(ts)), [1.0, jnp.nan, 0.0])
    with pytest.raises(Exception, match="grid must start at the path's t_max"):
        run_traced(lambda ts: denoiser(timer=dx.CustomTimer(ts)), [0.5, 0.25, 0.0])
    with pytest.raises(Exception, match="CFG scale must be >= 0 and finite"):
        pair = dx.PredictorPair(dx.Predictor(VELOCITY, FLOW), dx.Predictor(VELOCITY, FLOW))
        run_traced(
            lambda w: dx.Denoiser(dx.CFG(pair, w), dx.Euler(), dx.UniformTimer(N_STEPS), (2,)), jnp.inf
        )
    x = jnp.ones((1, 4, 4))
    apply = eqx.filter_jit(lambda m: dx.Inpainting(m).apply(x))
    np.testing.assert_array_equal(apply(jnp.ones((4, 4))), x)
    with pytest.raises(Exception, match="Inpainting mask must be boolean or hold only 0 and 1"):
        jax.block_until_ready(apply(jnp.full((4, 4), 0.5)))
    vmapped = jax.vmap(lambda eta: denoiser(integrator=dx.DDIM(eta)).generate(jr.key(0), 2).samples)
    with pytest.raises(Exception, match=r"DDIM eta must be in \[0, 1\]"):
        jax.block_until_ready(vmapped(jnp.array([0.0, 2.0])))


def test_timer_index_outside_the_grid_and_huge_grids_are_refused():
    timer = dx.UniformTimer(20)
    assert float(timer(20)) == 0.0
    for bad in (21, -1):
        with pytest.raises(IndexError, match=rf"i = {bad} is outside the grid's 0..20"):
            timer(bad)
    with pytest.raises(Exception, match="outside the grid"):
        jax.block_until_ready(eqx.filter_jit(timer)(jnp.asarray(25)))
    start = time.perf_counter()
    for cls in (dx.UniformTimer, dx.FluxTimer, dx.KarrasTimer, dx.ExponentialTimer):
        with pytest.raises(ValueError, match="MAX_STEPS"):
            cls(10**9)
    assert time.perf_counter() - start < 1.0  # refused before a grid of 10^9 times is allocated


# ---------------------------------------------------------------------------------- wrong dtypes


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.bool_, jnp.int32])
def test_non_real_network_outputs_and_particle_dtypes_are_refused(dtype):
    with pytest.raises(
        TypeError, match=f"must return real floating-point values .* got dtype {jnp.dtype(dtype)}"
    ):
        denoiser(lambda x, t: VELOCITY(x, t).astype(dtype)).generate(jr.key(0), 2)
    if dtype == jnp.complex64:
        with pytest.raises(TypeError, match="Denoiser dtype must be a real floating-point dtype"):
            denoiser(dtype=dtype)


def test_operators_refuse_wrong_dtypes_and_shapes():
    op = dx.Inpainting(jnp.ones((2,), bool), sigma_y=0.1)
    prior = dx.Predictor(VELOCITY, FLOW)
    with pytest.raises(TypeError, match="y has dtype complex.*real values"):
        dx.Denoiser(
            dx.DPS(prior, op, jnp.ones(2, jnp.complex64)), dx.Euler(), dx.UniformTimer(2), (2,)
        ).generate(jr.key(0), 2)
    with pytest.raises(
        ValueError, match=r"Matrix A must be a real floating-point matrix .* shape \(2, 3, 4\)"
    ):
        dx.Matrix(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"Matrix A must be a real floating-point matrix"):
        dx.Matrix(jnp.ones((2, 3), jnp.complex64))
    with pytest.raises(ValueError, match="Downsampling measurements need two image axes"):
        dx.Downsampling(2).adjoint(jnp.ones(4))
    with pytest.raises(ValueError, match="motion_kernel n_points must be an integer >= 2"):
        dx.motion_kernel(jr.key(0), 9, 0.5, n_points=1)


# ----------------------------------------------------------------------- low-precision particles


def test_bf16_network_keeps_float32_particles():
    """`Denoiser(dtype=bfloat16)` runs the state and the integrator in float32 (the network casts):
    the same samples, bit for bit, as float32 particles with the same bf16 network."""

    def bf16_network(x, t):
        return VELOCITY(x.astype(jnp.bfloat16).astype(jnp.float32), t).astype(jnp.bfloat16)

    low = denoiser(bf16_network, dtype=jnp.bfloat16).generate(jr.key(0), 8).samples
    high = denoiser(bf16_network, dtype=jnp.float32).generate(jr.key(0), 8).samples
    assert low.dtype == jnp.float32
    np.testing.assert_array_equal(low, high)


# --------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "option, message",
    [
        (["--height", "30"], "height must be a multiple of 16 .* got 30: use 16 or 32"),
        (["--width", "1000"], "width must be a multiple of 16 .* got 1000: use 992 or 1008"),
        (["--steps", "0"], "argument --steps: expected an integer >= 1; got '0'"),
        (["--n", "0"], "argument --n: expected an integer >= 1; got '0'"),
        (["--guidance", "nan"], "argument --guidance: expected a finite number >= 0; got 'nan'"),
        (["--true-cfg", "inf"], "argument --true-cfg: expected a finite number >= 0; got 'inf'"),
        (["--true-cfg", "2"], "needs a negative prompt"),
    ],
)
def test_cli_validates_options_before_loading_anything(tmp_path, capsys, option, message):
    out = tmp_path / "out"
    argv = [
        "generate",
        "--model",
        str(tmp_path / "no-such-model"),
        "--prompt",
        "x",
        "--out",
        str(out),
        *option,
    ]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("diffuse-eqx: error: ")
    assert __import__("re").search(message, err)
    assert "no-such-model" not in err  # refused before the model was looked for
    assert not out.exists()  # nor the output folder created


def test_cli_debug_shows_the_traceback(tmp_path):
    argv = ["--debug", "generate", "--model", str(tmp_path), "--prompt", "x", "--height", "30"]
    with pytest.raises(ValueError, match="height must be a multiple of 16"):
        cli.main(argv)
