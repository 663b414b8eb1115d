"""The demo's `report.md`, rendered from its results (the content of `results.json`) alone.

One function per part: each turns the part's data into tables and a report section, so a part added
to the demo (another target, another comparison) adds a section without touching the others.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ._markdown import Column, Section, bullets, document, image, key_value_table, paragraph, table


Results = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


def _steps_inside(lo: float, hi: float):
    """The number of steps t_i -> t_{i+1} of a row's grid that lie inside [lo, hi]."""

    def count(row: Mapping[str, Any]) -> int:
        ts = row["times"]
        return sum(1 for a, b in zip(ts[:-1], ts[1:]) if b >= lo and a <= hi)

    return count


TIMER_COLUMNS = (
    Column("Timer (DDIM)", "label", align="left"),
    Column("t_1", lambda row: row["times"][1], "{:.3f}"),
    Column("steps in [0.5, 1]", _steps_inside(0.5, 1.0)),
    Column("steps in [0, 0.1]", _steps_inside(0.0, 0.1)),
    Column("NFE", "nfe"),
    Column("SW to exact", "sw", "{:.4f}"),
    Column("RMS error vs exact ODE", "rms", "{:.3e}"),
)

INTEGRATOR_COLUMNS = (
    Column("Integrator", "label", align="left"),
    Column("Steps", "n_steps"),
    Column("NFE", "nfe"),
    Column("SW to exact", "sw", "{:.4f}"),
    Column("RMS error vs exact ODE", "rms", "{:.3e}"),
)


def table_timers(timers: Results) -> str:
    return table(timers["rows"], TIMER_COLUMNS)


def table_integrators(integrators: Results) -> str:
    return table(integrators["rows"], INTEGRATOR_COLUMNS)


def table_matrix(integrators: Results) -> str:
    """RMS error of every deterministic integrator (rows) on every timer (columns); the best timer of
    each integrator in bold."""
    matrix = integrators["matrix"]  # integrator -> timer -> (RMS error, NFE)
    t_labels = list(next(iter(matrix.values())))

    def rms(t_label):
        def cell(by_timer):
            e = by_timer[t_label][0]
            return f"**{e:.2e}**" if e == min(v[0] for v in by_timer.values()) else f"{e:.2e}"

        return cell

    columns = [
        Column("Integrator", lambda item: item[0], align="left"),
        Column("NFE", lambda item: "/".join(map(str, sorted({n for _, n in item[1].values()})))),
        *(Column(t, lambda item, f=rms(t): f(item[1])) for t in t_labels),
    ]
    return table(matrix.items(), columns)


def table_batched(batched: Results) -> str:
    b = batched
    uniform = 1 / len(b["mode_mass"])
    return key_value_table(
        {
            "configuration": b["label"],
            "particles": f"{b['n']}",
            "NFE per particle (`out.nfe`)": f"{b['nfe']}",
            "first call (compile + run)": f"{b['first_call']:.3f} s",
            "compile time (first call − median run)": f"{b['compile']:.3f} s",
            f"run time (median of {len(b['runs'])})": f"{b['run'] * 1e3:.1f} ms",
            "particles per second": f"{b['particles_per_s']:,.0f}",
            "network evaluations per second": f"{b['nfe_per_s']:,.0f}",
            "SW to exact samples": f"{b['sw']:.4f}",
            "SW noise floor (same size)": f"{b['floor']:.4f} ± {b['floor_sd']:.4f}",
            f"largest mode-mass deviation from 1/{len(b['mode_mass'])}": (
                f"{max(abs(m - uniform) for m in b['mode_mass']):.4f}"
            ),
        }
    )


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


def _floor(results: Results) -> str:
    return f"{results['noise_floor']['mean']:.4f} ± {results['noise_floor']['sd']:.4f}"


def intro(results: Results) -> list[str]:
    config, env, ref, target = (results[k] for k in ("config", "environment", "ode_reference", "target"))
    n = config["n_particles"]
    return [
        paragraph(
            "The three parts of the original FLUX tutorial (timers, integrators, batched generation), run "
            "on an exact target instead of FLUX.1-dev, so that every comparison is measured rather than "
            "judged by eye."
        ),
        bullets(
            [
                f"**Target:** 2-D Gaussian mixture, {target['n_components']} equal components, means on a "
                f"circle of radius {target['radius']:g}, covariance {target['std'] ** 2:g} I "
                f"(std {target['std']:g}).",
                "**Model:** path `dx.Flow()` ($x_t = (1-t)x_0 + t\\varepsilon$), network "
                '`gmm.network(path, "velocity")`, the exact velocity field — a perfect "pretrained model".',
                f"**Metrics.** *SW*: sliced 2-Wasserstein distance ({results['sw_projections']} projections) "
                f"to {n} exact samples (`gmm.sample`). Its **noise floor**, the SW between two independent "
                f"exact sample sets of {n}, is **{_floor(results)}** (mean ± sd over "
                f"{config['n_floor_pairs']} pairs): at this size SW is dominated by how many particles land "
                "in each mode, so differences below the floor mean nothing. *RMS error*: "
                "$(\\frac1n\\sum_i\\lVert x_i - x_i^{\\rm ref}\\rVert^2)^{1/2}$ against the exact ODE "
                "endpoint $x_i^{\\rm ref}$ of the **same initial noise**: the probability-flow ODE "
                "$dx/dt = v(x, t)$ solved from $t=1$ to $t=0$ with diffrax `Dopri8` + "
                "`PIDController(rtol=1e-10, atol=1e-10)` in float64, all particles as one system with the "
                f"max norm in the error control so that each meets the tolerance ({ref['accepted']} "
                f"accepted steps, {ref['rejected']} rejected). The ODE endpoints are exact samples: their "
                f"SW is **{ref['sw']:.4f}**.",
                f"**Run:** seed {config['seed']}, {n} particles in parts 1–2 (the same initial noise for "
                f"every configuration), {config['n_batch']} in part 3; JAX {env['jax']} on {env['device']} "
                f"({env['cpus']} CPU cores, load average {env['load']:.1f} at start), default dtype "
                f"{env['float']}; total time {env['total_s']:.1f} s. Timings depend on the machine and its "
                "load.",
            ]
        ),
    ]


