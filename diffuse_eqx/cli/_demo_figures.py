"""The demo's figures (matplotlib, drawn off-screen with `Figure`: no display, no global state)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import diffuse_eqx as dx


#: The plotting window, and the mode shown in the zoomed panels (the mean at angle 0).
LIMIT = 5.6
ZOOM_CENTER, ZOOM_HALF_WIDTH, ZOOM_MAX_POINTS = (4.0, 0.0), 0.9, 160
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
        ax.set_xticks(np.arange(0, part1["n_steps"] + 1, 2))
    ax_t.legend(fontsize=8.5)
    fig.suptitle(f"Part 1 — {part1['n_steps']}-step time grids on the Flow path", fontweight="bold")
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
        f"Part 1 — DDIM, {part1['n_steps']} steps, {n} particles, same initial noise "
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
        f"Part 2 — integrators at ≈{part2['nfe_budget']} network evaluations, Uniform timer, {n} particles\n"
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


#: The figures of the demo and their file names.
FIGURE_FILES = {
    "schedules": "timers_schedule.png",
    "timer_samples": "timers_samples.png",
    "integrator_samples": "integrators_samples.png",
    "batched": "batched_samples.png",
}


def write_figures(
    target: dx.GaussianMixture, parts: dict[str, dict], reference: np.ndarray, out: Path
) -> dict[str, Path]:
    """Draws the four figures of the demo's parts (`timers`, `integrators`, `batched`, with their
    samples) into `out`. **Returns:** the path of each figure, by the keys of `FIGURE_FILES`."""
    grid = density_grid(target)
    n = len(reference)
    files = {k: out / v for k, v in FIGURE_FILES.items()}
    figure_schedules(parts["timers"], files["schedules"])
    figure_timer_samples(parts["timers"], grid, n, files["timer_samples"])
    figure_integrator_samples(parts["integrators"], reference, grid, n, files["integrator_samples"])
    figure_batched(parts["batched"], grid, files["batched"])
    return files
