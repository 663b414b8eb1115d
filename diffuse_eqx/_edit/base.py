import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._check import check_interval, concrete
from .._custom_types import Grid


class EditOutput(eqx.Module):
    """What an edit ([`SDEdit`][diffuse_eqx.SDEdit], [`RFInversion`][diffuse_eqx.RFInversion],
    [`FlowEdit`][diffuse_eqx.FlowEdit]) returns.

    - `samples`: the edited particles, shape `(n_particles, *x0_shape)`.
    - `nfe`: network evaluations per particle (inversion included).
    - `t_start`: the grid time at which the edit started.
    """

    samples: Float[Array, " n_particles *shape"]
    nfe: Int[Array, ""]
    t_start: Float[Array, ""]


def start_index(owner: str, strength: float, ts: Grid) -> int:
    """The grid index at which an edit of `strength` (the fraction of the grid's steps it runs)
    starts: the edit runs the last `round(strength * n_steps)` steps, at least one."""
    check_interval(f"{owner} strength", strength, 0.0, 1.0, open_lo=True)
    n = ts.shape[0] - 1
    k = n - int(round(float(strength) * n))
    if k >= n:
        raise ValueError(
            f"{owner}: strength={strength} runs round({strength} * {n}) = 0 of the grid's {n} steps; "
            f"use a strength of at least {0.5 / n:.3g} or a finer grid."
        )
    return k


def check_batch(owner: str, x, name: str = "x") -> Float[Array, " n *shape"]:
    """`x` as a float batch `(n, *x0_shape)`, finite if concrete."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(
            f"{owner}: {name} must be a batch of shape (n_particles, *x0_shape); got shape {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{owner}: {name} must be real floating point; got dtype {x.dtype}.")
    if concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{owner}: {name} has NaN or infinite values.")
    return x
