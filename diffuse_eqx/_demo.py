"""`diffuse-eqx demo`: the three parts of the original FLUX tutorial, run on an exact 2-D target.

The original tutorial loads FLUX.1-dev and compares, by eye, (1) timers, (2) integrators and
(3) batched generation. Here the network is the *exact* velocity of a Gaussian mixture, so every
comparison gets numbers as well as pictures:

- the sliced-Wasserstein distance ([`sliced_wasserstein`][diffuse_eqx.sliced_wasserstein]) between the
  samples and exact samples of the same size, next to its noise floor (the distance between two
  independent exact sample sets of that size);
- the RMS error against the exact probability-flow ODE solution from the *same* initial noise
  (diffrax `Dopri8`, `rtol = atol = 1e-10`, float64): the discretization error of the sampler alone.

Everything is computed when the demo runs; nothing in the report is typed in by hand.
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
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import diffuse_eqx as dx


#: Steps of the timer comparison, and the network-evaluation budget of the integrator comparison.
N_STEPS = 20
#: The plotting window, and the mode shown in the zoomed panels (the mean at angle 0).
LIMIT = 5.6
ZOOM_CENTER, ZOOM_HALF_WIDTH, ZOOM_MAX_POINTS = (4.0, 0.0), 0.9, 160

FIGURE_FILES = {
    "schedules": "timers_schedule.png",
    "timer_samples": "timers_samples.png",
    "integrator_samples": "integrators_samples.png",
    "batched": "batched_samples.png",
}


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoConfig.{name} must be a positive int; got {value!r}.")
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
    n_components: int = 8, radius: float = 4.0, std: float = 0.3
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
        return float(dx.sliced_wasserstein(jnp.asarray(x, y.dtype), y, self.k_proj))


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
    return {"rows": rows}


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
    return {"rows": rows, "matrix": matrix}


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
# Figures
# ---------------------------------------------------------------------------------------------------

SAMPLE_COLOR, REFERENCE_COLOR = "#d62728", "black"


def density_grid(target: dx.GaussianMixture, n: int = 240) -> tuple[np.ndarray, ...]:
    """The exact density on an `n x n` grid over the plotting window."""
    g = np.linspace(-LIMIT, LIMIT, n)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), target.means.dtype)
    logp = jax.jit(jax.vmap(target.log_prob))(pts)
    return xx, yy, np.exp(np.asarray(logp, np.float64)).reshape(n, n)


def draw_density(ax, grid, lim=LIMIT, center=(0.0, 0.0)):
    """The exact density: a light fill, and contours at $e^{-k^2/2}$ of its peak, $k = 1, 2, 3$ (the
    1, 2 and 3 standard-deviation circles of isolated isotropic components)."""
    xx, yy, p = grid
    peak = p.max()
    ax.contourf(
        xx, yy, p, levels=peak * np.exp(-0.5 * np.arange(4.0, -0.1, -0.5) ** 2), cmap="Blues", alpha=0.5
    )
    ax.contour(
        xx, yy, p, levels=peak * np.exp(-0.5 * np.array([3.0, 2.0, 1.0]) ** 2),
        colors="#1f4e79", linewidths=0.6, alpha=0.8, zorder=3,
    )  # fmt: skip
    ax.set_xlim(center[0] - lim, center[0] + lim)
    ax.set_ylim(center[1] - lim, center[1] + lim)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=8)


def draw_samples(ax, samples, size=2.5, alpha=0.45):
    ax.scatter(
        samples[:, 0], samples[:, 1], s=size, c=SAMPLE_COLOR, alpha=alpha, linewidths=0, rasterized=True
    )


def figure_schedules(part1: dict, path: Path) -> None:
    """Figure 1: the schedules $t_i$ and the step sizes $-\\Delta t_i$ of every timer."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_t, ax_dt = fig.subplots(1, 2)
    markers = "osv^Dp"
    for row, m in zip(part1["rows"], markers):
        ts = np.asarray(row["times"])
        steps = np.arange(ts.size)
        ax_t.plot(steps, ts, marker=m, ms=4, lw=1.6, label=row["label"])
        ax_dt.plot(steps[:-1], -np.diff(ts), marker=m, ms=4, lw=1.6, label=row["label"])
    ax_t.set(xlabel="step $i$", ylabel="time $t_i$", title="Timer schedules")
    ax_dt.set(xlabel="step $i$", ylabel=r"step size $-\Delta t_i = t_i - t_{i+1}$", yscale="log")
    ax_dt.set_title("Step sizes (log scale)")
    for ax in (ax_t, ax_dt):
        ax.grid(True, alpha=0.3, which="both")
        ax.set_xticks(np.arange(0, N_STEPS + 1, 2))
    ax_t.legend(fontsize=8.5)
    fig.suptitle(f"Part 1 — {N_STEPS}-step time grids on the Flow path", fontweight="bold")
    fig.savefig(path, dpi=110)


