"""The shipped digits model's quality, measured: `python benchmarks/digits_quality.py [--n 1000]`.

- **Classes**: `n` class-conditional samples (`n / 10` per class, Heun on FluxTimer(20, shift 1)),
  labelled by the reference classifier (logistic regression on the training digits' pixels), for
  guidance 1, 2 and 4; and the unconditional model's label histogram against uniform.
- **Fréchet distance** to the 297 test digits, in pixel space (64-D Gaussian fit) and in the
  classifier's logit space, against the floor: the same distance for `n` training digits (real
  digits the test digits did not see; for `n` > 1 500, all of them).
- **Memorisation**: the median distance from each sample to its nearest training digit, over the
  same median for the test digits (unseen real digits); a model that copies its training set has a
  ratio near 0.
- **Integrator error**: RMS distance of Euler, Heun and DPM++ 2M at 10 and 20 NFE to diffrax
  `Dopri8` (rtol = atol = 1e-8, float64) from the same noise, conditional model, 50 samples; and
  the distance of the demo's cheaper reference (float32, rtol 1e-5) to it.

Prints markdown tables (docs/digits.md quotes them).
"""

import argparse
import time

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx
from diffuse_eqx.cli.demo_digits import (
    Judge,
    initial_noise,
    labels_in_turn,
    part2_integrators,
    reference_solve,
    sample,
)
from diffuse_eqx.models import digits


def nearest_train_distance(images, train) -> np.ndarray:
    a, b = (
        images.reshape(len(images), -1).astype(np.float64),
        train.reshape(len(train), -1).astype(np.float64),
    )
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2.min(axis=1), 0))


def write_grid(samples, labels, file) -> None:
    """Ten samples of each class, one row per class, drawn large (nearest neighbour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(10, 10, figsize=(6, 6))
    for c in range(10):
        for j, image in enumerate(samples[labels == c][:10]):
            axes[c, j].imshow(image, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("The digits model: CFG w=2, Heun 20 steps, one row per class", fontsize=9)
    fig.savefig(file, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per measurement (default 1000)")
    parser.add_argument("--steps", type=int, default=20, help="Heun steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n-reference", type=int, default=50, help="samples of the integrator table (default 50)"
    )
    parser.add_argument("--figure", default=None, help="write a 10x10 grid of CFG w=2 samples to this PNG")
    args = parser.parse_args()
    start = time.perf_counter()
    model, judge = digits.pretrained(), Judge()
    n, key = args.n, jr.key(args.seed)
    train = judge.train
    floor_images = train[np.random.default_rng(args.seed).permutation(len(train))[:n]]
    floor_pixels, floor_logits = judge.fd_pixels(floor_images), judge.fd_logits(floor_images)
    test_nn = np.median(nearest_train_distance(judge.test, train))
    print(f"reference classifier: {100 * judge.test_accuracy:.1f}% on the {len(judge.test)} test digits")
    print(
        f"FD floor ({len(floor_images)} training digits vs the test digits): pixels {floor_pixels:.3f}, ",
        end="",
    )
    print(f"logits {floor_logits:.3f}; median nearest-training distance of the test digits {test_nn:.3f}\n")

    labels = labels_in_turn(n)
    x_init, keys = initial_noise(key, n), dx.particle_keys(jr.fold_in(key, 1), n)
    ts = dx.FluxTimer(args.steps, shift=1.0).times()
    print(
        f"| Samples ({n}, Heun {args.steps} steps) | NFE | accuracy | FD pixels (x floor) "
        "| FD logits (x floor) | memorisation ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows = [(f"CFG w={w:g}", "cfg", w, labels) for w in (1.0, 2.0, 4.0)] + [
        ("unconditional", "conditional", None, None)
    ]
    for name, kind, scale, want in rows:
        lab = labels if want is not None else np.full(n, digits.NULL_LABEL, np.int32)
        out, nfe = sample(
            model, dx.Heun(), ts, x_init, keys, lab, kind, None if scale is None else jnp.asarray(scale)
        )
        out = np.asarray(out)
        acc = "-" if want is None else f"{100 * judge.accuracy(out, want):.1f}%"
        fdp, fdl = judge.fd_pixels(out), judge.fd_logits(out)
        ratio = np.median(nearest_train_distance(out, train)) / test_nn
        print(
            f"| {name} | {int(nfe)} | {acc} | {fdp:.3f} ({fdp / floor_pixels:.2f}) | {fdl:.3f} "
            f"({fdl / floor_logits:.2f}) | {ratio:.2f} |"
        )
        if args.figure and kind == "cfg" and scale == 2.0:
            write_grid(out, labels, args.figure)
        if want is None:
            hist = np.bincount(judge.labels(out), minlength=10) / n
            print("\nunconditional label histogram: " + " ".join(f"{h:.3f}" for h in hist), end="")
            print(f" (max |share - 0.1| = {np.max(np.abs(hist - 0.1)):.3f})\n")

    m = args.n_reference
    lab = labels_in_turn(m)
    x0, k0 = initial_noise(jr.fold_in(key, 2), m), dx.particle_keys(jr.fold_in(key, 3), m)
    reference, ref = reference_solve(model, x0, lab, rtol=1e-8, x64=True)
    demo_ref, demo_info = reference_solve(model, x0, lab)
    part = part2_integrators(model, x0, k0, lab, reference, judge)
    print(
        f"| Integrator ({m} samples, Uniform grid) | NFE "
        f"| RMS to Dopri8 (float64, rtol 1e-8, {ref['accepted']} steps) |"
    )
    print("|---|---:|---:|")
    for r in part["rows"]:
        print(f"| {r['label']} ({r['n_steps']} steps) | {r['nfe']} | {r['rms']:.2e} |")
    rms = np.sqrt(np.mean(np.sum((demo_ref - reference).reshape(m, -1) ** 2, axis=1)))
    print(
        f"| the demo's reference: Dopri8, float32, rtol {demo_info['rtol']:g} "
        f"({demo_info['accepted']} steps) "
        f"| {demo_info['nfe']} | {rms:.2e} |"
    )
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
