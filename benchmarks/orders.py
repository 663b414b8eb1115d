"""Measured ODE convergence orders of every integrator on every path (float64).

Data N(mean, diag(var)) has a closed-form probability-flow ODE: each coordinate keeps its
standardized value, x_t = a_t mean + sd_t (x_s - a_s mean) / sd_s with sd^2 = a^2 var + s^2.
The order is minus the slope of log(error) against log(n_steps) over n_steps = 32..256, on an
interior grid (0.8 t_max -> 0.1 t_max) and on the full grid (t_max -> 0, uniform; for EDM the
Karras grid, since a uniform grid from sigma_max = 80 is not a sensible one). Prints a markdown
table. Usage: `python benchmarks/orders.py`.
"""

import equinox as eqx
import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import diffuse_eqx as dx  # noqa: E402


STEPS = (32, 64, 128, 256)
MEAN, VAR, Z = np.array([1.0, -0.5]), np.array([0.3, 2.0]), np.array([1.2, -0.8])
solve = eqx.filter_jit(dx.integrate)


def order(path, integrator, grid_of_n):
    gmm = dx.GaussianMixture(np.ones(1), MEAN[None], np.diag(VAR)[None])
    predictor = dx.Predictor(gmm.network(path, "velocity"), path, "velocity")
    errors = []
    for n in STEPS:
        ts = jnp.asarray(grid_of_n(n))
        t0, t1 = ts[0], ts[-1]
        sd = lambda t: np.sqrt(float(path.alpha(t)) ** 2 * VAR + float(path.sigma(t)) ** 2)  # noqa: E731
        x0 = float(path.alpha(t0)) * MEAN + sd(t0) * Z
        exact = float(path.alpha(t1)) * MEAN + sd(t1) / sd(t0) * (x0 - float(path.alpha(t0)) * MEAN)
        x1, _, _ = solve(integrator, predictor, ts, jnp.asarray(x0), jr.key(0))
        errors.append(np.linalg.norm(np.asarray(x1) - exact))
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


def main() -> None:
    paths = {"Flow": dx.Flow(), "VP linear": dx.VP(), "VP cosine": dx.VP(schedule="cosine"), "EDM": dx.EDM()}
    integrators = [dx.Euler(), dx.Heun(), dx.DDIM(), dx.DPMpp2S(), dx.DPMpp2M(), dx.DPMpp3M(), dx.IPNDM()]
    integrators += [
        dx.UniPC(order=2),
        dx.UniPC(order=3),
        dx.UniPC(order=2, corrector=False),
        dx.DEIS(order=2),
    ]
    integrators += [dx.DEIS(order=3)]
    print("| integrator | declared | " + " | ".join(f"{p} interior | {p} full" for p in paths) + " |")
    print("|---|---:|" + "---:|" * (2 * len(paths)))
    for integrator in integrators:
        cells = []
        for name, path in paths.items():
            t_max = path.t_max
            interior = order(path, integrator, lambda n: np.linspace(0.8 * t_max, 0.1 * t_max, n + 1))
            if name == "EDM":
                full = order(path, integrator, lambda n: np.asarray(dx.KarrasTimer(n, t_max=t_max).times()))
            else:
                full = order(path, integrator, lambda n: np.linspace(t_max, 0.0, n + 1))
            cells += [f"{interior:.2f}", f"{full:.2f}"]
        print(f"| {label(integrator)} | {integrator.order} | " + " | ".join(cells) + " |")


def label(integrator) -> str:
    name = type(integrator).__name__
    if not hasattr(integrator, "solver_order"):
        return name
    corrector = "" if getattr(integrator, "corrector", True) else ", no corrector"
    return f"{name}({integrator.solver_order}{corrector})"


if __name__ == "__main__":
    main()
