"""Editing on Gaussian mixtures, where the answers are known: inversion round trips, SDEdit's
distribution, and blending against the exact conditional (next to RePaint and MCGdiff).

Problem: the 2-D mixture of 8 components on a circle of radius 4 (std 0.3, and a wider std 0.5
for the round trips), Flow path, exact velocity, float64.

1. Round trip: invert exact data samples with `dx.invert` on a uniform grid, generate from the
   latents with the same integrator and grid (`Denoiser.generate(x_init=...)`), and measure the
   distance to the input: RMS and median over the particles, with and without fixed-point
   refinement (`fixed_point=K`), and the NFE of the inversion.
2. SDEdit of exact data at strengths 0.3, 0.6, 1.0 (Heun, 20 steps): SW to fresh exact samples,
   next to the noise floor (mean SW of independent exact sets of the same size).
3. Inpainting one coordinate: keep x_1 of a point, sample x_2. The exact conditional is the
   mixture's posterior given x_1 (`GaussianMixture.posterior`, sigma_y = 0.02). SW of the x_2
   samples to it for Blended (Heun), RePaint (DDPM, its defaults) and MCGdiff, per kept point.

Usage: `python benchmarks/editing_gmm.py [--n 4000] [--quick]`.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import diffuse_eqx as dx  # noqa: E402


FLOW = dx.Flow()
#: the measurement noise of the inpainting problem's exact conditional and of MCGdiff (which
#: degenerates without noise); Blended and RePaint keep x1 exactly
SIGMA_Y = 0.02


def circle(std: float) -> dx.GaussianMixture:
    ang = 2 * np.pi * np.arange(8) / 8
    means = 4.0 * np.stack([np.cos(ang), np.sin(ang)], -1)
    return dx.GaussianMixture(np.full(8, 1 / 8), means, np.tile(std**2 * np.eye(2), (8, 1, 1)))


def round_trips(n: int, steps: list[int], iterations: int) -> None:
    integrators = {
        "Euler": dx.Euler(),
        "DDIM": dx.DDIM(),
        "Heun": dx.Heun(),
        "DPM++2S": dx.DPMpp2S(),
        "DPM++2M": dx.DPMpp2M(),
        "DPM++3M": dx.DPMpp3M(),
        "UniPC bh2 p2": dx.UniPC(2),
        "DEIS p2": dx.DEIS(2),
        "iPNDM 4": dx.IPNDM(),
    }
    for std in (0.5, 0.3):
        gm = circle(std)
        pred = dx.Predictor(gm.network(FLOW), FLOW)
        x = gm.sample(jr.key(1), n)
        print(f"\n### Round trip (invert, then generate), circle std {std}, {n} particles\n")
        print(
            f"| integrator | steps | RMS plain | RMS, K = {iterations} | median plain | "
            f"median, K = {iterations} | NFE plain / K = {iterations} |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, integrator in integrators.items():
            for n_steps in steps:
                timer = dx.UniformTimer(n_steps)
                den = dx.Denoiser(pred, integrator, timer, (2,))
                row = []
                for k in (0, iterations):
                    inv = dx.invert(integrator, pred, timer, x, fixed_point=k)
                    back = den.generate(jr.key(0), n, x_init=inv.latents).samples
                    d = np.linalg.norm(np.asarray(back - x), axis=-1)
                    row.append((float(np.sqrt(np.mean(d**2))), float(np.median(d)), int(inv.nfe)))
                (r0, m0, n0), (r1, m1, n1) = row
                print(f"| {name} | {n_steps} | {r0:.2e} | {r1:.2e} | {m0:.2e} | {m1:.2e} | {n0} / {n1} |")


def sw_floor(gm, n: int, pairs: int = 8) -> tuple[float, float]:
    values = [
        float(
            dx.sliced_wasserstein(
                gm.sample(jr.key(100 + 2 * i), n), gm.sample(jr.key(101 + 2 * i), n), jr.key(0)
            )
        )
        for i in range(pairs)
    ]
    return float(np.mean(values)), float(np.std(values))


def sdedit(n: int) -> None:
    gm = circle(0.3)
    pred = dx.Predictor(gm.network(FLOW), FLOW)
    x = gm.sample(jr.key(10), n)
    fresh = gm.sample(jr.key(12), n)
    floor, spread = sw_floor(gm, n)
    print(f"\n### SDEdit of exact data (Heun, 20 steps), circle std 0.3, {n} particles\n")
    own = float(dx.sliced_wasserstein(x, fresh, jr.key(0)))
    print(f"noise floor: SW of two exact sets {floor:.3f} +- {spread:.3f}; the input itself: {own:.3f}\n")
    print("| strength | start time | SW to fresh exact samples | / floor | RMS moved from the input |")
    print("|---:|---:|---:|---:|---:|")
    for strength in (0.3, 0.6, 1.0):
        out = dx.SDEdit(strength, dx.Heun()).edit(jr.key(11), x, pred, dx.UniformTimer(20))
        sw = float(dx.sliced_wasserstein(out.samples, fresh, jr.key(0)))
        moved = float(np.sqrt(np.mean(np.sum(np.asarray(out.samples - x) ** 2, -1))))
        print(f"| {strength} | {float(out.t_start):.2f} | {sw:.3f} | {sw / floor:.2f} | {moved:.2f} |")


def inpainting(n: int, n_steps: int) -> None:
    gm = circle(0.3)
    pred = dx.Predictor(gm.network(FLOW), FLOW)
    print(f"\n### Inpainting one coordinate: keep x1, sample x2 ({n} samples, {n_steps} steps)\n")
    print("SW of the x2 samples to the exact conditional; floor: two exact conditional sets.\n")
    print("| kept x1 | floor | Blended (Heun) | RePaint (DDPM, j = r = 10) | MCGdiff | prior x2 |")
    print("|---:|---:|---:|---:|---:|---:|")
    timer = dx.UniformTimer(n_steps)
    op = dx.Inpainting(jnp.asarray([True, False]))
    for x1 in (4.0, 2.83, 0.0, -1.5):
        original = jnp.asarray([x1, 0.0])
        conditional = gm.posterior(jnp.asarray([[1.0, 0.0]]), original[:1], SIGMA_Y)
        exact = conditional.sample(jr.key(1), n)[:, 1:]
        floor = float(dx.sliced_wasserstein(conditional.sample(jr.key(2), n)[:, 1:], exact, jr.key(0)))
        y = op.apply(original)
        samplers = {
            "Blended": dx.Denoiser(
                pred, dx.Blended(dx.Heun(), original, jnp.asarray([0.0, 1.0])), timer, (2,)
            ),
            "RePaint": dx.Denoiser(pred, dx.RePaint(dx.DDIM(eta=1.0), op, y), timer, (2,)),
        }
        sw = {}
        for name, den in samplers.items():
            samples = den.generate(jr.key(3), n).samples
            sw[name] = float(dx.sliced_wasserstein(samples[:, 1:], exact, jr.key(0)))
        smc = dx.MCGdiff(pred, dx.Matrix(jnp.asarray([[1.0, 0.0]]), sigma_y=SIGMA_Y), original[:1], timer)
        out = smc.generate(jr.key(4), n)
        idx = jr.categorical(jr.key(5), out.log_weights, shape=(n,))
        sw["MCGdiff"] = float(dx.sliced_wasserstein(out.particles[idx][:, 1:], exact, jr.key(0)))
        prior = float(dx.sliced_wasserstein(gm.sample(jr.key(6), n)[:, 1:], exact, jr.key(0)))
        print(
            f"| {x1:g} | {floor:.3f} | {sw['Blended']:.3f} | {sw['RePaint']:.3f} | {sw['MCGdiff']:.3f} | "
            f"{prior:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="particles (default 4000)")
    parser.add_argument("--quick", action="store_true", help="1000 particles, 20 steps only")
    args = parser.parse_args()
    n = 1000 if args.quick else args.n
    t0 = time.perf_counter()
    print(f"JAX {jax.__version__} on {jax.default_backend()}, float64")
    round_trips(n, [20] if args.quick else [10, 20, 50], iterations=3)
    sdedit(max(n, 10_000) if not args.quick else n)
    inpainting(n, 50)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
