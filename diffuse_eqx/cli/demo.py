"""`diffuse-eqx demo`: the three parts of the original FLUX tutorial, run on an exact 2-D target.

The original tutorial loads FLUX.1-dev and compares, by eye, (1) timers, (2) integrators and
(3) batched generation. Here the network is the *exact* velocity of a Gaussian mixture, so every
comparison gets numbers as well as pictures:

- the sliced-Wasserstein distance ([`sliced_wasserstein`][diffuse_eqx.sliced_wasserstein]) between the
  samples and exact samples of the same size, next to its noise floor (the distance between two
  independent exact sample sets of that size);
- the RMS error against the exact probability-flow ODE solution from the *same* initial noise
  (diffrax `Dopri8`, `rtol = atol = 1e-10`, float64): the discretization error of the sampler alone.

Each part is a function that returns its data (its rows, with the samples for the figures);
`results.json` holds them all, and `report.md` is rendered from those results alone
(`_demo_report.py`), so nothing in the report is typed in by hand. The figures are drawn in
`_demo_figures.py`.
"""

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx
from diffuse_eqx._check import check_int

from ._demo_figures import FIGURE_FILES, write_figures
from ._demo_report import render_report, table_batched, table_integrators, table_matrix, table_timers


#: Steps of the timer comparison, and the network-evaluation budget of the integrator comparison.
N_STEPS = 20
#: The demo's mixture: equal components with means on a circle, isotropic covariances.
TARGET = {"n_components": 8, "radius": 4.0, "std": 0.3}
#: Random directions of every sliced-Wasserstein distance.
N_PROJECTIONS = 512


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    **Arguments:**

    - `out`: the folder that receives `report.md`, `results.json` and the figures.
    - `n_particles`: particles of the timer and integrator comparisons (parts 1 and 2).
    - `n_batch`: particles of the batched-generation benchmark (part 3).
    - `seed`: the seed of every random draw.
    - `n_timing_runs`: timed calls of part 3 (the median is reported).
    - `n_floor_pairs`: pairs of independent exact sample sets that estimate the SW noise floor.
    """

    out: Path | str = Path("diffuse_eqx_demo")
    n_particles: int = 4000
    n_batch: int = 10_000
    seed: int = 0
    n_timing_runs: int = 5
    n_floor_pairs: int = 8

    def __post_init__(self):
        for name in ("n_particles", "n_batch", "n_timing_runs", "n_floor_pairs"):
            check_int(f"DemoConfig.{name}", getattr(self, name))
        if self.n_particles < 16 or self.n_batch < 16:
            raise ValueError(
                f"The demo needs at least 16 particles per part to measure anything; got "
                f"n_particles={self.n_particles}, n_batch={self.n_batch}."
            )


QUICK = {"n_particles": 1000, "n_batch": 2000, "n_timing_runs": 3, "n_floor_pairs": 4}
"""The `--quick` settings: a small, fast run (for tests and a first look)."""


# ---------------------------------------------------------------------------------------------------
# The target, the timers and the integrators under comparison
# ---------------------------------------------------------------------------------------------------


def default_target_parameters(
    n_components: int = TARGET["n_components"], radius: float = TARGET["radius"], std: float = TARGET["std"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and covariances (float64 NumPy) of the demo's mixture: `n_components` equal
    components with means on a circle of radius `radius` and covariance `std**2 * I`."""
    angles = 2 * np.pi * np.arange(n_components) / n_components
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    covs = np.tile(std**2 * np.eye(2), (n_components, 1, 1))
    return np.full(n_components, 1.0 / n_components), means, covs


def timer_factories() -> dict[str, Callable[[int], dx.AbstractTimer]]:
    """The timers of part 1, as `label -> (n_steps -> timer)` so that part 2 can rebuild each one at
    the step count an integrator's budget allows."""

    def dynamic_label(seq_len):
        mu = float(dx.FluxTimer(N_STEPS, image_seq_len=seq_len).mu)
        return f"Flux dynamic ({seq_len} tokens, μ={mu:.2f})"

    return {
        "Uniform": lambda n: dx.UniformTimer(n),
        f"Flux static (shift=3, μ={np.log(3.0):.2f})": lambda n: dx.FluxTimer(n, shift=3.0),
        dynamic_label(1024): lambda n: dx.FluxTimer(n, image_seq_len=1024),
        dynamic_label(4096): lambda n: dx.FluxTimer(n, image_seq_len=4096),
        "Karras (ρ=7, t_min=1e-3)": lambda n: dx.KarrasTimer(n, t_min=1e-3, t_max=1.0, rho=7.0),
        "Exponential (t_min=1e-3)": lambda n: dx.ExponentialTimer(n, t_min=1e-3, t_max=1.0),
    }


