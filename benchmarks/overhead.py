"""Per-step overhead of our sampling loop against a diffusers scheduler loop, and compile time.

1. Per-step cost at a tiny network (the linear velocity v(x, t) = -x in 2-D, so the sampler's own
   machinery dominates), for 1 and 1000 particles: our `Denoiser.generate` (Euler, a `lax.scan`,
   compiled once) against diffusers' `FlowMatchEulerDiscreteScheduler` driven by its standard Python
   loop in torch (run in a separate process so the JAX and torch thread pools do not compete).
   "per step" is the slope of the wall time between 1000 and 10 000 steps (fixed costs cancel), and
   "10 000 steps" the wall time of a whole run. Each time is the best of `--repeats` runs (the
   usual estimator of overhead: other load on the machine only ever adds time).
2. Compile time of `Denoiser.generate` against n_steps for Euler, Heun, DPMpp2M: this runs
   `benchmarks/compile_time.py` (in a fresh process, so nothing is cached).

Prints markdown tables. Usage: `python benchmarks/overhead.py [--repeats 7] [--no-compile]`.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
STEPS = (1000, 10_000)
BATCHES = (1, 1000)


def best_time(run, repeats: int) -> float:
    run()  # warm-up (compilation for JAX)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours(repeats: int) -> dict:
    """{(batch, n_steps): seconds} for `Denoiser.generate` with Euler and a linear network."""
    import jax.random as jr

    import diffuse_eqx as dx

    path = dx.Flow()
    predictor = dx.Predictor(lambda x, t: -x, path, "velocity")
    out = {}
    for batch in BATCHES:
        for n_steps in STEPS:
            denoiser = dx.Denoiser(predictor, dx.Euler(), dx.UniformTimer(n_steps), x0_shape=(2,))
            run = lambda: denoiser.generate(jr.key(0), batch).samples.block_until_ready()  # noqa: E731
            out[batch, n_steps] = best_time(run, repeats)
    return out


def diffusers(repeats: int) -> dict:
    """{(batch, n_steps): seconds} for diffusers' FlowMatchEuler loop with a linear network."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.set_grad_enabled(False)
    scheduler = FlowMatchEulerDiscreteScheduler()
    out = {}
    for batch in BATCHES:
        x0 = torch.randn(batch, 2)
        for n_steps in STEPS:

            def run():
                scheduler.set_timesteps(n_steps)
                x = x0
                for timestep in scheduler.timesteps:
                    v = -x  # the network, evaluated at t = timestep / 1000
                    x = scheduler.step(v, timestep, x).prev_sample
                return x

            out[batch, n_steps] = best_time(run, repeats)
    return out


def print_overhead(results: dict[str, dict]) -> None:
    lo, hi = STEPS
    print(f"| loop | particles | per step [us] | {hi} steps [ms] |")
    print("|---|---:|---:|---:|")
    for name, times in results.items():
        for batch in BATCHES:
            slope = (times[batch, hi] - times[batch, lo]) / (hi - lo)
            print(f"| {name} | {batch} | {1e6 * slope:.3g} | {1e3 * times[batch, hi]:.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the compile-time table")
    parser.add_argument("--diffusers-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diffusers_json:  # the child process: torch only
        print(json.dumps([[b, n, t] for (b, n), t in diffusers(args.repeats).items()]))
        return

    child = subprocess.run(
        [sys.executable, __file__, "--diffusers-json", "--repeats", str(args.repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = {(b, n): t for b, n, t in json.loads(child.stdout.splitlines()[-1])}
    import jax

    platform = jax.devices()[0].platform
    print(f"## Per-step overhead (JAX {jax.__version__} on {platform}; linear 2-D network)\n")
    print_overhead({"ours: Denoiser.generate, Euler": ours(args.repeats), "diffusers FlowMatchEuler": theirs})
    if not args.no_compile:
        print("\n## Compile time of Denoiser.generate (benchmarks/compile_time.py, 1000 particles)\n")
        sys.stdout.flush()
        subprocess.run([sys.executable, str(HERE / "compile_time.py"), "--particles", "1000"], check=True)


if __name__ == "__main__":
    main()
