"""Posterior samplers against the exact posterior of a Gaussian mixture (Cardoso et al. 2024, Sec. 4.1).

The prior is a mixture of 25 unit-covariance Gaussians in d_x = 8 with means (-8i, -8j) tiled four
times (i, j in -2..2) and weights w_k proportional to z_k^2, z ~ N(0, 1). The measurement is
y = A x + sigma_y n with x drawn from the prior, A = U diag(s) V^T (U, V from the SVD of a Gaussian
d_y x d_x matrix, s sorted U(0, 1)) and sigma_y = u * max(s), u ~ U(0, 1): the draws of the authors'
code (gabrielvc/mcg_diff, viz_gaussian.py: `std = rand() * max(diag)`). The posterior is again a
mixture, in closed form (`GaussianMixture.posterior`).

For each method and problem: the sliced-Wasserstein distance (SW) of M samples to M exact posterior
samples; the noise floor (the mean SW between independent exact sets of size M); the mode-weight
error (each sample assigned to the nearest posterior component mean; total variation between those
frequencies and the posterior weights, next to the same TV for M exact samples); NFE (network
evaluations per particle, sequential); network evaluations per returned sample; wall time of the
compiled sampler. SMC methods run one ensemble of N particles and return M draws from its final
weights; the guidance-type methods (those `diffuse_eqx` exports; missing ones are skipped) run one
particle per sample with `DDIM(eta=1)` (RePaint, DAPS and RED-diff are integrators themselves).

All on the Flow path with `FluxTimer(n_steps, shift=3)` (a uniform grid in t biases the prior's own
mode weights under DDIM(eta=1) at 100 steps by a total variation of about 0.06, three times more),
and the prior's exact denoiser E[x0 | x_t], `prior.network(path, "x0")` (its covariance terms depend
on t only, so under vmap they are computed once per time; tests/test_gaussian_mixture.py checks it
against an independent reference).

    python benchmarks/posterior_gmm.py            # d_y in {1, 2, 4}, 5 seeds, M = 1000, 100 steps
    python benchmarks/posterior_gmm.py --quick    # 2 seeds, M = 500, 50 steps, smaller ensembles
"""

import argparse
import time
from collections import defaultdict

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import diffuse_eqx as dx


jax.config.update("jax_enable_x64", True)


# ------------------------------------------------------------------------------------------------------
# The problem
# ------------------------------------------------------------------------------------------------------


