"""The digits demo's figures (PNG): digits drawn large, nearest-neighbour, black on white."""

from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .demo_digits import FIGURES  # noqa: E402


CMAP = plt.get_cmap("gray_r").with_extremes(bad="#f2d7d5")  # unseen pixels of a masked digit: pink


def _digit(ax, image, title=None):
    ax.imshow(np.asarray(image, np.float64), cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=7)


def _digit_rows(fig, spec, rows: list[tuple[str, np.ndarray]], n_cols: int):
    """One row of digits per (label, images), the label on the left."""
    grid = spec.subgridspec(len(rows), n_cols, wspace=0.05, hspace=0.15)
    for i, (label, images) in enumerate(rows):
        for j in range(n_cols):
            ax = fig.add_subplot(grid[i, j])
            _digit(ax, images[j]) if j < len(images) else ax.axis("off")
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)


def figure_timers(part: dict, path: Path) -> None:
    rows = part["rows"]
    n_cols = min(10, len(rows[0]["samples"]))
    fig = plt.figure(figsize=(12, 0.9 * len(rows) + 1.5))
    spec = fig.add_gridspec(1, 2, width_ratios=[1, 2.2], wspace=0.45)
    left = spec[0].subgridspec(2, 1, hspace=0.5)
    ax_t, ax_h = fig.add_subplot(left[0]), fig.add_subplot(left[1])
    for r in rows:
        ts = np.asarray(r["times"])
        ax_t.plot(np.arange(len(ts)), ts, marker=".", label=r["label"])
        ax_h.plot(np.arange(len(ts) - 1), -np.diff(ts), marker=".")
    ax_t.set(xlabel="step", ylabel="t", title="grids")
    ax_h.set(xlabel="step", ylabel="t_i - t_{i+1}", title="step sizes", yscale="log")
    ax_t.legend(fontsize=6)
    _digit_rows(fig, spec[1], [(r["label"], r["samples"]) for r in rows], n_cols)
    fig.suptitle(
        f"Timers: {part['integrator']}, {part['n_steps']} steps, the same noise and labels", fontsize=10
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure_integrators(part: dict, reference: np.ndarray, path: Path) -> None:
    rows = [("reference (Dopri8)", reference)]
    rows += [(f"{r['label']}, {r['nfe']} NFE", r["samples"]) for r in part["rows"]]
    n_cols = min(10, len(reference))
    fig = plt.figure(figsize=(0.9 * n_cols + 2, 0.9 * len(rows)))
    _digit_rows(fig, fig.add_gridspec(1, 1)[0], rows, n_cols)
    fig.suptitle("Integrators at equal NFE (Uniform grid), the same noise", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure_batched(part: dict, path: Path) -> None:
    samples = part["samples"][:100]
    side = int(np.ceil(np.sqrt(len(samples))))
    fig = plt.figure(figsize=(11, 6))
    spec = fig.add_gridspec(1, 2, width_ratios=[1.1, 1], wspace=0.25)
    grid = spec[0].subgridspec(side, side, wspace=0.05, hspace=0.05)
    for k in range(side * side):
        ax = fig.add_subplot(grid[k // side, k % side])
        _digit(ax, samples[k]) if k < len(samples) else ax.axis("off")
    ax = fig.add_subplot(spec[1])
    ax.bar(np.arange(10), part["histogram"], color="0.4")
    ax.axhline(0.1, color="C3", ls="--", label="uniform")
    ax.set(xlabel="label (reference classifier)", ylabel="share of samples", xticks=range(10))
    ax.set_title(f"{part['n']} unconditional samples", fontsize=9)
    ax.legend()
    fig.suptitle(
        f"Batched generation: the first {len(samples)} samples, and the class histogram", fontsize=10
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure_guidance(part: dict, path: Path) -> None:
    rows = [(f"{r['label']}\n{100 * r['accuracy']:.0f}% right", r["samples"][:20]) for r in part["rows"]]
    n_cols = min(20, len(part["rows"][0]["samples"]))
    fig = plt.figure(figsize=(0.6 * n_cols + 3, 0.75 * len(rows)))
    _digit_rows(fig, fig.add_gridspec(1, 1)[0], rows, n_cols)
    fig.suptitle("Guidance: one row per method, labels 0-9 in turn, the same noise", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure_inverse(part: dict, path: Path) -> None:
    truth, blocks = part["truth"], part["blocks"]
    m = len(truth)
    methods = [r["method"] for r in blocks[0]["rows"]]
    k = blocks[0]["rows"][0]["samples"].shape[1]
    n_cols = 2 + len(methods) * k
    fig = plt.figure(figsize=(0.7 * n_cols * len(blocks) + 1, 0.8 * m + 1))
    spec = fig.add_gridspec(1, len(blocks), wspace=0.15)
    for b, block in enumerate(blocks):
        grid = spec[b].subgridspec(m, n_cols, wspace=0.05, hspace=0.1)
        for i in range(m):
            images = [truth[i], block["observed"][i]]
            titles = ["truth", "observed"]
            for r in block["rows"]:
                images += list(r["samples"][i])
                titles += [r["method"]] + [""] * (k - 1)
            for j, image in enumerate(images):
                _digit(fig.add_subplot(grid[i, j]), image, titles[j] if i == 0 else None)
        fig.text(
            (b + 0.5) / len(blocks), 0.98, block["operator"], ha="center", va="bottom", fontsize=10,
            transform=fig.transFigure,
        )  # fmt: skip
    fig.suptitle("An inverse problem: test digits completed by DPS, PiGDM and MCGdiff", y=1.04, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_figures(parts: dict, reference: np.ndarray, out: Path) -> dict[str, Path]:
    files = {name: Path(out) / file for name, file in FIGURES.items()}
    figure_timers(parts["timers"], files["timers"])
    figure_integrators(parts["integrators"], reference, files["integrators"])
    figure_batched(parts["batched"], files["batched"])
    figure_guidance(parts["guidance"], files["guidance"])
    figure_inverse(parts["inverse"], files["inverse"])
    return files
