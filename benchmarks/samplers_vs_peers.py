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
FlowMatchEuler / FlowMatchHeun, DPM-Solver++ 2M and 3M, UniPC (bh1 / bh2, orders 2 and 3) and
DEIS (orders 2 and 3) on flow sigmas (`_peer_diffusers.py`, which notes what each does to this
problem), and the original Diffuse (`_peer_diffuse.py`, run by the Python in
`$DIFFUSE_PEER_PYTHON`, default /work/peer_venv/bin/python, a venv with `pip install diffuse-jax`;
skipped with a note if absent).

Our samplers are every integrator on every fixed, problem-agnostic timer (`TIMERS`), and, marked †,
the same integrators on grids fitted to this problem by `dx.fit_timer`: the grid that minimizes the
mean squared error to a tight reference solve over *independent* pilot noise (another key than the
test noise), L-BFGS on the log step sizes through the integrator, started from the best of the
`TIMERS` grids; fitted in float64 and in float32, the one with the lower float32 error on the pilot
noise kept, or the best starting grid if neither fit beats it there (`GridFitter`). They show
what a problem-adapted grid buys.

The summary compares, per budget, our best fixed-timer sampler and our best fitted-grid sampler
with the best peer (goals: fixed <= 0.7x, fitted <= 0.5x the best peer's RMS).

Usage: `python benchmarks/samplers_vs_peers.py [--n-particles 10000] [--nfe 6 10 20 50] [--quick]
[--no-fit] [--n-train 512] [--fit-integrators NAME ...]`.
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
def _skipped(integrator: dx.AbstractIntegrator) -> int:
    """The evaluations the integrator skips on a grid from 1 to 0 (all our grids have these ends,
    which is where integrators skip them), counted by an eager run of 3 steps on one particle."""
    x, key = jnp.zeros((1, 2)), dx.particle_keys(jr.key(0), 1)
    with jax.disable_jit():  # a compilation per integrator would cost more than the run
        nfe = int(solve(integrator, predictor(), dx.UniformTimer(3).times(), x, key)[1][0])
    return 3 * integrator.nfe_per_step - nfe


def steps_for_budget(integrator: dx.AbstractIntegrator, budget: int) -> int:
    """The most steps whose NFE, `nfe_per_step * n` less the skipped evaluations, fits `budget`.
    (Each run's own NFE count is printed, and a row over its budget is flagged and left out of the
    summary.)"""
    k, skipped = integrator.nfe_per_step, _skipped(integrator)
    return max(1, (budget + skipped) // k)


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
    "LogSNR": lambda n: dx.LogSNRTimer(n, path=PATH),  # uniform in log(alpha/sigma), DPM-Solver's
    "Beta 0.6, 0.6": lambda n: dx.BetaTimer(n),  # diffusers' use_beta_sigmas
    "Karras rho 7, t_min 2e-3": lambda n: dx.KarrasTimer(n, t_min=2e-3, t_max=1.0),
    "Exponential, t_min 1e-2": lambda n: dx.ExponentialTimer(n, t_min=1e-2, t_max=1.0),
}
INTEGRATORS: dict[str, dx.AbstractIntegrator] = {
    "Euler": dx.Euler(),
    "Heun": dx.Heun(),
    "DPM++2S": dx.DPMpp2S(),
    "DPM++2M": dx.DPMpp2M(),
    "DPM++3M": dx.DPMpp3M(),
    "iPNDM 4": dx.IPNDM(order=4),
    "UniPC bh1 p2": dx.UniPC(2, "bh1"),
    "UniPC bh1 p3": dx.UniPC(3, "bh1"),
    "UniPC bh2 p2": dx.UniPC(2, "bh2"),
    "UniPC bh2 p3": dx.UniPC(3, "bh2"),
    "DEIS p2": dx.DEIS(2),
    "DEIS p3": dx.DEIS(3),
}
#: The integrators given fitted grids by default (a fit costs 15-30 s on 2 busy CPU cores). UniPC and
#: DEIS are left out: their gradients in the grid are NaN for now, and `fit_timer` fails on them.
FIT_INTEGRATORS = ("Heun", "DPM++2M", "DPM++3M", "iPNDM 4", "UniPC bh2 p3")


def our_configs(fit: "GridFitter | None") -> list[Config]:
    """Every integrator on every timer, then (if `fit`) those of `fit` on their fitted grids."""
    configs = [
        Config(f"{name}, {timer_name}", integrator, timer)
        for name, integrator in INTEGRATORS.items()
        for timer_name, timer in TIMERS.items()
    ]
    if fit is not None:
        configs += [
            Config(f"{name}, fitted grid †", INTEGRATORS[name], functools.partial(fit, name))
            for name in fit.names
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


def float32_grid(grid) -> dx.CustomTimer:
    """`grid` as the float32 grid it runs on. A fitted step can shrink below float32 resolution:
    such a step is merged with its neighbour (the run then makes fewer steps; its NFE says so)."""
    grid32 = np.asarray(grid, np.float32)
    keep = [0] + [i for i in range(1, len(grid32)) if grid32[i] < grid32[i - 1]]
    return dx.CustomTimer(grid32[keep])


class GridFitter:
    """`dx.fit_timer` per integrator and number of steps, on `n_train` pilot particles drawn from
    `key` (independent of the test noise), started from the best of the `TIMERS` grids; cached.

    Each grid is fitted twice, in float64 (reference: Tsit5, rtol = atol = 1e-9) and in float32
    (1e-6), and the one with the lower float32 error on the *pilot* particles (`dx.timer_error`
    with the fit's key) is kept: the test noise plays no part. Neither precision wins everywhere:
    a float64 fit can shrink a step to ~1e-7, which DPM++ 3M turns into a derivative estimate that
    float32 cannot reproduce (10 steps: 0.86 on the test noise, against 1.4e-2 fitted in float32),
    while at 50 steps the float32 fits stop short of the float64 ones. A fit that fails (an error,
    or a non-finite grid) is reported and skipped."""

    def __init__(self, names: list[str], n_train: int, key):
        self.names, self.n_train, self.key = names, n_train, key
        self.cache: dict[tuple[str, int], tuple[np.ndarray, str] | None] = {}
        self.seconds: dict[tuple[str, int], float] = {}
        self.failures: dict[tuple[str, int], str] = {}

    def _fit(self, name: str, n_steps: int, x64: bool) -> np.ndarray:
        with jax.enable_x64(x64):
            timer = dx.fit_timer(
                predictor(),
                INTEGRATORS[name],
                n_steps,
                self.key,
                x0_shape=(2,),
                n_particles=self.n_train,
                init_timer=[make(n_steps) for make in TIMERS.values()],
            )
            grid = np.asarray(timer.times(), np.float64)
        if not np.all(np.isfinite(grid)):
            raise FloatingPointError(f"non-finite fitted grid {grid}")
        return grid

    def __call__(self, name: str, n_steps: int) -> dx.AbstractTimer | None:
        cache_key = (name, n_steps)
        if cache_key not in self.cache:
            t0 = time.perf_counter()
            grids, errors = {}, []
            for precision, x64 in (("float64 fit", True), ("float32 fit", False)):
                try:
                    grids[precision] = self._fit(name, n_steps, x64)
                except (ValueError, FloatingPointError) as e:  # reported; the other candidates stay
                    errors.append(f"{precision}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            if errors:
                self.failures[cache_key] = "; ".join(errors)
            # the starting grids too: where L-BFGS cannot improve on them (long grids, where the
            # float32 error floor flattens the loss), the best of them is kept and said so
            for label, make in TIMERS.items():
                start = np.asarray(make(n_steps).times(), np.float64)
                grids[f"no fit better than its start, {label}"] = start
            timers = [float32_grid(grid) for grid in grids.values()]
            pilot = dx.timer_error(
                predictor(), INTEGRATORS[name], timers, self.key, x0_shape=(2,), n_particles=self.n_train
            )
            precision = list(grids)[int(np.nanargmin(np.where(np.isfinite(pilot), pilot, np.nan)))]
            self.cache[cache_key] = grids[precision], precision
            self.seconds[cache_key] = time.perf_counter() - t0
        fitted = self.cache[cache_key]
        return None if fitted is None else float32_grid(fitted[0])


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
        # `dx.sliced_wasserstein(samples, exact_samples, jr.key(4))` with the exact side's sorted
        # projections cached and numpy's sort (XLA's CPU sort of 10 000 x 512 takes seconds)
        theta = jr.normal(jr.key(4), (512, 2), jnp.float32)
        self.theta = np.asarray(theta / jnp.linalg.norm(theta, axis=-1, keepdims=True))
        self.sorted_exact = np.sort(np.asarray(self.exact_samples, np.float32) @ self.theta.T, axis=0)
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
        projected = np.sort(np.asarray(samples, np.float32) @ self.theta.T, axis=0)
        return float(np.sqrt(np.mean((projected - self.sorted_exact) ** 2)))

    def run_ours(self, config: Config, budget: int) -> Row | None:
        """`config` at the most steps that fit `budget`; `None` if its timer is missing (a failed fit)."""
        n_steps = steps_for_budget(config.integrator, budget)
        timer = config.timer(n_steps)
        if timer is None:
            return None
        ts = jnp.asarray(timer.times(), jnp.float32)
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
            len(ts) - 1,
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


#: Our integrator for each diffusers scheduler that computes the same update (DPM++ 3M is left out:
#: diffusers weighs its quadratic term by 1/2, ours does not).
SAME_UPDATE: dict[str, dx.AbstractIntegrator] = {
    "diffusers FlowMatchEuler": dx.Euler(),
    "diffusers FlowMatchHeun": dx.Heun(),
    "diffusers DPM++ 2M, net at float sigma": dx.DPMpp2M(),
    "diffusers UniPC bh1 p2, net at float sigma": dx.UniPC(2, "bh1"),
    "diffusers UniPC bh1 p3, net at float sigma": dx.UniPC(3, "bh1"),
    "diffusers UniPC bh2 p2, net at float sigma": dx.UniPC(2, "bh2"),
    "diffusers UniPC bh2 p3, net at float sigma": dx.UniPC(3, "bh2"),
    "diffusers DEIS p2, net at float sigma": dx.DEIS(2),
    "diffusers DEIS p3, net at float sigma": dx.DEIS(3),
}


def same_grid_check(problem: Problem, peer_rows: list[dict], budgets: list[int]) -> list[str]:
    """Ours on diffusers' exact grid (`dx.CustomTimer`) against diffusers' result, both float32: the
    largest coordinate difference and the median distance over particles. For scale, the same two
    numbers between our float32 and float64 runs on that grid (what float32 rounding alone does).
    DEIS's grid repeats its last sigma (a step of length zero, which `dx.CustomTimer` refuses):
    ours runs on exactly those sigmas, through `dx.integrate`, with the same NFE."""

    def run(integrator, grid, dtype):
        noise, keys = jnp.asarray(problem.noise, dtype), dx.particle_keys(jr.key(5), problem.n)
        repeats = np.any(np.diff(grid) == 0)
        ts = jnp.asarray(grid if repeats else dx.CustomTimer(grid).times(), dtype)
        return np.asarray(solve(integrator, predictor(), ts, noise, keys)[0], np.float64)

    def stats(diff):
        return f"{np.max(np.abs(diff)):.1e} | {np.median(np.linalg.norm(diff, axis=-1)):.1e}"

    lines = []
    for row in peer_rows:
        if row["method"] in SAME_UPDATE and row["budget"] in budgets:
            integrator = SAME_UPDATE[row["method"]]
            ours32 = run(integrator, row["grid"], jnp.float32)
            with jax.enable_x64(True):
                ours64 = run(integrator, row["grid"], jnp.float64)
            name = row["method"].removeprefix("diffusers ").removesuffix(", net at float sigma")
            lines.append(
                f"| {name} | {row['n_steps']} | {integrator!r} | "
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


#: The goals: our best fixed-timer and fitted-grid RMS over the best peer's.
GOAL_FIXED, GOAL_FITTED = 0.7, 0.5


def summary_row(budget: int, rows: list[Row]) -> str:
    """Our best fixed-timer and fitted configurations against the best peer, within the budget (a
    NaN result is never the best)."""
    rows = [r for r in rows if r.nfe <= budget and np.isfinite(r.rms)]

    def best(keep):
        return min((r for r in rows if keep(r)), key=lambda r: r.rms, default=None)

    peer = best(lambda r: not r.ours)
    fixed = best(lambda r: r.ours and "†" not in r.method)
    fitted = best(lambda r: r.ours and "†" in r.method)

    def cell(r):
        return "—" if r is None else f"{r.method.removesuffix(', fitted grid †')}: {r.rms:.2e}"

    def ratio(r, goal):
        if r is None or peer is None:
            return "—"
        q = r.rms / peer.rms
        return f"{q:.2f} ({'met' if q <= goal else 'not met'})"

    return (
        f"| {budget} | {cell(fixed)} | {cell(fitted)} | {cell(peer)} | "
        f"{ratio(fixed, GOAL_FIXED)} | {ratio(fitted, GOAL_FITTED)} |"
    )


def print_summary(lines: list[str], metric: str = "RMS vs exact ODE") -> None:
    print(
        f"\n### Summary: {metric} (goals: fixed <= {GOAL_FIXED}x, fitted <= {GOAL_FITTED}x the best peer's)\n"
    )
    print("| NFE | ours, fixed timer | ours, fitted grid † | best peer | fixed / peer | fitted / peer |")
    print("|---:|---|---|---|---:|---:|")
    print("\n".join(lines))


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-particles", type=int, default=10_000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[6, 10, 20, 50])
    parser.add_argument("--n-train", type=int, default=512, help="independent pilot particles of the fits")
    parser.add_argument(
        "--fit-integrators",
        nargs="+",
        default=list(FIT_INTEGRATORS),
        choices=list(INTEGRATORS),
        metavar="NAME",
        help=f"integrators given fitted grids (default: {', '.join(FIT_INTEGRATORS)})",
    )
    parser.add_argument("--no-fit", action="store_true", help="skip the fitted grids")
    parser.add_argument(
        "--same-grid-nfe", type=int, nargs="*", default=[10], help="budgets of the same-grid check"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per sampler (default 5)")
    parser.add_argument("--quick", action="store_true", help="2000 particles, NFE 10 and 20, one timing run")
    args = parser.parse_args()
    if args.quick:
        args.n_particles, args.nfe, args.n_train, args.repeats = 2000, [10, 20], 256, 1

    platform = jax.devices()[0].platform
    print(f"JAX {jax.__version__} on {platform}; {args.n_particles} particles; NFE budgets {args.nfe}")
    problem = Problem(args.n_particles, args.repeats)
    print(
        f"exact ODE reference: Dopri8, rtol = atol = 1e-10, float64, {problem.reference_time:.1f} s; "
        f"max |x(rtol 1e-10) - x(rtol 1e-12)| over {min(args.n_particles, 500)} particles: "
        f"{problem.reference_check:.1e}"
    )
    print(
        f"SW noise floor (two independent exact sample sets of {args.n_particles}, 8 pairs): "
        f"{problem.sw_floor:.2e} +- {problem.sw_floor_std:.1e}"
    )
    t0 = time.perf_counter()
    peer_rows, notes = peers(problem, args.nfe)
    notes.append(f"{time.perf_counter() - t0:.0f} s in all")
    for note in notes:
        print(f"peers: {note}")
    fit = None if args.no_fit else GridFitter(args.fit_integrators, args.n_train, jr.key(3))
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
        t0, fit_s = time.perf_counter(), sum(fit.seconds.values()) if fit is not None else 0.0
        rows += [row for config in configs if (row := problem.run_ours(config, budget)) is not None]
        fit_s = (sum(fit.seconds.values()) if fit is not None else 0.0) - fit_s
        print_table(budget, rows, problem)
        print(f"\n(ours at NFE {budget}: {time.perf_counter() - t0:.0f} s, of which fits {fit_s:.0f} s)")
        summary.append(summary_row(budget, rows))

    if fit is not None:
        print(
            "\n### Fitted grids † (dx.fit_timer in float64 and float32, the better on the pilot kept; "
            f"{args.n_train} independent pilot particles, {sum(fit.seconds.values()):.0f} s in all)\n"
        )
        for (name, n_steps), fitted in fit.cache.items():
            seconds = f"{fit.seconds[(name, n_steps)]:.1f} s"
            if (name, n_steps) in fit.failures:
                print(f"- {name}, {n_steps} steps: a fit failed, {fit.failures[(name, n_steps)]}")
            if fitted is None:
                print(f"- {name}, {n_steps} steps ({seconds}): no grid")
            else:
                ts, precision = fitted
                print(
                    f"- {name}, {n_steps} steps ({seconds}, {precision}): "
                    + ", ".join(f"{t:.3f}" for t in ts)
                )
    lines = same_grid_check(problem, peer_rows, args.same_grid_nfe) if peer_rows else []
    if lines:
        print("\n### Same grid: ours on diffusers' exact sigma grid (dx.CustomTimer), float32\n")
        print(
            "| diffusers scheduler | steps | ours | max abs diff. | median dist. "
            "| ours f32 vs f64: max abs diff. | median dist. |"
        )
        print("|---|---:|---|---:|---:|---:|---:|")
        print("\n".join(lines))
    print_summary(summary)
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