@dataclasses.dataclass(frozen=True)
class Contender:
    """An integrator of part 2 and the number of steps its share of the NFE budget buys."""

    label: str
    integrator: dx.AbstractIntegrator
    n_steps: int

    @property
    def deterministic(self) -> bool:
        return not (isinstance(self.integrator, dx.DDIM) and self.integrator.eta > 0)


def contenders(nfe_budget: int = N_STEPS) -> list[Contender]:
    """The integrators of part 2, each given `nfe_budget // nfe_per_step` steps."""
    integrators = {
        "Euler": dx.Euler(),
        "DDIM": dx.DDIM(),
        "DDIM (η=1) †": dx.DDIM(eta=1.0),
        "Heun": dx.Heun(),
        "DPM++ 2S": dx.DPMpp2S(),
        "DPM++ 2M": dx.DPMpp2M(),
    }
    return [Contender(k, v, nfe_budget // v.nfe_per_step) for k, v in integrators.items()]


# ---------------------------------------------------------------------------------------------------
# Sampling and measuring
# ---------------------------------------------------------------------------------------------------


@eqx.filter_jit
def sample_particles(integrator, predictor, ts, x_init, keys):
    """Integrates every particle of `x_init` over the grid `ts` with [`integrate`][diffuse_eqx.integrate]
    (vmapped). The grid is a traced argument, so every timer with the same number of steps shares one
    compilation. **Returns:** the samples and the network evaluations per particle."""
    samples, nfe, _ = jax.vmap(lambda x, k: dx.integrate(integrator, predictor, ts, x, k))(x_init, keys)
    return samples, jnp.max(nfe)


def initial_noise(path: dx.AbstractPath, key, n: int, t_max: float = 1.0) -> jax.Array:
    """`n` draws of the prior at `t_max`, one key per particle as the Denoiser does
    (particle i is the same whatever `n` is)."""
    std = path.prior_std(t_max)
    return jax.vmap(lambda k: std * jr.normal(k, (2,)))(dx.particle_keys(key, n))


def exact_ode_endpoints(
    target_parameters: tuple[np.ndarray, np.ndarray, np.ndarray], x_init: np.ndarray
) -> tuple[np.ndarray, dict]:
    r"""The exact probability-flow ODE $dx/dt = v(x, t)$ of the mixture with these (weights, means,
    covariances) on the `Flow` path, from $t = 1$ to $t = 0$ for every initial point, with diffrax
    `Dopri8` and `PIDController(rtol=1e-10, atol=1e-10)`, in float64 whatever JAX's default precision.

    The particles are solved as one system whose step-size controller takes the max norm over all of
    them, so that every particle meets the tolerance. (A vmapped solve gives the same endpoints but
    batches the time too, so the mixture's covariances are factorized per particle: slower on CPU.)

    **Returns:** the endpoints (float64) and the solver's step counts.
    """
    with jax.enable_x64(True):
        target = dx.GaussianMixture(*target_parameters)
        path = dx.Flow()

        def velocity(t, x, args):
            return jax.vmap(lambda xi: target.velocity(path, xi, t))(x)

        @jax.jit
        def solve(x):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(velocity), diffrax.Dopri8(), t0=1.0, t1=0.0, dt0=-0.05, y0=x,
                stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10, norm=_max_norm),
                max_steps=4096,
            )  # fmt: skip
            return sol.ys[-1], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

        ends, accepted, rejected = solve(jnp.asarray(x_init, dtype=jnp.float64))
        return np.asarray(ends), dict(accepted=int(accepted), rejected=int(rejected))


def _max_norm(x):
    return jnp.max(jnp.abs(x))


