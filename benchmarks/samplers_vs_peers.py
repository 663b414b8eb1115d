"""Our samplers against diffusers' flow schedulers and the original Diffuse, on a problem with an
exact answer.

Problem: a 2-D Gaussian mixture, 8 equal components with means on a circle of radius 4 and
isotropic std 0.3, sampled along the Flow path x_t = (1 - t) x0 + t eps with its exact velocity.
Every sampler starts from the same initial noise (at t = 1) and runs in float32. For each NFE budget:

- RMS vs exact ODE: sqrt(mean_i |x_i - x_i^ref|^2), where x^ref integrates the same velocity from
  the same noise from t = 1 to t = 0 with diffrax's Dopri8 (rtol = atol = 1e-10, float64).
- SW: sliced Wasserstein distance to exact samples of the mixture; "floor" is the SW between two
  independent exact sample sets of the same size (what a perfect sampler would show), mean and
  spread over 8 pairs. It is dominated by how many samples land in each component, so differences
  well inside the spread mean nothing: RMS vs exact ODE is the sharp metric here.
- time: median (and best) wall time of 5 full runs over all particles, after compilation for JAX.

Peers run in their own processes (torch and JAX thread pools compete otherwise): diffusers'
FlowMatchEuler / FlowMatchHeun / DPM-Solver++ 2M (`_peer_diffusers.py`) and the original Diffuse
(`_peer_diffuse.py`, run by the Python in `$DIFFUSE_PEER_PYTHON`, default /work/peer_venv/bin/python,
a venv with `pip install diffuse-jax`; skipped with a note if absent).

Grids marked † are fitted to this problem: the grid that minimizes the mean squared error to the
exact ODE over *independent* noise (a different key from the test noise), found by L-BFGS on the
step sizes through `dx.integrate` (float64). They show what a problem-adapted grid buys; every other
grid of ours is a fixed, problem-agnostic formula.

Usage: `python benchmarks/samplers_vs_peers.py [--n-particles 10000] [--nfe 10 20 50] [--quick]`.
"""

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.optimize

import diffuse_eqx as dx


HERE = Path(__file__).resolve().parent
N_COMPONENTS, RADIUS, STD = 8, 4.0, 0.3
PATH = dx.Flow()
DEFAULT_PEER_PYTHON = "/work/peer_venv/bin/python"


def mixture_means() -> np.ndarray:
    angles = 2 * np.pi * np.arange(N_COMPONENTS) / N_COMPONENTS
    return RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)


def mixture() -> dx.GaussianMixture:
    """The target, in JAX's current default float (float32, or float64 inside `jax.enable_x64`)."""
    k = N_COMPONENTS
    return dx.GaussianMixture(np.full(k, 1 / k), mixture_means(), np.tile(STD**2 * np.eye(2), (k, 1, 1)))


def predictor() -> dx.Predictor:
    return dx.Predictor(mixture().network(PATH, "velocity"), PATH, "velocity")


# --------------------------------------------------------------------------------------------------
# Our samplers. `integrate` is the one place that knows what `dx.integrate` returns.


def integrate(integrator, pred, ts, x, key):
    """One particle over the grid `ts`: (final particle, network evaluations made)."""
    out = dx.integrate(integrator, pred, ts, x, key)
    return out[0], out[1]


@eqx.filter_jit
def solve(integrator, pred, ts, noise, keys):
    """All particles; compiled once per integrator and grid length (the grid is traced)."""
    return jax.vmap(lambda x, k: integrate(integrator, pred, ts, x, k))(noise, keys)


@functools.cache
def _nfe(integrator: dx.AbstractIntegrator, n_steps: int) -> int:
    x, key = jnp.zeros((1, 2)), dx.particle_keys(jr.key(0), 1)
    return int(solve(integrator, predictor(), dx.UniformTimer(n_steps).times(), x, key)[1][0])


