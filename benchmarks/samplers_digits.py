"""Our samplers against diffusers' schedulers on the shipped digits model, the error measured against
an adaptive solve of the same network's probability-flow ODE from the same noise.

The model: `diffuse_eqx.models.digits.pretrained()`, a class-conditional velocity network on the
Flow path (8x8 images). `n` conditional samples, labels 0-9 in turn, from the same initial noise
(at t = 1, float32) for every sampler. For each NFE budget:

- RMS vs reference: sqrt(mean_i |x_i - x_i^ref|^2) over the 64 pixels (images in [-1, 1]), where
  x^ref is diffrax Dopri8 on the same network and noise (`demo_digits.reference_solve`: float32
  with rtol = atol = 1e-6 by default, or float64 with rtol = 1e-8 with `--x64-reference`); and
  the median and largest |x_i - x_i^ref| (the velocity turns sharp near t = 0, and a sampler can
  send a particle to another image: one such sample can dominate the RMS of a few hundred).
- time: the wall time of the call less JAX's tracing and compilation (its `jax.monitoring`
  events), for diffusers the loop's wall time; one call each, on a busy machine: rough.

Peers: diffusers' schedulers of `_peer_diffusers.py` (FlowMatchEuler / FlowMatchHeun, DPM++ 2M /
3M, UniPC bh1 / bh2 of orders 2 and 3, DEIS of orders 2 and 3, on flow sigmas), driven by the same
network through a numpy bridge: each model call converts the torch tensor to numpy, calls a jitted
JAX velocity of the digits model with the labels, and converts back. They run in this process
(JAX's and torch's thread pools share the cores, which only the timings see).

Ours: integrators on the fixed timers of `samplers_vs_peers.py`, and, marked †, on grids fitted by
`dx.fit_timer` to the model's *unconditional* predictor on independent pilot noise (another key
than the test noise; one grid per integrator and step count serves every label), in float32 against
its default reference (Tsit5, rtol = atol = 1e-6). The summary compares, per budget, our best
fixed-timer and fitted-grid samplers with the best peer (goals: fixed <= 0.7x, fitted <= 0.5x).

Usage: `python benchmarks/samplers_digits.py [--n 200] [--nfe 6 10 20] [--no-fit]
[--integrators NAME ...] [--timers NAME ...] [--fit-integrators NAME ...] [--n-train 32]
[--fit-iter 20] [--x64-reference]`.
"""

import argparse
import dataclasses
import hashlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
from _peer_diffusers import SCHEDULERS, run_loop, steps_for_budget as peer_steps, variants
from samplers_vs_peers import (
    INTEGRATORS,
    TIMERS,
    Row,
    print_summary,
    steps_for_budget,
    summary_row,
)

import diffuse_eqx as dx
from diffuse_eqx.cli.demo_digits import (
    _timed_first_call,
    initial_noise,
    labels_in_turn,
    reference_solve,
    sample,
)
from diffuse_eqx.models import digits


#: The defaults (the digits network costs ~1000x the mixture's closed form: a subset of the
#: mixture benchmark's integrators and timers keeps a run near 10 minutes on 2 CPU cores).
DIGITS_INTEGRATORS = (
    "Euler",
    "Heun",
    "DPM++2M",
    "DPM++3M",
    "iPNDM 4",
    "UniPC bh2 p2",
    "UniPC bh2 p3",
    "DEIS p3",
)
DIGITS_TIMERS = (
    "Uniform",
    "Flux shift 0.5",
    "Flux shift 3",
    "LogSNR",
    "Beta 0.6, 0.6",
    "Karras rho 7, t_min 2e-3",
)
FIT_INTEGRATORS = ("DPM++2M",)


@dataclasses.dataclass
class DigitsRow(Row):
    """A row of `samplers_vs_peers.py`, with the median and largest distance to the reference over
    the samples (the RMS can be one sample's: a particle that the sampler sends to another image)."""

    median: float = np.nan
    worst: float = np.nan