def rms_error(x: np.ndarray, reference: np.ndarray) -> float:
    r"""$\big(\frac1n\sum_i \lVert x_i - x^{\rm ref}_i\rVert^2\big)^{1/2}$."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(x, np.float64) - reference) ** 2, axis=-1))))


class Measure:
    """Sliced-Wasserstein distances to one fixed set of exact samples, with shared projections."""

    def __init__(self, target: dx.GaussianMixture, key, n: int, n_floor_pairs: int):
        k_exact, k_proj, k_floor = jr.split(key, 3)
        self.exact = target.sample(k_exact, n)
        self.k_proj = k_proj
        floors = [
            self.sw(target.sample(k1, n), target.sample(k2, n))
            for k1, k2 in jr.split(k_floor, (n_floor_pairs, 2))
        ]
        self.floor = statistics.fmean(floors)
        self.floor_sd = statistics.stdev(floors) if len(floors) > 1 else 0.0

    def sw(self, x, y=None) -> float:
        y = self.exact if y is None else y
        return float(dx.sliced_wasserstein(jnp.asarray(x, y.dtype), y, self.k_proj, N_PROJECTIONS))


# ---------------------------------------------------------------------------------------------------
# The three parts
# ---------------------------------------------------------------------------------------------------


def part1_timers(predictor, x_init, keys, reference, measure, log) -> dict:
    """Every timer at `N_STEPS` steps, DDIM integrator (as the tutorial), same initial noise."""
    rows = []
    for label, make in timer_factories().items():
        ts = make(N_STEPS).times()
        samples, nfe = sample_particles(dx.DDIM(), predictor, ts, x_init, keys)
        samples = np.asarray(samples)
        rows.append(
            dict(
                label=label,
                times=np.asarray(ts, np.float64).tolist(),
                nfe=int(nfe),
                sw=measure.sw(samples),
                rms=rms_error(samples, reference),
                samples=samples,
            )
        )
        log(f"      {label:36s} NFE {int(nfe):3d}  SW {rows[-1]['sw']:.4f}  RMS {rows[-1]['rms']:.2e}")
    return {"integrator": "DDIM", "n_steps": N_STEPS, "rows": rows}


def part2_integrators(predictor, x_init, keys, reference, measure, log) -> dict:
    """Every integrator at the same NFE budget, on the Uniform grid (main table) and on every timer of
    part 1 (RMS-error matrix)."""
    factories = timer_factories()
    rows, matrix = [], {}
    for c in contenders():
        ts = dx.UniformTimer(c.n_steps).times()
        samples, nfe = sample_particles(c.integrator, predictor, ts, x_init, keys)
        samples = np.asarray(samples)
        rows.append(
            dict(
                label=c.label,
                n_steps=c.n_steps,
                nfe=int(nfe),
                deterministic=c.deterministic,
                sw=measure.sw(samples),
                rms=rms_error(samples, reference),
                samples=samples,
            )
        )
        r = rows[-1]
        log(
            f"      {c.label:14s} {c.n_steps:2d} steps  NFE {r['nfe']:3d}  "
            f"SW {r['sw']:.4f}  RMS {r['rms']:.2e}"
        )
        if c.deterministic:
            matrix[c.label] = {}
            for t_label, make in factories.items():
                s, n = sample_particles(c.integrator, predictor, make(c.n_steps).times(), x_init, keys)
                matrix[c.label][t_label] = (rms_error(np.asarray(s), reference), int(n))
    return {"timer": "Uniform", "nfe_budget": N_STEPS, "rows": rows, "matrix": matrix}


def part3_batched(predictor, target, key, config: DemoConfig) -> dict:
    """`config.n_batch` particles with [`Denoiser.generate`][diffuse_eqx.Denoiser.generate], Euler +
    dynamic FluxTimer (as the tutorial), timed."""
    timer = dx.FluxTimer(N_STEPS, image_seq_len=1024)
    denoiser = dx.Denoiser(predictor=predictor, integrator=dx.Euler(), timer=timer, x0_shape=(2,))
    k_gen, k_measure = jr.split(key)
    n = config.n_batch

    start = time.perf_counter()
    out = denoiser.generate(k_gen, n_particles=n)
    jax.block_until_ready(out.samples)
    first = time.perf_counter() - start
    runs = []
    for _ in range(config.n_timing_runs):
        start = time.perf_counter()
        jax.block_until_ready(denoiser.generate(k_gen, n_particles=n).samples)
        runs.append(time.perf_counter() - start)
    run = statistics.median(runs)
    samples = np.asarray(out.samples)
    measure = Measure(target, k_measure, n, config.n_floor_pairs)
    means = np.asarray(target.means)
    nearest = np.argmin(np.sum((samples[:, None] - means[None]) ** 2, axis=-1), axis=1)
    return dict(
        label=f"Euler + Flux dynamic (1024 tokens, μ={float(timer.mu):.2f}), {N_STEPS} steps",
        n=n,
        nfe=int(out.nfe),
        first_call=first,
        compile=max(first - run, 0.0),
        run=run,
        runs=runs,
        particles_per_s=n / run,
        nfe_per_s=n * int(out.nfe) / run,
        sw=measure.sw(samples),
        floor=measure.floor,
        floor_sd=measure.floor_sd,
        mode_mass=(np.bincount(nearest, minlength=len(means)) / n).tolist(),
        samples=samples,
    )


# ---------------------------------------------------------------------------------------------------
# The run: every part, then the figures, results.json and the report rendered from it
# ---------------------------------------------------------------------------------------------------


def _environment() -> dict:
    device = jax.devices()[0]
    kind = device.platform.upper() + (
        "" if device.device_kind == device.platform else f" ({device.device_kind})"
    )
    return dict(
        jax=jax.__version__,
        device=kind,
        cpus=os.cpu_count(),
        load=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        float=jnp.dtype(jnp.result_type(float)).name,
        python=platform.python_version(),
    )


def _strip(part: dict) -> dict:
    """A part's results without the sample arrays (for `results.json`)."""
    if "rows" in part:
        return {**part, "rows": [{k: v for k, v in r.items() if k != "samples"} for r in part["rows"]]}
    return {k: v for k, v in part.items() if k != "samples"}