def section_timers(results: Results) -> Section:
    timers, figures = results["timers"], results["figures"]
    best = min(timers["rows"], key=lambda r: r["rms"])
    worst = max(timers["rows"], key=lambda r: r["rms"])
    return Section(
        "1. Timer comparison",
        [
            paragraph(
                f"All timers at {timers['n_steps']} steps; the tutorial's DDIM integrator (for `Flow` DDIM "
                "is Euler's method) isolates the effect of the grid."
            ),
            image("Timer schedules", figures["schedules"]),
            table_timers(timers),
            paragraph(
                f"Lowest discretization error: **{best['label']}** (RMS {best['rms']:.2e}); highest: "
                f"**{worst['label']}** (RMS {worst['rms']:.2e}, SW {worst['sw']:.4f} against the floor "
                f"{results['noise_floor']['mean']:.4f}). The power-law grids (Karras, Exponential) were "
                "designed for EDM's $\\sigma \\in [0.002, 80]$; on `Flow` they cross $t \\in [0.5, 1]$, "
                "where the particles choose their mode, in a few large steps, and their samples are pulled "
                "towards the centre."
            ),
            image("Samples per timer", figures["timer_samples"]),
        ],
    )


def section_integrators(results: Results) -> Section:
    parts, figures, ref = results["integrators"], results["figures"], results["ode_reference"]
    budget, n = parts["nfe_budget"], results["config"]["n_particles"]
    det = [r for r in parts["rows"] if r["deterministic"]]
    best = min(det, key=lambda r: r["rms"])
    worst = max(det, key=lambda r: r["rms"])
    sw_spread = max(abs(r["sw"] - ref["sw"]) for r in det)
    return Section(
        "2. Integrator comparison at equal NFE",
        [
            paragraph(
                f"Each integrator gets about {budget} network evaluations: `{budget} // nfe_per_step` steps. "
                "NFE is the count `integrate` returns (as `out.nfe`), never assumed: Heun's last step to "
                "$t = 0$ is an Euler step, and DPM++ 2S takes a first-order step where $\\lambda$ is "
                "infinite (from $t = 1$ and to $t = 0$). All use the **Uniform** timer: equal steps favour "
                "no region of the path, and on it the second-order methods show their order. Grids that end "
                "with large steps (Flux with a shift) handicap Heun and DPM++ 2S, whose last step to $t = 0$ "
                "is first order: the matrix below gives every integrator on every timer."
            ),
            table_integrators(parts),
            paragraph(
                "† DDIM with η=1 is a stochastic (ancestral) sampler: it draws fresh noise at every step, so "
                "its distance to the ODE endpoint of the same initial noise is not a discretization error; "
                "judge it by SW."
            ),
            paragraph(
                f"SW noise floor at n={n}: **{_floor(results)}**. An exact sampler fed the same noise (the "
                f"exact ODE endpoints) scores SW **{ref['sw']:.4f}**, and every deterministic integrator is "
                f"within {sw_spread:.4f} of it: with {n} samples SW cannot separate them, the paired RMS "
                f"error can. Lowest RMS error: **{best['label']}** ({best['rms']:.2e}), "
                f"{worst['rms'] / best['rms']:.1f}x below the highest, **{worst['label']}** "
                f"({worst['rms']:.2e}), at the same cost."
            ),
            image("Samples per integrator", figures["integrator_samples"]),
            paragraph(
                "RMS error vs the exact ODE for every deterministic integrator on every timer of part 1, at "
                "the same budget (bold: the best timer for that integrator):"
            ),
            table_matrix(parts),
        ],
    )


def section_batched(results: Results) -> Section:
    batched = results["batched"]
    return Section(
        "3. Batched generation",
        [
            paragraph(
                f"`Denoiser.generate(key, n_particles={batched['n']})`: one `lax.scan` over the grid, `vmap` "
                "over particles, compiled once. Timings use `jax.block_until_ready`."
            ),
            table_batched(batched),
            image("Batched samples", results["figures"]["batched"]),
        ],
    )


SECTIONS = (section_timers, section_integrators, section_batched)


def render_report(results: Results, sections: Sequence = SECTIONS) -> str:
    """The markdown report; every number in it is read from `results`."""
    return document("diffuse_eqx demo report", intro(results), [section(results) for section in sections])