def steps_for_budget(integrator: dx.AbstractIntegrator, budget: int) -> int:
    """The most steps whose NFE, counted by a real run on the uniform grid from 1 to 0 (all our grids
    have these ends, which is where integrators skip evaluations), fits `budget`."""
    n = max(1, budget // integrator.nfe_per_step)
    while _nfe(integrator, n) > budget and n > 1:
        n -= 1
    while _nfe(integrator, n + 1) <= budget:
        n += 1
    return n


@dataclasses.dataclass(frozen=True)
class Config:
    """One of our samplers: an integrator and a timer factory `n_steps -> timer`."""

    name: str
    integrator: dx.AbstractIntegrator
    timer: Callable[[int], dx.AbstractTimer]


# Problem-agnostic timers for the Flow path (t in [0, 1]); every grid runs from t = 1 to t = 0.
TIMERS: dict[str, Callable[[int], dx.AbstractTimer]] = {
    "Uniform": lambda n: dx.UniformTimer(n),
    "Flux shift 0.5": lambda n: dx.FluxTimer(n, shift=0.5),  # denser near the data
    "Flux shift 3": lambda n: dx.FluxTimer(n, shift=3.0),  # SD3's default, denser near the noise
    "Karras rho 7, t_min 2e-3": lambda n: dx.KarrasTimer(n, t_min=2e-3, t_max=1.0),
    "Exponential, t_min 1e-2": lambda n: dx.ExponentialTimer(n, t_min=1e-2, t_max=1.0),
}
INTEGRATORS: dict[str, dx.AbstractIntegrator] = {
    "Euler": dx.Euler(),
    "Heun": dx.Heun(),
    "DDIM": dx.DDIM(),
    "DPM++2S": dx.DPMpp2S(),
    "DPM++2M": dx.DPMpp2M(),
}


def our_configs(fit: "GridFitter | None") -> list[Config]:
    """Every integrator on every timer, then (if `fit`) on its fitted grid. Extend here."""
    configs = [
        Config(f"{name}, {timer_name}", integrator, timer)
        for name, integrator in INTEGRATORS.items()
        for timer_name, timer in TIMERS.items()
    ]
    if fit is not None:
        configs += [
            Config(f"{name}, fitted grid †", integrator, functools.partial(fit, integrator))
            for name, integrator in INTEGRATORS.items()
        ]
    return configs


# --------------------------------------------------------------------------------------------------
# The exact reference and the fitted grids (float64).


def exact_ode(noise: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """x(0) of dx/dt = v(x, t) from x(1) = noise, Dopri8 with a PID controller, in float64."""
    with jax.enable_x64(True):
        velocity = mixture().network(PATH, "velocity")
        term = diffrax.ODETerm(lambda t, y, args: velocity(y, t))
        controller = diffrax.PIDController(rtol=rtol, atol=rtol)

        def one(x):
            sol = diffrax.diffeqsolve(
                term, diffrax.Dopri8(), 1.0, 0.0, -0.05, x, stepsize_controller=controller, max_steps=100_000
            )
            return sol.ys[-1]

        return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(noise, jnp.float64)))


