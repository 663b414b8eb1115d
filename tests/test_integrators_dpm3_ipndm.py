"""DPMpp3M, DPMpp3MSDE and IPNDM: parity with diffusers' DPMSolverMultistepScheduler (float64, the same
grid, model and noise draws), parity with a transcription of k-diffusion's `sample_ipndm`, the
exactness of the 3M step on quadratics, convergence orders on Gaussians, and argument checks."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_dpmsolver_multistep as diffusers_dpm
from helpers import MIXTURE_8, PATHS, diagonal_gaussian, exact_pf_ode

import diffuse_eqx as dx


FLOW = PATHS["flow"]
PARTICLES = np.random.default_rng(0).standard_normal((8, 2))
KEYS = jr.split(jr.PRNGKey(7), len(PARTICLES))
VELOCITY = MIXTURE_8.network(FLOW, "velocity")
batched_velocity = jax.jit(jax.vmap(VELOCITY, in_axes=(0, None)))


@eqx.filter_jit
def solve(integrator, predictor, ts, xs, keys):
    """`dx.integrate` for each particle: the final particles and the NFE."""
    out, nfe, _ = jax.vmap(lambda x, k: dx.integrate(integrator, predictor, ts, x, k))(xs, keys)
    return out, nfe[0]


# ------------------------------------------------------------------------------ diffusers parity


class _Float64Torch:
    """`torch` as diffusers' DPM-Solver module sees it, but with `float32` meaning float64: its `step`
    casts the sample and the noise to float32 ("upcast"), which would cap a float64 comparison at
    ~1e-7. Everything else is torch itself."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def gauss_legendre(f, a: float, b: float, n: int = 40) -> float:
    u, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (b - a) * float(np.sum(w * f(a + 0.5 * (b - a) * (u + 1))))


class QuadraticExact(DPMSolverMultistepScheduler):
    r"""diffusers' scheduler with one change: its third-order update's $D_2 = h^2 f_{012}$ term
    weighted so that the update integrates the quadratic through the last three data estimates
    exactly. The weight of $D_2$ is then $\frac{1}{h^2}\int_0^h w(u)\,u^2\,du$, $w(u) = e^{u - h}$ for
    the ODE and $2e^{2(u - h)}$ for `sde-dpmsolver++`; diffusers 0.42 uses
    $\tfrac12 - (e^{-h} - 1 + h)/h^2$ (half of it) and $(1 - e^{-2h} - 2h)/(2h)^2 - \tfrac12$."""

    def multistep_dpm_solver_third_order_update(
        self, model_output_list, *args, sample=None, noise=None, **kw
    ):
        x_t = super().multistep_dpm_solver_third_order_update(
            model_output_list, *args, sample=sample, noise=noise, **kw
        )
        i = self.step_index
        sig = self.sigmas
        lam = [float(torch.log(1 - sig[j]) - torch.log(sig[j])) for j in (i + 1, i, i - 1, i - 2)]
        h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = h**2 * ((m0 - m1) / h_0 - (m1 - m2) / h_1) / (h_0 + h_1)
        if self.config.algorithm_type == "dpmsolver++":
            exact = gauss_legendre(lambda u: np.exp(u - h) * u**2, 0.0, h) / h**2
            theirs = 0.5 - (np.exp(-h) - 1 + h) / h**2
        else:
            exact = gauss_legendre(lambda u: 2 * np.exp(2 * (u - h)) * u**2, 0.0, h) / h**2
            theirs = (1 - np.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
        alpha_t = 1 - sig[i + 1]
        return x_t + alpha_t * (exact - theirs) * d2


def run_diffusers(scheduler, n_steps: int, noises=None):
    """The standard diffusers loop, the model seeing the scheduler's float sigma; the sigmas are
    taken in float64 (they are float32 numbers). Returns the samples, the NFE and the grid."""
    scheduler.set_timesteps(n_steps)
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    x, nfe = torch.from_numpy(PARTICLES.copy()), 0
    for k, timestep in enumerate(scheduler.timesteps):
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)
        t = scheduler.sigmas[scheduler.step_index]
        v = torch.from_numpy(np.array(batched_velocity(jnp.asarray(x.numpy()), jnp.asarray(float(t)))))
        nfe += 1
        z = None if noises is None else torch.from_numpy(noises[k].copy())
        x = scheduler.step(v, timestep, x, variance_noise=z).prev_sample
    return x.numpy(), nfe, scheduler.sigmas.numpy()