def make_row(method, n_steps, nfe, samples, reference, seconds, ours, note="") -> DigitsRow:
    n = len(reference)
    d = np.sqrt(np.sum((np.asarray(samples, np.float64).reshape(n, -1) - reference.reshape(n, -1)) ** 2, -1))
    rms = float(np.sqrt(np.mean(d**2)))
    return DigitsRow(
        method, n_steps, nfe, rms, np.nan, seconds, seconds, ours, note, float(np.median(d)), d.max()
    )


def torch_velocity(model, labels):
    """The digits velocity as a diffusers model: torch (n, 8, 8) and t -> torch, through numpy and a
    jitted JAX function of the conditional model at `labels`."""
    labels = jnp.asarray(labels)

    @jax.jit
    def velocity(x, t):
        return jax.vmap(lambda xi, c: model(xi, t, c))(x, labels)

    def call(x: torch.Tensor, t) -> torch.Tensor:
        t = jnp.float32(float(t))
        return torch.from_numpy(np.array(velocity(jnp.asarray(x.numpy()), t)))

    return call


def peer_rows(model, x_init, labels, reference, budgets) -> list[tuple[int, DigitsRow]]:
    """(budget, row) of every diffusers run."""
    velocity = torch_velocity(model, labels)
    noise = torch.from_numpy(np.array(x_init, np.float32))
    velocity(noise, 1.0)  # compile the bridge once
    rows = []
    for budget in budgets:
        for name, peer in SCHEDULERS.items():
            n_steps = peer_steps(peer.nfe_of_steps, budget)
            for t_from, label, note in variants(name, peer):
                t0 = time.perf_counter()
                with torch.no_grad():
                    x, nfe = run_loop(
                        peer.factory(), n_steps, noise.clone(), velocity, t_from, peer.nan_last_to_x0
                    )
                seconds = time.perf_counter() - t0
                row = make_row(label, n_steps, nfe, x.numpy(), reference, seconds, False, note)
                rows.append((budget, row))
    return rows