def mixture_problem(seed: int, d_x: int = 8, d_y: int = 2):
    """(prior, A, y, sigma_y) of Cardoso et al. 2024, Sec. 4.1, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    means = np.array([[-8.0 * i, -8.0 * j] * (d_x // 2) for i in range(-2, 3) for j in range(-2, 3)])
    w = rng.normal(size=25) ** 2
    prior = dx.GaussianMixture(w / w.sum(), means, np.tile(np.eye(d_x), (25, 1, 1)))
    U, _, Vt = np.linalg.svd(rng.normal(size=(d_y, d_x)), full_matrices=False)
    s = np.sort(rng.uniform(size=d_y))[::-1]
    A = U @ np.diag(s) @ Vt
    sigma_y = rng.uniform() * s.max()
    x = np.asarray(prior.sample(jr.PRNGKey(seed), 1)[0])
    return prior, A, A @ x + sigma_y * rng.normal(size=d_y), float(sigma_y)


def mode_tv(samples, posterior) -> float:
    """TV between the nearest-component frequencies of `samples` and the posterior weights."""
    x, mu = np.asarray(samples), np.asarray(posterior.means)
    nearest = np.argmin(((x[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(nearest, minlength=mu.shape[0]) / x.shape[0]
    return 0.5 * float(np.abs(freq - np.asarray(posterior.weights)).sum())


# ------------------------------------------------------------------------------------------------------
# The methods
# ------------------------------------------------------------------------------------------------------


def smc_methods(pred, op, y, timer, n_particles):
    """name -> (builder, ensemble size)."""
    return {
        "MCGdiff": (lambda: dx.MCGdiff(pred, op, y, timer), n_particles),
        "TDS": (lambda: dx.TDS(pred, op, y, timer), n_particles),
    }


def guidance_methods(pred, prior, op, y):
    """name -> (builder of (predictor, integrator)), each with its defaults (the papers' choices;
    PiGDM and DAPS assume data of variance 1); missing classes are skipped."""
    ddpm = dx.DDIM(eta=1.0)
    specs = {
        "Exact guidance (oracle)": ("ExactPosteriorGuidance", lambda c: (c(pred, prior, op, y), ddpm)),
        "DPS": ("DPS", lambda c: (c(pred, op, y), ddpm)),
        "DPS (Gaussian likelihood)": ("DPS", lambda c: (c(pred, op, y, likelihood="gaussian"), ddpm)),
        "PiGDM": ("PiGDM", lambda c: (c(pred, op, y), ddpm)),
        "TMPD": ("TMPD", lambda c: (c(pred, op, y), ddpm)),
        "DDNM": ("DDNM", lambda c: (c(pred, op, y), ddpm)),
        "RePaint": ("RePaint", lambda c: (pred, c(ddpm, op, y))),
        "DAPS": ("DAPS", lambda c: (pred, c(op, y))),
        "RED-diff": ("RedDiff", lambda c: (pred, c(op, y))),
    }
    out = {}
    for name, (cls_name, build) in specs.items():
        cls = getattr(dx, cls_name, None)
        if cls is not None:
            out[name] = lambda build=build, cls=cls: build(cls)
    return out


# network gradients per step, as documented by each method (the SMC samplers count theirs)
GRADIENTS = {
    "Exact guidance (oracle)": "0",
    "DPS": "1 VJP",
    "DPS (Gaussian likelihood)": "1 VJP",
    "PiGDM": "1 VJP",
    "TMPD": "d_x VJP",
    "DDNM": "0",
    "RePaint": "0",
    "DAPS": "0",
    "RED-diff": "0",
}


@eqx.filter_jit
def _smc_samples(sampler, key, n_particles, M):
    k_run, k_draw = jr.split(key)
    out = sampler.generate(k_run, n_particles)
    idx = jr.categorical(k_draw, out.log_weights, shape=(M,))
    return out.particles[idx], out.nfe, out.n_vjp


@eqx.filter_jit
def _denoiser_samples(den, key, M):
    out = den.generate(key, M)
    return out.samples, out.nfe


_compiled = set()


def timed(name, fn, *args):
    """Runs `fn(*args)` (a filter_jit function) and times it; the first call of each method and shape
    is run twice so that compilation is not timed (later problems reuse the compiled code)."""
    if name not in _compiled:
        jax.block_until_ready(fn(*args))
        _compiled.add(name)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def run_smc(name, sampler, n_particles, M, key):
    (samples, nfe, n_vjp), seconds = timed(name, _smc_samples, sampler, key, n_particles, M)
    vjp = f"{int(n_vjp) / int(nfe):.2f} VJP" if int(n_vjp) else "0"
    return samples, int(nfe), vjp, n_particles * int(nfe) / M, seconds


def run_denoiser(name, predictor, integrator, timer, d_x, M, key):
    den = dx.Denoiser(predictor, integrator, timer, (d_x,))
    (samples, nfe), seconds = timed(name, _denoiser_samples, den, key, M)
    return samples, int(nfe), GRADIENTS.get(name.split(" [")[0], "?"), float(nfe), seconds


# ------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds, M = 500, 50 steps, N = 4000")
    parser.add_argument("--seeds", type=int, default=None, help="problems per d_y (default 5; quick 2)")
    parser.add_argument("--dy", type=int, nargs="+", default=[1, 2, 4], help="measurement dimensions")
    parser.add_argument("--samples", type=int, default=None, help="M, samples per method (1000; quick 500)")
    parser.add_argument("--steps", type=int, default=None, help="grid steps (100; quick 50)")
    parser.add_argument("--particles", type=int, default=None, help="SMC ensemble size N (16000; quick 4000)")
    parser.add_argument("--no-guidance", action="store_true", help="only the SMC methods")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out (by table name)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these methods (by table name)")
    args = parser.parse_args()
    n_seeds = args.seeds or (2 if args.quick else 5)
    M = args.samples or (500 if args.quick else 1000)
    n_steps = args.steps or (50 if args.quick else 100)
    N = args.particles or (4000 if args.quick else 16000)
    d_x, path = 8, dx.Flow()
    timer = dx.FluxTimer(n_steps, shift=3.0)
    sw_key = jr.PRNGKey(12345)
    print(
        f"d_x = {d_x}, M = {M} samples, {n_steps} steps (Flow, FluxTimer shift 3), SMC ensembles of "
        f"N = {N}, seeds 0..{n_seeds - 1}; jax {jax.__version__} on {jax.devices()[0].platform}\n"
    )

    for d_y in args.dy:
        rows = defaultdict(list)  # name -> [(sw, floor, tv, nfe, n_vjp, per_sample, seconds)]
        floors, exact_tvs, failed = [], [], defaultdict(int)
        for seed in range(n_seeds):
            prior, A, y, sigma_y = mixture_problem(seed, d_x, d_y)
            posterior = prior.posterior(A, y, sigma_y)
            exact = posterior.sample(jr.PRNGKey(10_000 + seed), M)
            pairs = [
                (posterior.sample(jr.PRNGKey(2 * i), M), posterior.sample(jr.PRNGKey(2 * i + 1), M))
                for i in range(4)
            ]
            floor = float(np.mean([dx.sliced_wasserstein(a, b, sw_key) for a, b in pairs]))
            floors.append(floor)
            exact_tvs.append(mode_tv(exact, posterior))
            pred = dx.Predictor(prior.network(path, "x0"), path, "x0")
            op = dx.Matrix(A, sigma_y=sigma_y)
            key = jr.PRNGKey(seed)
            runs = {
                name: (lambda name=name, b=b, n=n: run_smc(f"{name} [{d_y}]", b(), n, M, key))
                for name, (b, n) in smc_methods(pred, op, y, timer, N).items()
            }
            if not args.no_guidance:
                for name, build in guidance_methods(pred, prior, op, y).items():
                    runs[name] = lambda name=name, build=build: run_denoiser(
                        f"{name} [{d_y}]", *build(), timer, d_x, M, key
                    )
            for name, run in runs.items():
                if name in args.skip or (args.only is not None and name not in args.only):
                    continue
                try:
                    samples, nfe, grads, per_sample, seconds = run()
                except Exception as e:  # a method that cannot run here is reported, not hidden
                    why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    print(f"  [d_y={d_y} seed={seed}] {name}: skipped ({why})")
                    continue
                if not np.isfinite(np.asarray(samples)).all():
                    print(f"  [d_y={d_y} seed={seed}] {name}: non-finite samples")
                    failed[name] += 1
                    continue
                sw = float(dx.sliced_wasserstein(samples, exact, sw_key))
                rows[name].append((sw, floor, mode_tv(samples, posterior), nfe, grads, per_sample, seconds))

        print(
            f"### d_y = {d_y}  (noise floor SW {np.mean(floors):.3f} ± {np.std(floors):.3f}; "
            f"exact samples' mode TV {np.mean(exact_tvs):.3f})\n"
        )
        print("| method | SW | SW / floor | mode TV | NFE | gradients / NFE | evals / sample | time (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            grads = r[0][4]
            if failed[name]:
                name = f"{name} ({len(r)} of {len(r) + failed[name]} finite)"
            r = np.array([[v for i, v in enumerate(row) if i != 4] for row in r], dtype=float)
            sw, ratio, tv = r[:, 0], r[:, 0] / r[:, 1], r[:, 2]
            print(
                f"| {name} | {sw.mean():.3f} ± {sw.std():.3f} | {ratio.mean():.2f} (max {ratio.max():.2f}) | "
                f"{tv.mean():.3f} | {r[0, 3]:.0f} | {grads} | {r[0, 4]:.0f} | {r[:, 5].mean():.2f} |"
            )
        print()


if __name__ == "__main__":
    main()