@jax.jit
def noise_draws(xs, keys, ts):
    """The draws `dx.noise` gives each particle at each step, shape (n_steps, n_particles, 2): what
    the stochastic integrators use, one per step."""

    def draws(x, key):
        def body(state, _):
            z, state = dx.noise(state)
            return state, z

        return lax.scan(body, dx.IntegratorState(x, key), None, length=ts.shape[0] - 1)[1]

    return jnp.swapaxes(jax.vmap(draws)(xs, keys), 0, 1)


# n = 6 with lower_order_final=False: diffusers would otherwise lower the second-to-last step to
# second order on grids of fewer than 15 steps (DPMpp3M does not); at n = 20 it does not.
CASES = [(6, False), (20, True)]


@pytest.mark.parametrize("n_steps, lower_order_final", CASES)
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_matches_diffusers(monkeypatch, algorithm, n_steps, lower_order_final):
    monkeypatch.setattr(diffusers_dpm, "torch", _Float64Torch())
    scheduler = QuadraticExact(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        solver_order=3,
        algorithm_type=algorithm,
        lower_order_final=lower_order_final,
    )
    sde = algorithm == "sde-dpmsolver++"
    scheduler.set_timesteps(n_steps)
    ts = jnp.asarray(scheduler.sigmas.to(torch.float64).numpy())
    noises = np.asarray(noise_draws(jnp.asarray(PARTICLES), KEYS, ts)) if sde else None
    theirs, their_nfe, sigmas = run_diffusers(scheduler, n_steps, noises)
    np.testing.assert_array_equal(sigmas, np.asarray(ts))
    integrator = dx.DPMpp3MSDE(jnp.asarray(1.0)) if sde else dx.DPMpp3M()
    ours, nfe = solve(integrator, dx.Predictor(VELOCITY, FLOW), ts, jnp.asarray(PARTICLES), KEYS)
    diff = np.abs(np.asarray(ours) - theirs).max()
    print(f"{algorithm}, {n_steps} steps: max |ours - diffusers| = {diff:.1e}")
    assert diff < 1e-10
    assert int(nfe) == their_nfe == n_steps * integrator.nfe_per_step


# ------------------------------------------------------------------------------ k-diffusion iPNDM


def kdiffusion_ipndm(denoised, x, sigmas, max_order=4):
    """k-diffusion's `sample_ipndm` (ComfyUI's, after zju-pi/diff-sampler), transcribed to numpy:
    `denoised(x, t)` is the data estimate, `d = (x - denoised) / t` its VE velocity."""
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d0 = denoised(x, t_cur)
        d_cur, order = (x - d0) / t_cur, min(max_order, i + 1)
        if t_next == 0:
            x_next = d0
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = (
                x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
            )
        buffer = (buffer + [d_cur])[-(max_order - 1) :] if max_order > 1 else []
        x = x_next
    return x


def test_ipndm_matches_kdiffusion_on_ve():
    """On the VE path (EDM: x = x0 + t eps), `dx/dt` is k-diffusion's `d`: the same recurrence."""
    path = PATHS["edm"]
    x0_net = jax.jit(jax.vmap(MIXTURE_8.network(path, "x0"), in_axes=(0, None)))
    sigmas = np.asarray([80.0, 30.0, 12.0, 5.0, 2.0, 0.8, 0.3, 0.1, 0.02, 0.0])
    xs = 80.0 * PARTICLES
    want = kdiffusion_ipndm(lambda x, t: np.asarray(x0_net(jnp.asarray(x), t)), xs, sigmas)
    pred = dx.Predictor(MIXTURE_8.network(path, "x0"), path, "x0")
    got, nfe = solve(dx.IPNDM(), pred, jnp.asarray(sigmas), jnp.asarray(xs), KEYS)
    assert np.abs(np.asarray(got) - want).max() < 1e-10 * np.abs(xs).max()
    assert int(nfe) == len(sigmas) - 1


