import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Int

from .._check import as_numpy, check_int, concrete
from .._custom_types import Grid, Scalar


class AbstractTimer(eqx.Module):
    """A time grid: `n_steps + 1` strictly decreasing times from $t_{\\max}$ (noise) to $t_{\\min}$.

    `n_steps` lives here and nowhere else. `times()` gives the whole grid, `timer(i)` one value.
    Every concrete timer validates its parameters and its grid when it is built.
    """

    n_steps: eqx.AbstractVar[int]
    """The number of steps; the grid has `n_steps + 1` times."""

    @abc.abstractmethod
    def times(self) -> Grid:
        """The grid $t_0 > t_1 > \\dots > t_{n}$, shape `(n_steps + 1,)`."""

    def __call__(self, i: Int[ArrayLike, ""]) -> Scalar:
        """The `i`-th time of the grid, $0 \\le i \\le$ `n_steps` (an `IndexError` outside; a
        traced `i` is checked at run time)."""
        n = self.n_steps
        if concrete(i):
            if isinstance(i, bool) or not np.issubdtype(np.asarray(i).dtype, np.integer) or np.ndim(i):
                raise TypeError(f"{type(self).__name__}(i): i must be an integer index; got {i!r}.")
            if not 0 <= int(i) <= n:
                raise IndexError(f"{type(self).__name__}(i): i = {int(i)} is outside the grid's 0..{n}.")
            return self.times()[i]
        msg = f"{type(self).__name__}(i): i is outside the grid's 0..n_steps."
        return self.times()[eqx.error_if(i, (i < 0) | (i > n), msg)]


#: The most steps a timer takes (a grid of `MAX_STEPS + 1` times); more is refused before the grid
#: is allocated.
MAX_STEPS = 1_000_000


def check_n_steps(name: str, n_steps) -> int:
    """`n_steps` a positive integer of at most `MAX_STEPS`, or an error naming the timer."""
    check_int(f"{name} n_steps", n_steps)
    if n_steps > MAX_STEPS:
        raise ValueError(
            f"{name} n_steps = {n_steps} is more than MAX_STEPS = {MAX_STEPS:,}: no sampler needs that "
            "many, and the grid alone would take gigabytes."
        )
    return int(n_steps)


def check_grid(name: str, ts) -> None:
    """Raises a `ValueError` naming the timer if a concrete grid is not strictly decreasing/finite."""
    if not concrete(ts):
        return
    t = as_numpy(ts)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"{name}: a grid needs at least 2 times in a 1-D array; got shape {t.shape}.")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name}: the grid has non-finite times: {t}.")
    if np.any(t < 0):
        raise ValueError(f"{name}: times must be >= 0 (t = 0 is data); got {t}.")
    bad = np.nonzero(np.diff(t) >= 0)[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}: the grid must be strictly decreasing (noise to data), but "
            f"t[{i}] = {t[i]} <= t[{i + 1}] = {t[i + 1]}. Check t_max > t_min and that n_steps is "
            "not so large that neighbouring times round to the same value."
        )


def check_range(name: str, t_max, t_min) -> None:
    if concrete(t_max, t_min) and not (0 <= t_min < t_max):
        raise ValueError(f"{name} needs 0 <= t_min < t_max; got t_min={t_min}, t_max={t_max}.")


def as_float_array(x) -> Grid:
    return jnp.asarray(x, dtype=jnp.result_type(float))
