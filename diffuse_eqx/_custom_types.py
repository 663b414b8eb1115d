"""jaxtyping aliases shared by the whole package."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real


#: A time, a scalar array or a Python number.
Time: TypeAlias = Real[ArrayLike, ""]
#: Times at which a path is evaluated (path methods are elementwise).
Times: TypeAlias = Real[ArrayLike, "*t"]
#: The values of a path's coefficient at `Times`.
PathValue: TypeAlias = Float[Array, "*t"]
#: A scalar array produced by the library.
Scalar: TypeAlias = Float[Array, ""]
#: One particle, any shape (networks, predictors and integrators are unbatched).
Particle: TypeAlias = Float[Array, "*shape"]
#: A time grid, strictly decreasing, from t_max to t_min.
Grid: TypeAlias = Float[Array, " n_steps_plus_one"]
#: Network evaluations spent by an integrator step.
NFE: TypeAlias = Int[Array, ""]
Key: TypeAlias = PRNGKeyArray
#: A hyperparameter: a Python number or a scalar array (a pytree leaf, so it can be traced).
Hyperparameter: TypeAlias = Real[ArrayLike, ""]
