"""Editing real learned images: class edits and reconstructions with the shipped digits model.

1. Class edits: test digits of a source class (3, 1, 4, 5, 7, 0) edited to a target class (8, 7, 9,
   6, 1, 6) with SDEdit, RF-Inversion and FlowEdit (source: the model conditioned on the source
   label; target: on the target label with classifier-free guidance). Reported per method: the
   share of edits the reference classifier (logistic regression on the training digits) labels as
   the target, the pixel RMS distance of each edit to its source, and, as the yardstick, the
   distance of the source to a fresh sample of the target class from the same noise.
2. Reconstruction: `dx.invert` of test digits with the unconditional model, then generation from
   the latents on the same grid: RMS per pixel (images in [-1, 1]) per integrator and number of
   steps, without and with fixed-point refinement.

Writes `docs/_static/editing_digits.png` (sources, each method's edit and its difference to the
source) unless `--no-figure`. Usage: `python benchmarks/editing_digits.py [--n-per-pair 40]`.
"""

import argparse
import time
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx
from diffuse_eqx.models import digits
from diffuse_eqx.models.digits.data import classify, load_data


PAIRS = ((3, 8), (1, 7), (4, 9), (5, 6), (7, 1), (0, 6))
N_STEPS = 28
GUIDANCE = 3.0
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "_static" / "editing_digits.png"


def methods():
    return {
        "SDEdit (strength 0.5)": lambda src, tgt, key, x, timer: dx.SDEdit(0.5, dx.Euler()).edit(
            key, x, tgt, timer
        ),
        "RF-Inversion (gamma 0.5, eta 0.9, stop 0.6)": lambda src, tgt, key, x, timer: dx.RFInversion(
            0.5, 0.9, stop=0.6
        ).edit(key, x, src, tgt, timer),
        "FlowEdit (strength 0.5)": lambda src, tgt, key, x, timer: dx.FlowEdit(0.5).edit(
            key, x, src, tgt, timer
        ),
    }


def rms_per_image(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(np.mean((a - b).reshape(len(a), -1) ** 2, -1))


def class_edits(model, n_per_pair: int):
    x_test, y_test = load_data("test")
    timer = dx.FluxTimer(N_STEPS, shift=1.0)
    results, examples = {}, {}
    for name, run in methods().items():
        hits, dist, fresh_dist, total, nfe = 0, [], [], 0, 0
        for i, (a, b) in enumerate(PAIRS):
            x = jnp.asarray(x_test[y_test == a][:n_per_pair])
            src, tgt = model.predictor(a), model.predictor(b, guidance=GUIDANCE)
            out = run(src, tgt, jr.key(i), x, timer)
            labels = classify(out.samples)
            hits += int(np.sum(labels == b))
            total += len(x)
            dist.append(rms_per_image(out.samples, x))
            fresh = (
                dx.Denoiser(tgt, dx.Euler(), timer, model.x0_shape).generate(jr.key(100 + i), len(x)).samples
            )
            fresh_dist.append(rms_per_image(fresh, x))
            nfe = int(out.nfe)
            examples.setdefault(name, []).append((np.asarray(x[0]), np.asarray(out.samples[0])))
        results[name] = (
            hits / total,
            float(np.mean(np.concatenate(dist))),
            float(np.mean(np.concatenate(fresh_dist))),
            nfe,
        )
    return results, examples


def reconstructions(model, n: int):
    x = jnp.asarray(load_data("test")[0][:n])
    pred = model.predictor()
    rows = []
    for name, integrator in (("Euler", dx.Euler()), ("Heun", dx.Heun()), ("DPM++2M", dx.DPMpp2M())):
        for n_steps in (10, 20, 50):
            timer = dx.FluxTimer(n_steps, shift=1.0)
            den = dx.Denoiser(pred, integrator, timer, model.x0_shape)
            row = [name, n_steps]
            for k in (0, 3):
                inv = dx.invert(integrator, pred, timer, x, fixed_point=k)
                back = den.generate(jr.key(0), n, x_init=inv.latents).samples
                row += [float(np.sqrt(np.mean(rms_per_image(back, x) ** 2))), int(inv.nfe)]
            rows.append(row)
    return rows


def write_figure(examples, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(examples)
    n_pairs = len(PAIRS)
    fig, axes = plt.subplots(
        1 + 2 * len(names), n_pairs, figsize=(1.3 * n_pairs, 1.35 * (1 + 2 * len(names)))
    )
    for j, (a, b) in enumerate(PAIRS):
        src = examples[names[0]][j][0]
        axes[0, j].imshow(src, cmap="gray_r", vmin=-1, vmax=1)
        axes[0, j].set_title(f"{a} -> {b}", fontsize=8)
        for m, name in enumerate(names):
            edit = examples[name][j][1]
            axes[1 + 2 * m, j].imshow(edit, cmap="gray_r", vmin=-1, vmax=1)
            axes[2 + 2 * m, j].imshow(edit - src, cmap="RdBu", vmin=-2, vmax=2)
    labels = ["source"] + [f"{n.split(' (')[0]}{suffix}" for n in names for suffix in ("", " - source")]
    for i, label in enumerate(labels):
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-pair", type=int, default=40, help="test digits per class pair (default 40)")
    parser.add_argument(
        "--n-reconstruct", type=int, default=100, help="test digits reconstructed (default 100)"
    )
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = digits.pretrained()
    results, examples = class_edits(model, args.n_per_pair)
    pairs = ", ".join(f"{a} -> {b}" for a, b in PAIRS)
    print(
        f"\n### Class edits ({pairs}; {args.n_per_pair} test digits each; {N_STEPS} Euler steps, "
        f"FluxTimer shift 1; target guidance {GUIDANCE})\n"
    )
    print(
        "| method | classified as the target | RMS to the source | RMS source to a fresh target sample "
        "| NFE |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, (acc, dist, fresh, nfe) in results.items():
        print(f"| {name} | {100 * acc:.1f}% | {dist:.3f} | {fresh:.3f} | {nfe} |")
    print(
        f"\n### Reconstruction of {args.n_reconstruct} test digits (unconditional model, FluxTimer shift 1)\n"
    )
    print("| integrator | steps | RMS per pixel, plain | NFE | RMS, fixed_point = 3 | NFE |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n_steps, r0, n0, r3, n3 in reconstructions(model, args.n_reconstruct):
        print(f"| {name} | {n_steps} | {r0:.2e} | {n0} | {r3:.2e} | {n3} |")
    if not args.no_figure:
        write_figure(examples, FIGURE)
        print(f"\nfigure: {FIGURE}")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