def figure_timer_samples(part1: dict, grid, n: int, path: Path) -> None:
    """Figure 2: the samples of every timer (DDIM) over the exact density."""
    rows = part1["rows"]
    ncols = 3
    nrows = -(-len(rows) // ncols)
    fig = Figure(figsize=(4.3 * ncols, 4.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, row in zip(axes, rows):
        draw_density(ax, grid)
        draw_samples(ax, row["samples"])
        ax.set_title(f"{row['label']}\nSW {row['sw']:.3f}   RMS err {row['rms']:.1e}", fontsize=9.5)
    for ax in axes[len(rows) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"Part 1 — DDIM, {N_STEPS} steps, {n} particles, same initial noise "
        "(contours: 1, 2, 3 σ of the exact density)",
        fontweight="bold",
    )
    fig.savefig(path, dpi=100)


def figure_integrator_samples(part2: dict, reference: np.ndarray, grid, n: int, path: Path) -> None:
    """Figure 3: the samples of every integrator (top) and a zoom on one mode (bottom) where each
    sample is joined to the exact ODE endpoint of the same initial noise: the segments are the
    discretization errors."""
    rows = part2["rows"]
    fig = Figure(figsize=(3.3 * len(rows), 7.4), layout="constrained")
    axes = fig.subplots(2, len(rows), squeeze=False)
    (cx, cy), w = ZOOM_CENTER, ZOOM_HALF_WIDTH
    in_zoom = np.flatnonzero((np.abs(reference[:, 0] - cx) < w) & (np.abs(reference[:, 1] - cy) < w))
    shown = in_zoom[:ZOOM_MAX_POINTS]  # the same particles in every panel
    for col, row in enumerate(rows):
        ax, zoom = axes[0, col], axes[1, col]
        draw_density(ax, grid)
        draw_samples(ax, row["samples"], size=1.5)
        ax.add_patch(Rectangle((cx - w, cy - w), 2 * w, 2 * w, fill=False, ec="black", lw=1.0, zorder=5))
        ax.set_title(
            f"{row['label']}: {row['n_steps']} steps, NFE {row['nfe']}\n"
            f"SW {row['sw']:.3f}   RMS err {row['rms']:.1e}",
            fontsize=9.5,
        )
        draw_density(zoom, grid, lim=w, center=ZOOM_CENTER)
        s = row["samples"]
        if row["deterministic"]:
            segments = np.stack([reference[shown], s[shown]], axis=1)
            zoom.add_collection(LineCollection(segments, colors=SAMPLE_COLOR, linewidths=0.8, zorder=4))
            zoom.scatter(*reference[shown].T, s=4, c=REFERENCE_COLOR, linewidths=0, zorder=5)
            zoom.scatter(*s[shown].T, s=7, c=SAMPLE_COLOR, linewidths=0, zorder=6)
        else:
            own = np.flatnonzero((np.abs(s[:, 0] - cx) < w) & (np.abs(s[:, 1] - cy) < w))[: shown.size]
            zoom.scatter(*s[own].T, s=7, c=SAMPLE_COLOR, linewidths=0, zorder=6)
            zoom.set_title("stochastic: its samples, no pairing with the ODE", fontsize=8.5)
    fig.suptitle(
        f"Part 2 — integrators at ≈{N_STEPS} network evaluations, Uniform timer, {n} particles\n"
        f"bottom: the boxed mode, {shown.size} particles; red = sample, black = exact ODE endpoint of the "
        "same initial noise, segment = error",
        fontweight="bold",
    )
    fig.savefig(path, dpi=100)


def figure_batched(part3: dict, grid, path: Path) -> None:
    """Figure 4: the batched samples over the exact density, and the mass each mode received."""
    fig = Figure(figsize=(12, 5.6), layout="constrained")
    ax, ax_mass = fig.subplots(1, 2, width_ratios=[1.15, 1])
    draw_density(ax, grid)
    draw_samples(ax, part3["samples"], size=1.2, alpha=0.3)
    ax.set_title(
        f"{part3['n']} samples — SW {part3['sw']:.3f} (noise floor {part3['floor']:.3f})", fontsize=10
    )
    mass = np.asarray(part3["mode_mass"])
    k = np.arange(mass.size)
    w = 1 / mass.size
    se = np.sqrt(w * (1 - w) / part3["n"])
    ax_mass.axhspan(w - 2 * se, w + 2 * se, color="grey", alpha=0.25, label="exact ± 2 s.e. (multinomial)")
    ax_mass.axhline(w, color="black", lw=1.2, label=f"exact weight 1/{mass.size}")
    ax_mass.plot(k, mass, "o", color=SAMPLE_COLOR, ms=8, label="samples (nearest mean)")
    ax_mass.vlines(k, w, mass, color=SAMPLE_COLOR, lw=1.5)
    half = max(4 * se, 1.3 * np.max(np.abs(mass - w)))
    ax_mass.set(xlabel="mode (index of its angle, counter-clockwise from +x)", ylabel="fraction of samples")
    ax_mass.set(xticks=k, ylim=(w - half, w + half))
    ax_mass.grid(True, alpha=0.3)
    ax_mass.set_title("Mass per mode", fontsize=10)
    ax_mass.legend(fontsize=8.5, loc="upper right")
    fig.suptitle(
        f"Part 3 — batched generation: {part3['label']}\n"
        f"run {part3['run']:.3f} s, {part3['particles_per_s']:,.0f} particles/s "
        f"(first call, with compilation: {part3['first_call']:.2f} s)",
        fontweight="bold",
    )
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def table_timers(part1: dict) -> str:
    def count(ts, lo, hi):  # steps t_i -> t_{i+1} inside [lo, hi]
        ts = np.asarray(ts)
        return str(int(np.sum((ts[1:] >= lo) & (ts[:-1] <= hi))))

    return _table(
        ["Timer (DDIM)", "t_1", "steps in [0.5, 1]", "steps in [0, 0.1]", "NFE", "SW to exact",
         "RMS error vs exact ODE"],
        [
            [
                r["label"],
                f"{r['times'][1]:.3f}",
                count(r["times"], 0.5, 1.0),
                count(r["times"], 0.0, 0.1),
                str(r["nfe"]),
                f"{r['sw']:.4f}",
                f"{r['rms']:.3e}",
            ]
            for r in part1["rows"]
        ],
    )  # fmt: skip


def table_integrators(part2: dict) -> str:
    return _table(
        ["Integrator", "Steps", "NFE", "SW to exact", "RMS error vs exact ODE"],
        [
            [r["label"], str(r["n_steps"]), str(r["nfe"]), f"{r['sw']:.4f}", f"{r['rms']:.3e}"]
            for r in part2["rows"]
        ],
    )


def table_matrix(part2: dict) -> str:
    matrix = part2["matrix"]
    t_labels = list(next(iter(matrix.values())))
    rows = []
    for label, by_timer in matrix.items():
        best = min(v[0] for v in by_timer.values())
        cells = [f"**{e:.2e}**" if e == best else f"{e:.2e}" for e, _ in by_timer.values()]
        nfes = sorted({n for _, n in by_timer.values()})
        rows.append([label, "/".join(map(str, nfes)), *cells])
    return _table(["Integrator", "NFE", *t_labels], rows)


def table_batched(p3: dict) -> str:
    return _table(
        ["Quantity", "Value"],
        [
            ["configuration", p3["label"]],
            ["particles", f"{p3['n']}"],
            ["NFE per particle (`out.nfe`)", f"{p3['nfe']}"],
            ["first call (compile + run)", f"{p3['first_call']:.3f} s"],
            ["compile time (first call − median run)", f"{p3['compile']:.3f} s"],
            [f"run time (median of {len(p3['runs'])})", f"{p3['run'] * 1e3:.1f} ms"],
            ["particles per second", f"{p3['particles_per_s']:,.0f}"],
            ["network evaluations per second", f"{p3['nfe_per_s']:,.0f}"],
            ["SW to exact samples", f"{p3['sw']:.4f}"],
            ["SW noise floor (same size)", f"{p3['floor']:.4f} ± {p3['floor_sd']:.4f}"],
            ["largest mode-mass deviation from 1/8", f"{max(abs(m - 0.125) for m in p3['mode_mass']):.4f}"],
        ],
        align="lr",
    )


def write_report(config: DemoConfig, env: dict, ref: dict, measure: Measure, p1, p2, p3) -> str:
    """The markdown report; every number in it comes from this run."""
    det = [r for r in p2["rows"] if r["deterministic"]]
    best = min(det, key=lambda r: r["rms"])
    worst = max(det, key=lambda r: r["rms"])
    sw_spread = max(abs(r["sw"] - ref["sw"]) for r in det)
    best_timer = min(p1["rows"], key=lambda r: r["rms"])
    worst_timer = max(p1["rows"], key=lambda r: r["rms"])
    floor = f"{measure.floor:.4f} ± {measure.floor_sd:.4f}"
    return f"""# diffuse_eqx demo report

The three parts of the original FLUX tutorial (timers, integrators, batched generation), run on an
exact target instead of FLUX.1-dev, so that every comparison is measured rather than judged by eye.

- **Target:** 2-D Gaussian mixture, 8 equal components, means on a circle of radius 4,
  covariance 0.09 I (std 0.3).
- **Model:** path `dx.Flow()` ($x_t = (1-t)x_0 + t\\varepsilon$), network
  `gmm.network(path, "velocity")`, the exact velocity field — a perfect "pretrained model".
- **Metrics.** *SW*: sliced 2-Wasserstein distance (512 projections) to {config.n_particles} exact
  samples (`gmm.sample`). Its **noise floor**, the SW between two independent exact sample sets of
  {config.n_particles}, is **{floor}** (mean ± sd over {config.n_floor_pairs} pairs): at this size SW is
  dominated by how many particles land in each mode, so differences below the floor mean nothing.
  *RMS error*: $(\\frac1n\\sum_i\\lVert x_i - x_i^{{\\rm ref}}\\rVert^2)^{{1/2}}$ against the exact
  ODE endpoint $x_i^{{\\rm ref}}$ of the **same initial noise**: the probability-flow ODE
  $dx/dt = v(x, t)$ solved from $t=1$ to $t=0$ with diffrax `Dopri8` +
  `PIDController(rtol=1e-10, atol=1e-10)` in float64, all particles as one system with the max norm in
  the error control so that each meets the tolerance ({ref["accepted"]} accepted steps,
  {ref["rejected"]} rejected). The ODE endpoints are exact samples: their SW is **{ref["sw"]:.4f}**.
- **Run:** seed {config.seed}, {config.n_particles} particles in parts 1–2 (the same initial noise for
  every configuration), {config.n_batch} in part 3; JAX {env["jax"]} on {env["device"]}
  ({env["cpus"]} CPU cores, load average {env["load"]:.1f} at start), default dtype {env["float"]};
  total time {env["total_s"]:.1f} s. Timings depend on the machine and its load.

## 1. Timer comparison

All timers at {N_STEPS} steps; the tutorial's DDIM integrator (for `Flow` DDIM is Euler's method)
isolates the effect of the grid.

![Timer schedules]({FIGURE_FILES["schedules"]})

{table_timers(p1)}

Lowest discretization error: **{best_timer["label"]}** (RMS {best_timer["rms"]:.2e}); highest:
**{worst_timer["label"]}** (RMS {worst_timer["rms"]:.2e}, SW {worst_timer["sw"]:.4f} against the floor
{measure.floor:.4f}). The power-law grids (Karras, Exponential) were designed for EDM's
$\\sigma \\in [0.002, 80]$; on `Flow` they cross $t \\in [0.5, 1]$, where the particles choose their
mode, in a few large steps, and their samples are pulled towards the centre.

![Samples per timer]({FIGURE_FILES["timer_samples"]})

## 2. Integrator comparison at equal NFE

Each integrator gets about {N_STEPS} network evaluations: `{N_STEPS} // nfe_per_step` steps. NFE is
the count `integrate` returns (as `out.nfe`), never assumed: Heun's last step to $t = 0$ is an Euler
step, and DPM++ 2S takes a first-order step where $\\lambda$ is infinite (from $t = 1$ and to $t = 0$).
All use the **Uniform** timer: equal steps favour no region of the path, and on it the second-order
methods show their order. Grids that end with large steps (Flux with a shift) handicap Heun and
DPM++ 2S, whose last step to $t = 0$ is first order: the matrix below gives every integrator on every
timer.

{table_integrators(p2)}

† DDIM with η=1 is a stochastic (ancestral) sampler: it draws fresh noise at every step, so its
distance to the ODE endpoint of the same initial noise is not a discretization error; judge it by SW.

SW noise floor at n={config.n_particles}: **{floor}**. An exact sampler fed the same noise (the exact ODE
endpoints) scores SW **{ref["sw"]:.4f}**, and every deterministic integrator is within {sw_spread:.4f} of
it: with {config.n_particles} samples SW cannot separate them, the paired RMS error can. Lowest RMS
error: **{best["label"]}** ({best["rms"]:.2e}), {worst["rms"] / best["rms"]:.1f}x below the highest,
**{worst["label"]}** ({worst["rms"]:.2e}), at the same cost.

![Samples per integrator]({FIGURE_FILES["integrator_samples"]})

RMS error vs the exact ODE for every deterministic integrator on every timer of part 1, at the same
budget (bold: the best timer for that integrator):

{table_matrix(p2)}

## 3. Batched generation

`Denoiser.generate(key, n_particles={p3["n"]})`: one `lax.scan` over the grid, `vmap` over particles,
compiled once. Timings use `jax.block_until_ready`.

{table_batched(p3)}

![Batched samples]({FIGURE_FILES["batched"]})
"""


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
    """Runs the three parts, writes the figures, `report.md` and `results.json` into `config.out`.

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
    grid = density_grid(target)
    files = {k: out / v for k, v in FIGURE_FILES.items()}
    figure_schedules(p1, files["schedules"])
    figure_timer_samples(p1, grid, n, files["timer_samples"])
    figure_integrator_samples(p2, reference, grid, n, files["integrator_samples"])
    figure_batched(p3, grid, files["batched"])

    env["total_s"] = time.perf_counter() - start
    report = out / "report.md"
    report.write_text(write_report(config, env, ref, measure, p1, p2, p3))
    results = dict(
        config={**dataclasses.asdict(config), "out": str(config.out)},
        environment=env,
        noise_floor=dict(mean=measure.floor, sd=measure.floor_sd),
        ode_reference=ref,
        timers=_strip(p1),
        integrators=_strip(p2),
        batched=_strip(p3),
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))

    log("")
    log("Part 1 — timers\n" + table_timers(p1))
    log("\nPart 2 — integrators (Uniform timer)\n" + table_integrators(p2))
    log("\nPart 2 — RMS error, integrator x timer\n" + table_matrix(p2))
    log("\nPart 3 — batched generation\n" + table_batched(p3))
    log(f"\nDone in {env['total_s']:.1f} s.")
    log(f"Report:  {report.resolve()}")
    log("Figures: " + ", ".join(str(f.resolve()) for f in files.values()))
    return report
