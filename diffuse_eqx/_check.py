"""Small helpers for validating arguments at construction time."""

import jax
import numpy as np


def concrete(*values) -> bool:
    """True when no value is a JAX tracer, i.e. the values can be checked in Python now.

    Hyperparameters are pytree leaves, so a module may be rebuilt under `jit`/`vmap` with traced
    leaves; static checks run only on concrete values (the first construction, by the user)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))


def as_numpy(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))
