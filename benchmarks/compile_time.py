"""Compile time and run time of `Denoiser.generate` against the number of steps.

The grid is a `lax.scan`, so compile time should not grow with `n_steps`; run time grows linearly.
Prints a markdown table. Usage: `python benchmarks/compile_time.py [--particles N]`.
"""

import argparse
import time

import jax
import jax.random as jr
import numpy as np

import diffuse_eqx as dx


def mixture() -> dx.GaussianMixture:
    ang = 2 * np.pi * np.arange(8) / 8
    means = 4 * np.stack([np.cos(ang), np.sin(ang)], 1)
    return dx.GaussianMixture(np.full(8, 1 / 8), means, np.tile(0.09 * np.eye(2), (8, 1, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000)
    args = parser.parse_args()
    gmm, path = mixture(), dx.Flow()
    predictor = dx.Predictor(gmm.network(path, "velocity"), path, "velocity")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, {args.particles} particles\n")
    print("| integrator | n_steps | first call (compile + run) [s] | run [ms] | compile [s] |")
    print("|---|---:|---:|---:|---:|")
    for integrator in (dx.Euler(), dx.Heun(), dx.DPMpp2M()):
        for n_steps in (10, 100, 1000):
            den = dx.Denoiser(predictor, integrator, dx.UniformTimer(n_steps), x0_shape=(2,))
            t0 = time.perf_counter()
            den.generate(jr.key(0), args.particles).samples.block_until_ready()
            first = time.perf_counter() - t0
            runs = []
            for i in range(3):
                t0 = time.perf_counter()
                den.generate(jr.key(i + 1), args.particles).samples.block_until_ready()
                runs.append(time.perf_counter() - t0)
            run = float(np.median(runs))
            name = type(integrator).__name__
            print(f"| {name} | {n_steps} | {first:.2f} | {1e3 * run:.1f} | {first - run:.2f} |")


if __name__ == "__main__":
    main()
