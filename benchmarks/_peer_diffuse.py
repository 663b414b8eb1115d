"""Peer runner for `samplers_vs_peers.py`: the original Diffuse (`pip install diffuse-jax`, 0.1.0).

Run by the driver with the Python of a separate venv that holds diffuse-jax (it cannot live in the
project's venv): `$DIFFUSE_PEER_PYTHON benchmarks/_peer_diffuse.py PROBLEM.npz OUT`. Reads the
initial noise, the mixture and the NFE budgets from PROBLEM.npz; writes the final particles to
OUT.npz and one JSON row per run to OUT.json. Plain JAX only (no diffuse_eqx import).

What Diffuse's API imposes, reported in the notes of each row:
- `Denoiser.generate` draws its own initial noise, so this script runs exactly its loop (vmap of
  `Denoiser.init`, then `lax.scan` of `Denoiser.step`) on the shared noise instead.
- Its timer `VpTimer(n_steps, eps, tf)` is the uniform grid from tf = 1 to eps = 0 here (the same
  as our `UniformTimer`); every step makes its integrator's full count of evaluations (Heun and
  DPM++2S: 2 per step, the last step included, where the velocity is evaluated at t = 0).
- Its `Flow` clips alpha and sigma to [0.001, 0.999] in every conversion (and adds 1e-8 to
  denominators), so DDIM and DPM++2S, which go through score/noise/x0, see alpha(1) = 0.001 instead
  of 0; Euler and Heun with a velocity network never convert and are unaffected.
- DDIM and DPM++2S are given the exact score network (their natural parameterization) and, as a
  second row, the velocity network (converted by Diffuse through the clipped SDE coefficients).
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from diffuse.denoisers.denoiser import Denoiser
from diffuse.diffusion.sde import Flow
from diffuse.integrator.deterministic import (
    DDIMIntegrator,
    DPMpp2sIntegrator,
    EulerIntegrator,
    HeunIntegrator,
)
from diffuse.predictor import Predictor
from diffuse.timer.base import VpTimer


def mixture_networks(means, std):
    r"""The exact velocity and score of $\frac1K\sum_k N(\mu_k, s^2 I)$ under the Flow path, for one
    particle: with $a = 1 - t$, $c = a^2 s^2 + t^2$, $r_k \propto \exp(-|x - a\mu_k|^2/2c)$,
    score $= -\sum_k r_k (x - a\mu_k)/c$ and velocity $= -E[x_0|x] + E[\varepsilon|x]$."""

    def terms(x, t):
        a = 1.0 - t
        c = a * a * std**2 + t * t
        diff = x[None, :] - a * means
        r = jax.nn.softmax(-jnp.sum(diff**2, -1) / (2 * c))[:, None]
        return a, c, diff, r

    def velocity(x, t):
        a, c, diff, r = terms(x, t)
        x0 = jnp.sum(r * (means + (a * std**2 / c) * diff), 0)
        eps = (t / c) * jnp.sum(r * diff, 0)
        return -x0 + eps

    def score(x, t):
        _, c, diff, r = terms(x, t)
        return -jnp.sum(r * diff, 0) / c

    return velocity, score


INTEGRATORS = {
    # name: (class, NFE per step, parameterizations to try)
    "Diffuse Euler": (EulerIntegrator, 1, ("velocity",)),
    "Diffuse Heun": (HeunIntegrator, 2, ("velocity",)),
    "Diffuse DDIM": (DDIMIntegrator, 1, ("score", "velocity")),
    "Diffuse DPM++2S": (DPMpp2sIntegrator, 2, ("score", "velocity")),
}


def make_sampler(integrator_cls, network, prediction, n_steps):
    model = Flow(tf=1.0)
    timer = VpTimer(n_steps=n_steps, eps=0.0, tf=1.0)
    integrator = integrator_cls(model=model, timer=timer)
    predictor = Predictor(model=model, network=network, prediction_type=prediction)
    denoiser = Denoiser(integrator=integrator, model=model, predictor=predictor, x0_shape=(2,))

    @jax.jit
    def sample(noise, key):
        # Denoiser.generate's loop, on given noise.
        keys = jax.random.split(key, noise.shape[0])
        state = jax.vmap(denoiser.init)(noise, keys)
        state, _ = jax.lax.scan(lambda s, _: (jax.vmap(denoiser.step)(s), None), state, jnp.arange(n_steps))
        return state.integrator_state.position

    return sample, [float(timer(i)) for i in range(n_steps + 1)]


def main() -> None:
    problem_path, out = sys.argv[1], sys.argv[2]
    problem = np.load(problem_path)
    noise = jnp.asarray(problem["noise"], jnp.float32)
    velocity, score = mixture_networks(jnp.asarray(problem["means"], jnp.float32), float(problem["std"]))
    networks = {"velocity": velocity, "score": score}
    repeats = int(problem["repeats"])
    key = jax.random.key(0)
    rows, arrays = [], {}
    for budget in problem["budgets"].tolist():
        for name, (cls, nfe_per_step, predictions) in INTEGRATORS.items():
            n_steps = budget // nfe_per_step
            for prediction in predictions:
                sample, grid = make_sampler(cls, networks[prediction], prediction, n_steps)
                samples = sample(noise, key).block_until_ready()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    sample(noise, key).block_until_ready()
                    times.append(time.perf_counter() - t0)
                label = f"{name} ({prediction} net)" if len(predictions) > 1 else name
                note = "uniform 1 -> 0"
                if cls in (DDIMIntegrator, DPMpp2sIntegrator):
                    note += "; alpha, sigma clipped to [1e-3, 0.999]"
                key_name = f"a{len(rows)}"
                arrays[key_name] = np.asarray(samples)
                rows.append(
                    dict(
                        method=label,
                        budget=budget,
                        n_steps=n_steps,
                        nfe=n_steps * nfe_per_step,
                        time_s=float(np.median(times)),
                        time_min_s=min(times),
                        grid=grid,
                        note=note,
                        key=key_name,
                    )
                )
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as f:
        json.dump(dict(versions=dict(jax=jax.__version__, diffuse="0.1.0"), rows=rows), f)


if __name__ == "__main__":
    main()