@pytest.mark.parametrize("order", [2, 4])
def test_ipndm_matches_kdiffusion_recurrence_on_flow(order):
    """On `Flow` the recurrence runs on the velocity in t (`denoised = x - t v` for this path); the
    warm-up steps run the lower orders."""
    ts = np.linspace(1.0, 0.0, 21)

    def denoised(x, t):
        return x - t * np.asarray(batched_velocity(jnp.asarray(x), t))

    want = kdiffusion_ipndm(denoised, PARTICLES, ts, max_order=order)
    got, nfe = solve(
        dx.IPNDM(order), dx.Predictor(VELOCITY, FLOW), jnp.asarray(ts), jnp.asarray(PARTICLES), KEYS
    )
    assert np.abs(np.asarray(got) - want).max() < 1e-12
    assert int(nfe) == 20


# ------------------------------------------------------------------------------ exactness and order


N_MAX = 256


@eqx.filter_jit
def run_steps(integrator, predictor, ts, n, state):
    """`n` steps of `integrator` over `ts[: n + 1]` (`ts` padded to a fixed length, so that one
    compilation serves every n), from `state`."""
    body = lambda i, s: integrator.step(predictor, s, ts[i], ts[i + 1])  # noqa: E731
    return lax.fori_loop(0, n, body, state).position


def pad(ts):
    return jnp.asarray(np.concatenate([ts, np.full(N_MAX + 1 - len(ts), ts[-1])]))


@eqx.filter_jit
def exact_history(integrator, predictor, ts_prev, xs_prev):
    """The history the integrator would hold had it stepped exactly through `ts_prev` (newest first):
    the data estimates for DPM-Solver++(3M), the velocities for iPNDM."""
    state = dx.IntegratorState(xs_prev[0], jr.PRNGKey(0))
    preds = [dx.evaluate(predictor, state, x, t)[0] for x, t in zip(xs_prev, ts_prev)]
    if isinstance(integrator, dx.IPNDM):
        values = [p.velocity(predictor.path, t) for p, t in zip(preds, ts_prev)]
    else:
        values = [p.x0 for p in preds]
    size = integrator.history_size
    return dx.History(jnp.stack(values[:size]), ts_prev[:size], jnp.asarray(size, jnp.int32))


def test_dpmpp3m_step_is_exact_for_a_quadratic_data_estimate():
    r"""With $\hat x_0 = q(\lambda)$ quadratic (independent of $x$) and the exact history, every step
    integrates $x_s = \frac{\sigma_s}{\sigma_t}x_t + \alpha_s\int e^{\lambda - \lambda_s} q\,d\lambda$
    exactly, on any grid. diffusers' weight of the quadratic term (half) misses it by ~1e-2 here."""
    path = PATHS["vp_cosine"]
    coeffs = jnp.asarray([0.3, -0.7, 0.25])

    def q(t):
        return jnp.polyval(coeffs, path.lambda_(t))

    pred = dx.Predictor(lambda x, t: q(t) * jnp.ones_like(x), path, "x0")
    ts = np.asarray([0.9, 0.85, 0.8, 0.7, 0.62, 0.5, 0.45, 0.3, 0.2])
    x_start = jnp.asarray([0.4, -1.1])
    history = dx.History(
        jnp.stack([q(ts[1]), q(ts[0])])[:, None] * jnp.ones(2),
        jnp.asarray(ts[1::-1]),
        jnp.asarray(2, jnp.int32),
    )
    state = dx.IntegratorState(x_start, jr.PRNGKey(0), history, x0=jnp.zeros(2))
    got = run_steps(dx.DPMpp3M(), pred, pad(ts[2:]), jnp.asarray(len(ts) - 3), state)
    t0, t1 = float(ts[2]), float(ts[-1])
    lam_1 = float(path.lambda_(t1))
    integral = gauss_legendre(
        lambda lam: np.exp(lam - lam_1) * np.polyval(np.asarray(coeffs), lam), float(path.lambda_(t0)), lam_1
    )
    want = float(path.sigma(t1) / path.sigma(t0)) * np.asarray(x_start) + float(path.alpha(t1)) * integral
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-12)


