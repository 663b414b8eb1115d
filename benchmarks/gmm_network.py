"""The exact network of a Gaussian mixture, E[x0 | x_t = x], under vmap over particles: three forms.

- old: one Cholesky solve per particle (`cho_solve` with the particle's right-hand side), the library's
  form before it computed the t-only terms apart (reimplemented here as the reference);
- MixtureX0: precision matrices through `jnp.linalg.inv` and `slogdet`, then einsum (the form
  benchmarks/posterior_gmm.py and tests/test_smc.py used to carry);
- library: `gmm.network(path, "x0")`: the inverse Cholesky factors L_k^{-1} (one triangular solve of
  the identity) computed once per time, then C_k^{-1}(x - a mu_k) = L_k^{-T} L_k^{-1}(x - a mu_k) by einsum.

Each is `jax.jit(jax.vmap(f, in_axes=(0, None)))` (one t shared by all particles, as in a sampler step)
or, for the rows marked "per particle", `in_axes=(0, 0)` (each particle its own t, as happens when t is
made to depend on a per-particle value). Times are the median of several runs after compilation (float64
on the default device); the last two columns are the largest absolute differences to the old form.

    python benchmarks/gmm_network.py            # (K, d, n) in a few sizes, 7 runs each
    python benchmarks/gmm_network.py --runs 3
"""

import argparse
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx


jax.config.update("jax_enable_x64", True)


def old_x0(gmm, path, x, t):
    """E[x0 | x_t = x] with one Cholesky solve per particle (the library's former `_posterior_terms`)."""
    a, s = path.alpha(t), path.sigma(t)
    chol = jnp.linalg.cholesky(a**2 * gmm.covs + s**2 * jnp.eye(gmm.dim))
    diff = x - a * gmm.means
    prec_diff = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    r = jax.nn.softmax(jnp.log(gmm.weights) - 0.5 * (jnp.sum(diff * prec_diff, -1) + logdet))
    return r @ (gmm.means + a * jnp.einsum("kij,kj->ki", gmm.covs, prec_diff))


def mixture_x0(gmm, path, x, t):
    """E[x0 | x_t = x] through `jnp.linalg.inv` and `slogdet` (the former `MixtureX0` of the benchmarks)."""
    a, s = path.alpha(t), path.sigma(t)
    cov_t = a**2 * gmm.covs + s**2 * jnp.eye(gmm.dim)
    prec, logdet = jnp.linalg.inv(cov_t), jnp.linalg.slogdet(cov_t)[1]
    diff = x - a * gmm.means
    prec_diff = jnp.einsum("kij,kj->ki", prec, diff)
    r = jax.nn.softmax(jnp.log(gmm.weights) - 0.5 * (jnp.sum(diff * prec_diff, -1) + logdet))
    return r @ (gmm.means + a * jnp.einsum("kij,kj->ki", gmm.covs, prec_diff))


def random_mixture(key, K: int, d: int) -> dx.GaussianMixture:
    """K components in d dimensions: means of scale 4, covariances B B^T / d + 0.05 I."""
    k_w, k_m, k_c = jr.split(key, 3)
    w = jr.uniform(k_w, (K,), minval=0.1)
    b = jr.normal(k_c, (K, d, d))
    covs = jnp.einsum("kij,klj->kil", b, b) / d + 0.05 * jnp.eye(d)
    return dx.GaussianMixture(w / w.sum(), 4 * jr.normal(k_m, (K, d)), covs)


def median_time(fn, args, runs: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs per form (after compilation)")
    args = parser.parse_args()
    path = dx.Flow()
    sizes = [(8, 2, 4096, False), (25, 8, 4096, False), (25, 8, 16384, False), (50, 16, 4096, False)]
    sizes += [(25, 8, 4096, True)]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float64, Flow path, t in U(0.05, 0.95)\n")
    header = ["K", "d", "particles", "t", "old (ms)", "MixtureX0 (ms)", "library (ms)", "old / library"]
    header += ["max abs diff MixtureX0 - old", "max abs diff library - old"]
    print("| " + " | ".join(header) + " |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for K, d, n, per_particle in sizes:
        key = jr.PRNGKey(K * 1000 + d)
        gmm = random_mixture(key, K, d)
        xs = 6 * jr.normal(jr.fold_in(key, 1), (n, d))
        ts = jr.uniform(jr.fold_in(key, 2), (n,), minval=0.05, maxval=0.95)
        t_axis, t = (0, ts) if per_particle else (None, ts[0])
        forms = {
            "old": lambda x, t, gmm=gmm: old_x0(gmm, path, x, t),
            "MixtureX0": lambda x, t, gmm=gmm: mixture_x0(gmm, path, x, t),
            "library": gmm.network(path, "x0"),
        }
        ms, outs = {}, {}
        for name, f in forms.items():
            fn = jax.jit(jax.vmap(f, in_axes=(0, t_axis)))
            outs[name] = np.asarray(fn(xs, t))
            ms[name] = 1e3 * median_time(fn, (xs, t), args.runs)
        row = [K, d, n, "per particle" if per_particle else "shared"]
        row += [f"{ms[name]:.2f}" for name in forms] + [f"{ms['old'] / ms['library']:.1f}x"]
        row += [f"{np.max(np.abs(outs[name] - outs['old'])):.1e}" for name in ("MixtureX0", "library")]
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