def run_demo(config: DemoConfig = DemoConfig(), log: Callable[[str], None] = print) -> Path:
    """Runs the three parts, writes the figures, `results.json` and `report.md` (rendered from the
    results alone) into `config.out`.

    **Returns:** the path of `report.md`.
    """
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    log(f"diffuse-eqx demo: JAX {env['jax']} on {env['device']}, dtype {env['float']}, seed {config.seed}")

    params = default_target_parameters()
    target = dx.GaussianMixture(*params)
    path = dx.Flow()
    predictor = dx.Predictor(target.network(path, "velocity"), path, prediction="velocity")
    k_noise, k_run, k_measure, k_batch = jr.split(jr.key(config.seed), 4)
    n = config.n_particles

    def elapsed():
        return f"[{time.perf_counter() - start:5.1f} s]"

    log(f"{elapsed()} exact references: {n} exact samples, SW noise floor, Dopri8 ODE solves (float64)")
    measure = Measure(target, k_measure, n, config.n_floor_pairs)
    x_init = initial_noise(path, k_noise, n)
    keys = dx.particle_keys(k_run, n)
    reference, ref = exact_ode_endpoints(params, np.asarray(x_init))
    ref["sw"] = measure.sw(reference)
    log(
        f"      SW noise floor {measure.floor:.4f} ± {measure.floor_sd:.4f}; "
        f"exact ODE endpoints: SW {ref['sw']:.4f}, {ref['accepted']} Dopri8 steps"
    )

    log(f"{elapsed()} part 1/3: timers (DDIM, {N_STEPS} steps, {n} particles)")
    p1 = part1_timers(predictor, x_init, keys, reference, measure, log)

    log(f"{elapsed()} part 2/3: integrators at ≈{N_STEPS} NFE (Uniform timer, {n} particles)")
    p2 = part2_integrators(predictor, x_init, keys, reference, measure, log)

    log(f"{elapsed()} part 3/3: batched generation ({config.n_batch} particles)")
    p3 = part3_batched(predictor, target, k_batch, config)
    log(
        f"      first call {p3['first_call']:.2f} s, run {p3['run'] * 1e3:.1f} ms (median), "
        f"{p3['particles_per_s']:,.0f} particles/s, SW {p3['sw']:.4f} (floor {p3['floor']:.4f})"
    )

    log(f"{elapsed()} figures")
    parts = {"timers": p1, "integrators": p2, "batched": p3}
    files = write_figures(target, parts, reference, out)

    env["total_s"] = time.perf_counter() - start
    results = dict(
        config={**dataclasses.asdict(config), "out": str(config.out)},
        environment=env,
        target=dict(TARGET),
        sw_projections=N_PROJECTIONS,
        noise_floor=dict(mean=measure.floor, sd=measure.floor_sd),
        ode_reference=ref,
        **{name: _strip(part) for name, part in parts.items()},
        figures=dict(FIGURE_FILES),
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    report = out / "report.md"
    report.write_text(render_report(results))

    log("")
    log("Part 1 — timers\n" + table_timers(p1))
    log("\nPart 2 — integrators (Uniform timer)\n" + table_integrators(p2))
    log("\nPart 2 — RMS error, integrator x timer\n" + table_matrix(p2))
    log("\nPart 3 — batched generation\n" + table_batched(p3))
    log(f"\nDone in {env['total_s']:.1f} s.")
    log(f"Report:  {report.resolve()}")
    log("Figures: " + ", ".join(str(f.resolve()) for f in files.values()))
    return report