MEAN, VAR, Z = np.asarray([1.0, -0.5]), np.asarray([0.3, 2.0]), np.asarray([1.2, -0.8])
STEPS = (32, 64, 128, 256)


def grid(t_hi, t_lo, kappa):
    """t(u) = t_lo + (t_hi - t_lo) w(u), w(u) = u or (e^{kappa u} - 1)/(e^kappa - 1), at u = 1 - i/n; its
    extension to u > 1 gives the times before the start (for the history)."""

    def t_of(u):
        return t_lo + (t_hi - t_lo) * (u if kappa == 0 else np.expm1(kappa * u) / np.expm1(kappa))

    return t_of


def measured_order(integrator, t_of, path=FLOW, prefill=True):
    r"""Minus the slope of log(error) against log(n) over `STEPS`, on Gaussian data with the closed-form
    PF-ODE solution. `prefill`: start with the exact history (the order of the multistep formula);
    otherwise start empty, as `dx.integrate` does (the warm-up steps then dominate)."""
    gmm = diagonal_gaussian(MEAN, VAR)
    pred = dx.Predictor(gmm.network(path, "velocity"), path, "velocity")
    t0 = t_of(1.0)
    x_start = (
        float(path.alpha(t0)) * MEAN
        + np.sqrt(float(path.alpha(t0)) ** 2 * VAR + float(path.sigma(t0)) ** 2) * Z
    )
    errors = []
    for n in STEPS:
        ts = t_of(1 - np.arange(n + 1) / n)
        state = integrator.init(pred, jnp.asarray(x_start), jr.PRNGKey(0), jnp.asarray(ts))
        state = state.replace(x0=jnp.zeros(len(x_start)))
        if prefill:
            ts_prev = t_of(1 + np.arange(1, 4) / n)
            xs_prev = jnp.asarray(np.stack([exact_pf_ode(path, MEAN, VAR, x_start, t0, t) for t in ts_prev]))
            state = state.replace(memory=exact_history(integrator, pred, jnp.asarray(ts_prev), xs_prev))
        x_end = run_steps(integrator, pred, pad(ts), jnp.asarray(n), state)
        errors.append(np.linalg.norm(np.asarray(x_end) - exact_pf_ode(path, MEAN, VAR, x_start, t0, ts[-1])))
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0], errors


# integrator, grid, path, the order of its steps given the history (`order` is that of a cold start)
ORDER_CASES = {
    "DPMpp3M-uniform": (dx.DPMpp3M(), grid(0.8, 0.1, 0.0), FLOW, 3),
    "DPMpp3M-warped": (dx.DPMpp3M(), grid(0.8, 0.2, 1.5), FLOW, 3),
    "DPMpp3MSDE(0)-warped": (dx.DPMpp3MSDE(0.0), grid(0.9, 0.2, -1.5), FLOW, 3),
    "IPNDM(1)": (dx.IPNDM(1), grid(0.8, 0.1, 0.0), FLOW, 1),
    "IPNDM(2)": (dx.IPNDM(2), grid(0.8, 0.1, 0.0), FLOW, 2),
    "IPNDM(3)": (dx.IPNDM(3), grid(0.8, 0.1, 0.0), FLOW, 3),
    "IPNDM(4)": (dx.IPNDM(4), grid(0.8, 0.1, 0.0), FLOW, 4),
}


