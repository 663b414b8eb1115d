"""Peer runner for `samplers_vs_peers.py`: diffusers' flow-matching schedulers, in its own process.

Usage: `python benchmarks/_peer_diffusers.py PROBLEM.npz OUT` (written by the driver). Reads the
initial noise, the mixture and the NFE budgets from PROBLEM.npz; writes the final particles to
OUT.npz and one JSON row per run to OUT.json. `samplers_digits.py` imports `SCHEDULERS`,
`run_loop` and `sigma_grid` to drive the same schedulers with the digits network.

Each scheduler is driven by the standard diffusers loop, with the exact mixture velocity (float32,
closed form) as the model and the model evaluated at `t = timestep / num_train_timesteps`, as a
pipeline's transformer would see it:

    scheduler.set_timesteps(n_steps)
    for timestep in scheduler.timesteps:
        v = velocity(scheduler.scale_model_input(x, timestep), timestep / 1000)   # one NFE
        x = scheduler.step(v, timestep, x).prev_sample

The multistep schedulers run a second time with the model at the scheduler's own float sigma
("net at float sigma"), the variant our integrators reproduce on the same grid. Grids are the
schedulers' own defaults (shift 1, no dynamic shifting, `lower_order_final=True`). The initial
noise is used as the sample at the first sigma of each grid (diffusers' DPM-Solver and DEIS flow
grids start at 0.999, UniPC's at 1 - 1e-6). What else a scheduler does to this problem is in its
note:

- DPM++ 3M (`DPMSolverMultistepScheduler(solver_order=3)`) weighs its quadratic term by 1/2, as
  k-diffusion does (a second-order formula; our `DPMpp3M` uses the exact weight, on purpose).
- UniPC with `solver_type="bh1"` returns NaN at its last step, to sigma = 0 (it multiplies
  B(h) = -h = -inf by a zero correction); the row takes the scheduler's own data estimate at that
  step (`model_outputs[-1]`), which is the value bh1 computes there, and says so.
- DEIS on flow sigmas repeats its last sigma, 0.999 / n_steps: its last model call is spent on a
  step of length zero and its samples stay at that noise level (it cannot step to sigma = 0 in
  noise prediction). Its error to the exact ODE at t = 0 includes that residual noise.
"""

import json
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)


def mixture_velocity(means: torch.Tensor, std: float):
    r"""The exact probability-flow velocity of $\frac1K\sum_k N(\mu_k, s^2 I)$ under the Flow path
    $x_t = (1-t)x_0 + t\varepsilon$: with $a = 1-t$, $c = a^2 s^2 + t^2$ and responsibilities
    $r_k \propto \exp(-|x - a\mu_k|^2 / 2c)$ (equal weights and covariances),
    $v = -E[x_0|x] + E[\varepsilon|x]$, $E[x_0|x] = \sum_k r_k(\mu_k + a s^2 (x - a\mu_k)/c)$,
    $E[\varepsilon|x] = t \sum_k r_k (x - a\mu_k)/c$."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        a = 1 - t
        c = a * a * std**2 + t * t
        diff = x[:, None, :] - a * means[None]  # (n, K, d)
        r = torch.softmax(-(diff**2).sum(-1) / (2 * c), dim=-1)[..., None]
        x0 = (r * (means[None] + (a * std**2 / c) * diff)).sum(1)
        eps = (t / c) * (r * diff).sum(1)
        return -x0 + eps

    return velocity


def run_loop(
    scheduler, n_steps: int, x: torch.Tensor, velocity, t_from: str, nan_last_to_x0: bool = False
) -> tuple[torch.Tensor, int]:
    """The standard diffusers denoising loop; returns the samples and the NFE made.

    `t_from="timestep"`: the model sees `timestep / num_train_timesteps` (what a pipeline does);
    `t_from="sigma"`: the model sees the scheduler's own float sigma of the current stage.
    `nan_last_to_x0`: where the last step returns NaN, take the scheduler's data estimate of that
    step instead (UniPC bh1's step to sigma = 0)."""
    scheduler.set_timesteps(n_steps)
    n_train = scheduler.config.num_train_timesteps
    nfe = 0
    for timestep in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, timestep) if hasattr(scheduler, "scale_model_input") else x
        if t_from == "sigma":
            if scheduler.step_index is None:
                scheduler._init_step_index(timestep)
            t = scheduler.sigmas[scheduler.step_index]
        else:
            t = timestep.to(torch.float32) / n_train
        v = velocity(x_in, t)
        nfe += 1
        x = scheduler.step(v, timestep, x).prev_sample
    if nan_last_to_x0:
        x = torch.where(torch.isnan(x), scheduler.model_outputs[-1], x)
    return x, nfe


def sigma_grid(scheduler, n_steps: int) -> list[float]:
    """The sigmas the scheduler steps through: the distinct ones (Heun repeats each interior sigma
    for its two stages), except DEIS's repeated last sigma, a step of its own (length zero, one
    NFE), which is kept."""
    scheduler.set_timesteps(n_steps)
    sigmas = scheduler.sigmas.tolist()
    if sigmas[-1] == sigmas[-2]:
        return torch.unique_consecutive(scheduler.sigmas[:-1]).tolist() + sigmas[-1:]
    return torch.unique_consecutive(scheduler.sigmas).tolist()


