"""Peer runner for `samplers_vs_peers.py`: diffusers' flow-matching schedulers, in its own process.

Usage: `python benchmarks/_peer_diffusers.py PROBLEM.npz OUT` (written by the driver). Reads the
initial noise, the mixture and the NFE budgets from PROBLEM.npz; writes the final particles to
OUT.npz and one JSON row per run to OUT.json.

Each scheduler is driven by the standard diffusers loop, with the exact mixture velocity (float32,
closed form) as the model and the model evaluated at `t = timestep / num_train_timesteps`, as a
pipeline's transformer would see it:

    scheduler.set_timesteps(n_steps)
    for timestep in scheduler.timesteps:
        v = velocity(scheduler.scale_model_input(x, timestep), timestep / 1000)   # one NFE
        x = scheduler.step(v, timestep, x).prev_sample

Grids are the schedulers' own defaults (shift 1, no dynamic shifting). The initial noise is used as
the sample at the first sigma of each grid (diffusers' DPM-Solver flow grid starts at 0.999).
"""

import json
import sys
import time

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
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


def run_loop(scheduler, n_steps: int, x: torch.Tensor, velocity, t_from: str) -> tuple[torch.Tensor, int]:
    """The standard diffusers denoising loop; returns the samples and the NFE made.

    `t_from="timestep"`: the model sees `timestep / num_train_timesteps` (what a pipeline does);
    `t_from="sigma"`: the model sees the scheduler's own float sigma of the current stage."""
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
    return x, nfe


def sigma_grid(scheduler, n_steps: int) -> list[float]:
    """The distinct sigmas the scheduler steps through (Heun repeats each interior one)."""
    scheduler.set_timesteps(n_steps)
    return torch.unique_consecutive(scheduler.sigmas).tolist()


SCHEDULERS = {
    # name: (factory, NFE made by n_steps steps, note)
    "diffusers FlowMatchEuler": (
        FlowMatchEulerDiscreteScheduler,
        lambda n: n,
        "grid: linspace(1, 1e-3, n), then 0",
    ),
    "diffusers FlowMatchHeun": (
        FlowMatchHeunDiscreteScheduler,
        lambda n: 2 * n - 1,
        "grid: linspace(1, 1e-3, n), then 0; last step Euler",
    ),
    "diffusers DPM++ 2M": (
        lambda: DPMSolverMultistepScheduler(
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver++",
            solver_order=2,
        ),
        lambda n: n,
        "grid: 0.999 (1 - i/n); the net sees integer timesteps / 1000",
    ),
}


def steps_for_budget(nfe_of_steps, budget: int) -> int:
    n = 1
    while nfe_of_steps(n + 1) <= budget:
        n += 1
    return n


def main() -> None:
    problem_path, out = sys.argv[1], sys.argv[2]
    problem = np.load(problem_path)
    noise = torch.from_numpy(problem["noise"].astype(np.float32))
    velocity = mixture_velocity(torch.from_numpy(problem["means"].astype(np.float32)), float(problem["std"]))
    repeats = int(problem["repeats"])
    rows, arrays = [], {}
    for budget in problem["budgets"].tolist():
        for name, (factory, nfe_of_steps, note) in SCHEDULERS.items():
            variants = [("timestep", name, note)]
            if "DPM" in name:
                variants.append(("sigma", f"{name}, net at float sigma", "grid: 0.999 (1 - i/n)"))
            for t_from, label, label_note in variants:
                n_steps = steps_for_budget(nfe_of_steps, budget)
                with torch.no_grad():
                    samples, nfe = run_loop(factory(), n_steps, noise.clone(), velocity, t_from)
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        run_loop(factory(), n_steps, noise.clone(), velocity, t_from)
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
                        grid=sigma_grid(factory(), n_steps),
                        note=label_note,
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