@pytest.mark.parametrize("case", ORDER_CASES)
def test_order_with_exact_history(case):
    """Inside (0, 1), from the exact history: the order of the steps within 0.3 (iPNDM on grids
    uniform in t, which its fixed coefficients assume)."""
    integrator, t_of, path, step_order = ORDER_CASES[case]
    order, errors = measured_order(integrator, t_of, path)
    print(f"{case}: order {order:.2f} with the exact history (steps of order {step_order})")
    assert abs(order - step_order) <= 0.3, (order, errors)


@pytest.mark.parametrize("integrator", [dx.DPMpp3M(), dx.IPNDM()], ids=lambda i: type(i).__name__)
def test_order_when_self_started(integrator):
    """From an empty history the first (Euler / DDIM) step's O(h^2) error is never made up: the global
    error is O(h^2) (the declared `order`), inside (0, 1) and on the full `Flow` grid from t = 1 to 0
    alike."""
    interior, errors = measured_order(integrator, grid(0.8, 0.1, 0.0), prefill=False)
    assert integrator.order == 2 and abs(interior - 2) <= 0.3, (interior, errors)
    full, errors = measured_order(integrator, grid(1.0, 0.0, 0.0), prefill=False)
    print(
        f"{type(integrator).__name__}: self-started order {interior:.2f} inside, {full:.2f} on the full grid"
    )
    assert abs(full - 2) <= 0.3, (full, errors)


def test_ipndm_fixed_coefficients_are_second_order_on_a_warped_grid():
    order, errors = measured_order(dx.IPNDM(), grid(0.8, 0.1, 1.5))
    assert abs(order - 2) <= 0.3, (order, errors)


def test_dpmpp3m_sde_at_eta_zero_is_dpmpp3m():
    """The same arithmetic, on the full `Flow` grid (the step from alpha = 0 included)."""
    pred, ts = dx.Predictor(VELOCITY, FLOW), jnp.linspace(1.0, 0.0, 7)  # compiled for diffusers' n = 6
    a, _ = solve(dx.DPMpp3MSDE(jnp.asarray(0.0)), pred, ts, jnp.asarray(PARTICLES), KEYS)
    b, _ = solve(dx.DPMpp3M(), pred, ts, jnp.asarray(PARTICLES), KEYS)
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ arguments


def test_bad_arguments():
    for eta in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="DPMpp3MSDE eta must be >= 0 and finite"):
            dx.DPMpp3MSDE(eta)
    for order in (0, 5):
        with pytest.raises(ValueError, match="IPNDM order must be"):
            dx.IPNDM(order)
    for order in (2.0, True):  # the suite's runtime type checker may answer before the class does
        with pytest.raises(TypeError, match="order"):
            dx.IPNDM(order)
    pred, ts, x = dx.Predictor(VELOCITY, FLOW), jnp.linspace(1.0, 0.0, 5), jnp.zeros(2)
    traced = eqx.filter_jit(lambda eta: dx.integrate(dx.DPMpp3MSDE(eta), pred, ts, x, jr.PRNGKey(0))[0])
    traced(jnp.asarray(0.5))  # a valid traced value runs
    with pytest.raises(Exception, match="DPMpp3MSDE eta must be >= 0 and finite"):
        jax.block_until_ready(traced(jnp.asarray(-1.0)))


def test_declared_properties():
    # the global order from an empty history: the first step caps it at 2 (and IPNDM(1) is Euler)
    assert (dx.DPMpp3M().order, dx.DPMpp3MSDE().order, dx.IPNDM().order, dx.IPNDM(1).order) == (2, 2, 2, 1)
    assert dx.IPNDM(order=3).solver_order == 3
    assert dx.DPMpp3M().nfe_per_step == dx.DPMpp3MSDE().nfe_per_step == dx.IPNDM().nfe_per_step == 1
    assert dx.DPMpp3MSDE().eta == 1.0