FLOW = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
PIPELINE_T = "the net sees integer timesteps / 1000"


def _dpm(order: int):
    return lambda: DPMSolverMultistepScheduler(**FLOW, algorithm_type="dpmsolver++", solver_order=order)


def _unipc(variant: str, order: int):
    return lambda: UniPCMultistepScheduler(**FLOW, solver_type=variant, solver_order=order)


def _deis(order: int):
    return lambda: DEISMultistepScheduler(**FLOW, solver_order=order)


class Peer(NamedTuple):
    """One diffusers scheduler: its factory, the NFE of `n_steps` steps, the note on its grid, whether
    it also runs with the net at its float sigma, and whether its last step's NaN is replaced by its
    data estimate."""

    factory: Callable[[], object]
    nfe_of_steps: Callable[[int], int]
    note: str
    sigma_variant: bool = True
    nan_last_to_x0: bool = False


DPM_GRID = "grid: 0.999 (1 - i/n), then 0"
UNIPC_GRID = "grid: 1 - 1e-6, then 0.999 (1 - i/n), then 0"
DEIS_GRID = "grid: 0.999 (1 - i/n); ends at sigma 0.999/n (last step of length 0)"
BH1_NAN = "NaN at the last step replaced by its x0 estimate"

SCHEDULERS: dict[str, Peer] = {
    "diffusers FlowMatchEuler": Peer(
        FlowMatchEulerDiscreteScheduler, lambda n: n, "grid: linspace(1, 1e-3, n), then 0", False
    ),
    "diffusers FlowMatchHeun": Peer(
        FlowMatchHeunDiscreteScheduler,
        lambda n: 2 * n - 1,
        "grid: linspace(1, 1e-3, n), then 0; last step Euler",
        False,
    ),
    "diffusers DPM++ 2M": Peer(_dpm(2), lambda n: n, DPM_GRID),
    "diffusers DPM++ 3M": Peer(_dpm(3), lambda n: n, DPM_GRID + "; quadratic term weighed by 1/2"),
    "diffusers UniPC bh1 p2": Peer(_unipc("bh1", 2), lambda n: n, f"{UNIPC_GRID}; {BH1_NAN}", True, True),
    "diffusers UniPC bh1 p3": Peer(_unipc("bh1", 3), lambda n: n, f"{UNIPC_GRID}; {BH1_NAN}", True, True),
    "diffusers UniPC bh2 p2": Peer(_unipc("bh2", 2), lambda n: n, UNIPC_GRID),
    "diffusers UniPC bh2 p3": Peer(_unipc("bh2", 3), lambda n: n, UNIPC_GRID),
    "diffusers DEIS p2": Peer(_deis(2), lambda n: n, DEIS_GRID),
    "diffusers DEIS p3": Peer(_deis(3), lambda n: n, DEIS_GRID),
}


def steps_for_budget(nfe_of_steps, budget: int) -> int:
    n = 1
    while nfe_of_steps(n + 1) <= budget:
        n += 1
    return n


def variants(name: str, peer: Peer) -> list[tuple[str, str, str]]:
    """(t_from, label, note) of the runs of one scheduler: as a pipeline calls the net, and (for the
    multistep schedulers) with the net at the float sigma."""
    runs = [("timestep", name, f"{peer.note}; {PIPELINE_T}" if peer.sigma_variant else peer.note)]
    if peer.sigma_variant:
        runs.append(("sigma", f"{name}, net at float sigma", peer.note))
    return runs


def main() -> None:
    problem_path, out = sys.argv[1], sys.argv[2]
    problem = np.load(problem_path)
    noise = torch.from_numpy(problem["noise"].astype(np.float32))
    velocity = mixture_velocity(torch.from_numpy(problem["means"].astype(np.float32)), float(problem["std"]))
    repeats = int(problem["repeats"])
    rows, arrays = [], {}
    for budget in problem["budgets"].tolist():
        for name, peer in SCHEDULERS.items():
            n_steps = steps_for_budget(peer.nfe_of_steps, budget)
            for t_from, label, note in variants(name, peer):

                def run():
                    x = noise.clone()
                    return run_loop(peer.factory(), n_steps, x, velocity, t_from, peer.nan_last_to_x0)

                with torch.no_grad():
                    samples, nfe = run()
                    times = []
                    # the float-sigma variant is there for its samples: timed once
                    for _ in range(repeats if t_from == "timestep" else 1):
                        t0 = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - t0)
                key = f"a{len(rows)}"
                arrays[key] = samples.numpy()
                rows.append(
                    dict(
                        method=label,
                        budget=budget,
                        n_steps=n_steps,
                        nfe=nfe,
                        time_s=float(np.median(times)),
                        time_min_s=min(times),
                        grid=sigma_grid(peer.factory(), n_steps),
                        note=note,
                        key=key,
                    )
                )
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as f:
        json.dump(dict(versions=dict(torch=torch.__version__, diffusers=_diffusers_version()), rows=rows), f)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


if __name__ == "__main__":
    main()
