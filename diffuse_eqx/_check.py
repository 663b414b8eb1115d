"""Argument validation, in one place.

Checks run once: at construction (`__check_init__`) or when sampling starts (`init`). Types of fields
are left to the annotations (jaxtyping + beartype check them in the test suite); these helpers check
values. Hyperparameters are pytree leaves, so a module may be rebuilt under `jit`/`vmap` with traced
leaves: value checks run only on concrete values (the first construction, by the user), and traced
values are checked with `eqx.error_if` where they are used.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def concrete(*values) -> bool:
    """True when no value is a JAX tracer, i.e. the values can be checked in Python now."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))


def as_numpy(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """`value` as an `int`; a `TypeError` if it is not an integer (bools are not), a `ValueError`
    naming `name` if it is below `minimum`."""
    bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be {bound}{hint}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be {bound}{hint}; got {value!r}.")
    return int(value)


def check_value(name: str, value, ok: Callable[[float], bool], requirement: str, hint: str = "") -> None:
    """A `ValueError` "`name` must be `requirement`" if `value` is concrete and `ok(value)` is false
    (NaN fails every comparison, so it is refused too)."""
    if value is not None and concrete(value) and not ok(float(value)):
        raise ValueError(f"{name} must be {requirement}{hint}; got {value}.")


def check_positive(name: str, value, hint: str = "", allow_inf: bool = False) -> None:
    """`value > 0`, and finite unless `allow_inf`."""
    ok = (lambda v: v > 0) if allow_inf else (lambda v: 0 < v < math.inf)
    check_value(name, value, ok, "> 0" if allow_inf else "> 0 and finite", hint)


def check_nonnegative(name: str, value, hint: str = "", allow_inf: bool = False) -> None:
    """`value >= 0`, and finite unless `allow_inf`."""
    ok = (lambda v: v >= 0) if allow_inf else (lambda v: 0 <= v < math.inf)
    check_value(name, value, ok, ">= 0" if allow_inf else ">= 0 and finite", hint)


def check_traced(x, name: str, value, ok: Callable, requirement: str):
    """`x` as it is when `value` is concrete (checked at construction). A traced `value` (a module
    built under `jit`/`vmap`, e.g. vmapped over a hyperparameter) puts `x` behind an
    `eqx.error_if` that fails at run time with "`name` must be `requirement`" wherever `ok(value)`
    (a `jnp` predicate) is false; guarding the array the computation goes on with keeps the check
    from being optimised away."""
    if value is None or concrete(value):
        return x
    return eqx.error_if(x, ~jnp.all(ok(jnp.asarray(value))), f"{name} must be {requirement}.")


def finite_nonnegative(v):
    return (v >= 0) & jnp.isfinite(v)


def check_interval(name: str, value, lo: float, hi: float, *, open_lo=False, open_hi=False, hint="") -> None:
    """`value` in the interval from `lo` to `hi`, each end closed unless `open_lo` / `open_hi`."""
    text = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"

    def ok(v):
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    check_value(name, value, ok, f"in {text}", hint)