class GridFitter:
    """Fits, per integrator and number of steps, the grid from 1 to 0 that minimizes the mean squared
    error to the exact ODE over independent training noise (float64). The parameters are the logs of
    the step sizes (a softmax keeps them positive and summing to 1); L-BFGS starts from whichever of
    the `TIMERS` grids has the lowest training loss. Cached."""

    def __init__(self, n_train: int, key):
        self.noise = np.asarray(jr.normal(key, (n_train, 2)), np.float64)
        self.target = exact_ode(self.noise)
        self.cache: dict = {}

    def __call__(self, integrator: dx.AbstractIntegrator, n_steps: int) -> dx.AbstractTimer:
        cache_key = (type(integrator).__name__, n_steps)
        if cache_key not in self.cache:
            self.cache[cache_key] = self._fit(integrator, n_steps)
        return dx.CustomTimer(self.cache[cache_key])

    @staticmethod
    def grid(theta):
        inner = 1.0 - jnp.cumsum(jax.nn.softmax(theta))[:-1]
        return jnp.concatenate([jnp.ones(1, theta.dtype), inner, jnp.zeros(1, theta.dtype)])

    def _fit(self, integrator, n_steps) -> np.ndarray:
        with jax.enable_x64(True):
            pred = predictor()
            noise, target = jnp.asarray(self.noise), jnp.asarray(self.target)
            keys = dx.particle_keys(jr.key(0), noise.shape[0])

            @jax.jit
            def loss_and_grad(theta):
                def loss(theta):
                    out, _ = solve(integrator, pred, self.grid(theta), noise, keys)
                    return jnp.mean(jnp.sum((out - target) ** 2, -1))

                return jax.value_and_grad(loss)(theta)

            def fun(theta):
                value, grad = loss_and_grad(jnp.asarray(theta))
                return float(value), np.asarray(grad, np.float64)

            starts = [
                np.log(-np.diff(np.asarray(timer(n_steps).times(), np.float64))) for timer in TIMERS.values()
            ]
            theta0 = min(starts, key=lambda theta: fun(theta)[0])
            res = scipy.optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", options=dict(maxiter=300))
            return np.asarray(self.grid(jnp.asarray(res.x)))


# --------------------------------------------------------------------------------------------------
# Rows of the tables.


@dataclasses.dataclass
class Row:
    method: str
    n_steps: int
    nfe: int
    rms: float
    sw: float
    time_s: float
    time_min_s: float
    ours: bool
    note: str = ""


class Problem:
    """The test noise, its exact-ODE image, exact samples and the metrics."""

    def __init__(self, n: int, repeats: int):
        self.n, self.repeats = n, repeats
        self.noise = np.asarray(jr.normal(jr.key(0), (n, 2), jnp.float32))
        gmm = mixture()
        self.exact_samples = gmm.sample(jr.key(1), n)
        # SW between independent exact sets fluctuates (mostly with how many samples fall in each
        # component), so the floor is the mean and spread over 8 independent pairs.
        floors = [
            dx.sliced_wasserstein(gmm.sample(jr.key(100 + i), n), gmm.sample(jr.key(200 + i), n), jr.key(4))
            for i in range(8)
        ]
        self.sw_floor, self.sw_floor_std = float(np.mean(floors)), float(np.std(floors))
        t0 = time.perf_counter()
        self.reference = exact_ode(self.noise)
        self.reference_time = time.perf_counter() - t0
        check = slice(0, min(n, 500))
        self.reference_check = float(
            np.max(np.abs(exact_ode(self.noise[check], rtol=1e-12) - self.reference[check]))
        )

    def rms(self, samples) -> float:
        return float(np.sqrt(np.mean(np.sum((np.asarray(samples, np.float64) - self.reference) ** 2, -1))))

    def sw(self, samples) -> float:
        return float(dx.sliced_wasserstein(jnp.asarray(samples, jnp.float32), self.exact_samples, jr.key(4)))

    def run_ours(self, config: Config, budget: int) -> Row:
        n_steps = steps_for_budget(config.integrator, budget)
        ts = jnp.asarray(config.timer(n_steps).times(), jnp.float32)
        noise, keys = jnp.asarray(self.noise), dx.particle_keys(jr.key(5), self.n)
        pred = predictor()
        samples, nfe = solve(config.integrator, pred, ts, noise, keys)
        samples.block_until_ready()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            solve(config.integrator, pred, ts, noise, keys)[0].block_until_ready()
            times.append(time.perf_counter() - t0)
        return Row(
            config.name,
            n_steps,
            int(jnp.max(nfe)),
            self.rms(samples),
            self.sw(samples),
            float(np.median(times)),
            min(times),
            ours=True,
        )


# --------------------------------------------------------------------------------------------------
# Peers, each in its own process.


