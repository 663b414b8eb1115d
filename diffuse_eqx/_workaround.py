"""Workarounds for bugs of the dependencies, one named helper each, with the reason and the way out."""

import jax
import jax.numpy as jnp
from jaxtyping import PyTree


def run_after(values: PyTree, dependency: PyTree) -> PyTree:
    """`values`, made to depend on `dependency`, so that the computations that use them run after it.

    Why: jaxlib 0.10's CPU kernels for batched LAPACK solves (e.g. the Cholesky solves of a
    [`GaussianMixture`][diffuse_eqx.GaussianMixture]'s denoiser under `vmap`) can deadlock XLA's CPU
    thread pool when two independent ones run concurrently (fixed upstream in jax 0.11; jax 0.10.2 is
    the newest that installs here, so this stays until the dependency moves). Used by
    [`ExactPosteriorGuidance`][diffuse_eqx.ExactPosteriorGuidance], which evaluates two mixtures (the
    prior and the posterior) at the same point; [`TMPD`][diffuse_eqx.TMPD] takes its Jacobian in
    reverse mode for the same reason (forward mode would run the network's solves side by side).

    How: adds `0 * sum(dependency)` to every leaf of `values` (XLA does not fold `0 * x` for floats,
    as `x` may be infinite or NaN). A non-finite dependency makes the values non-finite: use it only
    where the dependency is part of the same result anyway.
    """
    zero = 0 * sum(jnp.sum(leaf) for leaf in jax.tree.leaves(dependency))
    return jax.tree.map(lambda v: (v + zero).astype(v.dtype), values)