class Fits:
    """`dx.fit_timer` grids on the unconditional predictor, per (integrator name, n_steps), cached;
    a failed fit (an error, or a non-finite grid) is recorded and skipped."""

    def __init__(self, model, timers, n_train: int, max_iter: int, key):
        self.model, self.timers, self.n_train, self.max_iter, self.key = model, timers, n_train, max_iter, key
        self.grids: dict[tuple[str, int], np.ndarray | None] = {}
        self.seconds: dict[tuple[str, int], float] = {}
        self.failures: dict[tuple[str, int], str] = {}

    def __call__(self, name: str, n_steps: int) -> dx.AbstractTimer | None:
        key = (name, n_steps)
        if key not in self.grids:
            t0 = time.perf_counter()
            try:
                timer = dx.fit_timer(
                    self.model.predictor(),
                    INTEGRATORS[name],
                    n_steps,
                    self.key,
                    x0_shape=digits.IMAGE_SHAPE,
                    n_particles=self.n_train,
                    max_iter=self.max_iter,
                    init_timer=[TIMERS[t](n_steps) for t in self.timers],
                )
                self.grids[key] = np.asarray(timer.times(), np.float64)
            except (ValueError, FloatingPointError) as e:
                self.grids[key] = None
                self.failures[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            self.seconds[key] = time.perf_counter() - t0
        grid = self.grids[key]
        return None if grid is None else dx.CustomTimer(grid)


def our_row(model, name, integrator, timer, n_steps, x_init, keys, labels, reference) -> DigitsRow:
    ts = jnp.asarray(timer.times(), jnp.float32)
    (samples, nfe), first, compile_s = _timed_first_call(
        lambda: sample(model, integrator, ts, x_init, keys, labels)
    )
    return make_row(name, len(ts) - 1, int(nfe), samples, reference, max(first - compile_s, 0.0), True)


def print_table(budget: int, rows: list[DigitsRow], n: int) -> None:
    print(f"\n### NFE <= {budget}\n")
    print(f"| method | steps | NFE | RMS vs reference | median dist. | max dist. | time, {n} samples |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        method = f"{r.method} ({r.note})" if r.note else r.method
        nfe = f"{r.nfe}" if r.nfe <= budget else f"{r.nfe} (over budget!)"
        print(
            f"| {method} | {r.n_steps} | {nfe} | {r.rms:.2e} | {r.median:.2e} | {r.worst:.2f} | "
            f"{1e3 * r.time_s:.0f} ms |"
        )


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="conditional samples (default 200)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[6, 10, 20])
    parser.add_argument(
        "--integrators", nargs="+", default=list(DIGITS_INTEGRATORS), choices=list(INTEGRATORS)
    )
    parser.add_argument("--timers", nargs="+", default=list(DIGITS_TIMERS), choices=list(TIMERS))
    parser.add_argument(
        "--fit-integrators", nargs="*", default=list(FIT_INTEGRATORS), choices=list(INTEGRATORS)
    )
    parser.add_argument("--n-train", type=int, default=32, help="pilot particles of each fit (default 32)")
    parser.add_argument("--fit-iter", type=int, default=20, help="L-BFGS iterations of each fit (default 20)")
    parser.add_argument("--no-fit", action="store_true", help="skip the fitted grids")
    parser.add_argument("--x64-reference", action="store_true", help="float64 Dopri8, rtol 1e-8 (slow)")
    args = parser.parse_args()

    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; {args.n} samples; NFE budgets {args.nfe}")
    model = digits.pretrained()
    weights = digits.WEIGHTS / "weights.safetensors"
    print(f"weights: {weights.name}, sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}")
    labels = labels_in_turn(args.n)
    x_init = initial_noise(jr.key(0), args.n)
    keys = dx.particle_keys(jr.key(1), args.n)
    t0 = time.perf_counter()
    rtol, x64 = (1e-8, True) if args.x64_reference else (1e-6, False)
    reference, info = reference_solve(model, x_init, labels, rtol=rtol, x64=x64)
    print(
        f"reference: Dopri8, rtol = atol = {rtol:g}, {info['dtype']}, {info['accepted']} steps "
        f"({info['nfe']} NFE), {time.perf_counter() - t0:.0f} s"
    )
    t0 = time.perf_counter()
    peers = peer_rows(model, x_init, labels, reference, args.nfe)
    print(f"peers: diffusers, {time.perf_counter() - t0:.0f} s in all")
    fits = None
    if not args.no_fit and args.fit_integrators:
        fits = Fits(model, args.timers, args.n_train, args.fit_iter, jr.key(3))

    summary = []
    for budget in args.nfe:
        rows = [row for b, row in peers if b == budget]
        for name in args.integrators:
            integrator = INTEGRATORS[name]
            n_steps = steps_for_budget(integrator, budget)
            for timer_name in args.timers:
                timer = TIMERS[timer_name](n_steps)
                rows.append(
                    our_row(
                        model,
                        f"{name}, {timer_name}",
                        integrator,
                        timer,
                        n_steps,
                        x_init,
                        keys,
                        labels,
                        reference,
                    )
                )
        for name in args.fit_integrators if fits is not None else []:
            integrator = INTEGRATORS[name]
            n_steps = steps_for_budget(integrator, budget)
            timer = fits(name, n_steps)
            if timer is not None:
                rows.append(
                    our_row(
                        model,
                        f"{name}, fitted grid †",
                        integrator,
                        timer,
                        n_steps,
                        x_init,
                        keys,
                        labels,
                        reference,
                    )
                )
        print_table(budget, rows, args.n)
        summary.append(summary_row(budget, rows))

    if fits is not None:
        print(
            f"\n### Fitted grids † (dx.fit_timer on the unconditional model, float32, {args.n_train} "
            f"independent pilot particles, at most {args.fit_iter} iterations; "
            f"{sum(fits.seconds.values()):.0f} s in all)\n"
        )
        for (name, n_steps), ts in fits.grids.items():
            seconds = f"{fits.seconds[(name, n_steps)]:.0f} s"
            if ts is None:
                print(f"- {name}, {n_steps} steps ({seconds}): fit failed, {fits.failures[(name, n_steps)]}")
            else:
                print(f"- {name}, {n_steps} steps ({seconds}): " + ", ".join(f"{t:.3f}" for t in ts))
    print_summary(summary, "RMS vs reference")
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