def run_peer(python: str, script: str, problem_file: str, out: str) -> dict | None:
    proc = subprocess.run([python, str(HERE / script), problem_file, out], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr[-2000:].replace("\n", "\n> ")
        print(f"> {script} failed (exit {proc.returncode}); skipped:\n> {tail}")
        return None
    with open(out + ".json") as f:
        result = json.load(f)
    arrays = np.load(out + ".npz")
    for row in result["rows"]:
        row["samples"] = arrays[row.pop("key")]
    return result


def peers(problem: Problem, budgets: list[int]) -> tuple[list[dict], list[str]]:
    """All peer runs (dicts with method, budget, n_steps, nfe, time_s, grid, note, samples) and notes."""
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        problem_file = os.path.join(tmp, "problem.npz")
        np.savez(
            problem_file,
            noise=problem.noise,
            means=mixture_means(),
            std=STD,
            budgets=np.asarray(budgets),
            repeats=problem.repeats,
        )
        result = run_peer(sys.executable, "_peer_diffusers.py", problem_file, os.path.join(tmp, "diffusers"))
        if result is not None:
            rows += result["rows"]
            notes.append(f"diffusers {result['versions']['diffusers']}, torch {result['versions']['torch']}")
        python = os.environ.get("DIFFUSE_PEER_PYTHON", DEFAULT_PEER_PYTHON)
        if not os.path.exists(python):
            notes.append(
                f"original Diffuse skipped: no Python at {python} (set DIFFUSE_PEER_PYTHON to a venv with "
                "`pip install diffuse-jax`)"
            )
        else:
            result = run_peer(python, "_peer_diffuse.py", problem_file, os.path.join(tmp, "diffuse"))
            if result is not None:
                rows += result["rows"]
                versions = result["versions"]
                notes.append(f"original Diffuse {versions['diffuse']} (jax {versions['jax']})")
    return rows, notes


def same_grid_check(problem: Problem, peer_rows: list[dict]) -> list[str]:
    """Ours on diffusers' exact grid (`dx.CustomTimer`) against diffusers' result, both float32: the
    largest coordinate difference and the median distance over particles. For scale, the same two
    numbers between our float32 and float64 runs on that grid (what float32 rounding alone does)."""
    ours = {
        "diffusers FlowMatchEuler": dx.Euler(),
        "diffusers FlowMatchHeun": dx.Heun(),
        "diffusers DPM++ 2M, net at float sigma": dx.DPMpp2M(),
    }

    def run(integrator, grid, dtype):
        noise, keys = jnp.asarray(problem.noise, dtype), dx.particle_keys(jr.key(5), problem.n)
        ts = jnp.asarray(dx.CustomTimer(grid).times(), dtype)
        return np.asarray(solve(integrator, predictor(), ts, noise, keys)[0], np.float64)

    def stats(diff):
        return f"{np.max(np.abs(diff)):.1e} | {np.median(np.linalg.norm(diff, axis=-1)):.1e}"

    lines = []
    for row in peer_rows:
        if row["method"] in ours:
            integrator = ours[row["method"]]
            ours32 = run(integrator, row["grid"], jnp.float32)
            with jax.enable_x64(True):
                ours64 = run(integrator, row["grid"], jnp.float64)
            lines.append(
                f"| {row['method']} | {row['n_steps']} | {type(integrator).__name__} | "
                f"{stats(ours32 - row['samples'])} | {stats(ours32 - ours64)} |"
            )
    return lines


# --------------------------------------------------------------------------------------------------


def print_table(budget: int, rows: list[Row], problem: Problem) -> None:
    print(f"\n### NFE <= {budget}\n")
    floor = f"{problem.sw_floor:.3f} ± {problem.sw_floor_std:.3f}"
    print(f"| method | steps | NFE | RMS vs exact ODE | SW (floor {floor}) | time, {problem.n} particles |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        method = f"{r.method} ({r.note})" if r.note else r.method
        nfe = f"{r.nfe}" if r.nfe <= budget else f"{r.nfe} (over budget!)"
        time_ms = f"{1e3 * r.time_s:.1f} ms ({1e3 * r.time_min_s:.1f})"
        print(f"| {method} | {r.n_steps} | {nfe} | {r.rms:.2e} | {r.sw:.3f} | {time_ms} |")


def summary_line(budget: int, rows: list[Row]) -> str:
    """Our best fixed-timer and fitted configurations against the best peer, within the budget."""
    rows = [r for r in rows if r.nfe <= budget]

    def best(keep):
        return min((r for r in rows if keep(r)), key=lambda r: r.rms, default=None)

    peer = best(lambda r: not r.ours)
    fixed, fitted = best(lambda r: r.ours and "†" not in r.method), best(lambda r: "†" in r.method)
    parts = [f"ours (fixed timer) {fixed.method}: {fixed.rms:.2e}"]
    if fitted is not None:
        parts.append(f"ours (fitted grid) {fitted.method}: {fitted.rms:.2e}")
    if peer is not None:
        parts.append(f"best peer {peer.method}: {peer.rms:.2e}")
        ratios = f"{fixed.rms / peer.rms:.2f}" + (f" / {fitted.rms / peer.rms:.2f}" if fitted else "")
        parts.append(f"ours/peer {ratios}")
    return f"- NFE {budget}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-particles", type=int, default=10_000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--n-train", type=int, default=2048, help="independent particles for fitted grids")
    parser.add_argument("--no-fit", action="store_true", help="skip the fitted grids")
    parser.add_argument("--quick", action="store_true", help="2000 particles, NFE 10 and 20, one timing run")
    args = parser.parse_args()
    if args.quick:
        args.n_particles, args.nfe, args.n_train = 2000, [10, 20], 512
    repeats = 1 if args.quick else 5

    platform = jax.devices()[0].platform
    print(f"JAX {jax.__version__} on {platform}; {args.n_particles} particles; NFE budgets {args.nfe}")
    problem = Problem(args.n_particles, repeats)
    print(
        f"exact ODE reference: Dopri8, rtol = atol = 1e-10, float64, {problem.reference_time:.1f} s; "
        f"max |x(rtol 1e-10) - x(rtol 1e-12)| over {min(args.n_particles, 500)} particles: "
        f"{problem.reference_check:.1e}"
    )
    print(
        f"SW noise floor (two independent exact sample sets of {args.n_particles}, 8 pairs): "
        f"{problem.sw_floor:.2e} +- {problem.sw_floor_std:.1e}"
    )
    peer_rows, notes = peers(problem, args.nfe)
    for note in notes:
        print(f"peers: {note}")
    fit = None if args.no_fit else GridFitter(args.n_train, jr.key(3))
    configs = our_configs(fit)

    summary = []
    for budget in args.nfe:
        rows = [
            Row(
                r["method"],
                r["n_steps"],
                r["nfe"],
                problem.rms(r["samples"]),
                problem.sw(r["samples"]),
                r["time_s"],
                r["time_min_s"],
                ours=False,
                note=r["note"],
            )
            for r in peer_rows
            if r["budget"] == budget
        ]
        rows += [problem.run_ours(config, budget) for config in configs]
        print_table(budget, rows, problem)
        summary.append(summary_line(budget, rows))

    if fit is not None:
        print(f"\n### Fitted grids † (on {args.n_train} independent particles)\n")
        for (name, n_steps), ts in fit.cache.items():
            print(f"- {name}, {n_steps} steps: " + ", ".join(f"{t:.3f}" for t in ts))
    if peer_rows:
        print("\n### Same grid: ours on diffusers' exact sigma grid (dx.CustomTimer), float32\n")
        print(
            "| diffusers scheduler | steps | ours | max abs diff. | median dist. "
            "| ours f32 vs f64: max abs diff. | median dist. |"
        )
        print("|---|---:|---|---:|---:|---:|---:|")
        print("\n".join(same_grid_check(problem, peer_rows)))
    print("\n### Summary: RMS vs exact ODE (goal: half the best peer's)\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
