"""Grids fitted to a model: the step sizes that bring an integrator closest to a tight reference solve
of the probability-flow ODE, from the same pilot noise."""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float

from .._check import as_numpy, check_int, check_nonnegative
from .._custom_types import Grid, Key
from .._integrator import AbstractIntegrator, DiffraxAdaptive
from .._predictor import AbstractPredictor
from .base import AbstractTimer, check_n_steps
from .custom import CustomTimer
from .karras import KarrasTimer
from .logsnr import LAMBDA_STOP, LogSNRTimer
from .uniform import UniformTimer


#: The half log-SNR at which the default reference stops its adaptive solve before its data step to
#: sigma = 0: alpha/sigma = e^10 (t = 4.5e-5 on `Flow`), where the data step's error is ~1e-9.
REFERENCE_LAMBDA = 10.0

Reference = AbstractIntegrator | tuple[AbstractIntegrator, AbstractTimer] | None


def fit_timer(
    predictor: AbstractPredictor,
    integrator: AbstractIntegrator,
    n_steps: int,
    key: Key,
    *,
    x0_shape: Sequence[int],
    n_particles: int = 256,
    reference: Reference = None,
    init_timer: AbstractTimer | Sequence[AbstractTimer] | None = None,
    max_iter: int = 100,
    tol: float = 1e-9,
    batch_size: int | None = None,
    progress: bool = False,
) -> CustomTimer:
    r"""The grid of `n_steps` steps on which `integrator` comes closest to the exact
    probability-flow ODE, fitted to `predictor` on pilot noise.

    With $z_1, \dots, z_M$ drawn from the prior at $t_0$ (the initial noise `Denoiser.generate(key,
    M)` starts from), $\Phi_{\rm ref}$ a tight solve of the ODE and $\Phi_\theta$ the integrator on the
    grid $t(\theta)$, the fit minimises

    $$L(\theta) = \frac1M \sum_{m=1}^M \big\lVert \Phi_\theta(z_m) - \Phi_{\rm ref}(z_m) \big\rVert^2,
      \qquad t_i(\theta) = t_0 + (t_N - t_0) \sum_{j < i} \operatorname{softmax}(\theta)_j,$$

    over the log step sizes $\theta \in \mathbb R^N$ (the ends $t_0$, $t_N$ stay those of the initial
    grid), by L-BFGS (`optax.lbfgs`, zoom line search) differentiating through the integrator. It
    starts from the initial grid of lowest $L$. Any model works (a FLUX predictor too); each
    iteration costs a few forward and backward passes over the `n_particles` particles.

    The fit is only as good as its pilot noise: measure the fitted grid on independent noise,
    with [`timer_error`][diffuse_eqx.timer_error] and another key:

    ```python
    timer = dx.fit_timer(pred, dx.Heun(), 5, jr.key(0), x0_shape=(2,))
    held_out = dx.timer_error(pred, dx.Heun(), timer, jr.key(1), x0_shape=(2,))
    baseline = dx.timer_error(pred, dx.Heun(), dx.UniformTimer(5), jr.key(1), x0_shape=(2,))
    ```

    Stochastic integrators (`EulerMaruyama`, `DDIM` with `eta > 0`, ...) are refused: their samples
    do not follow the ODE, and the fit would chase one draw of their noise. (The check is one more
    pass over the pilot particles with other keys; a given `reference` is checked the same way.)

    **Arguments:**

    - `predictor`, `integrator`: the model and the (deterministic) integrator the grid is for.
    - `n_steps`: the number of steps $N$ (with `n_steps=1` the grid is the ends; nothing is fitted).
    - `key`: the key of the pilot noise (particle $m$ gets `fold_in(key, m)`, as in `generate`).
    - `x0_shape`: the shape of one sample.
    - `n_particles`: the number $M$ of pilot particles (default 256).
    - `reference`: the reference solve: a [`DiffraxAdaptive`][diffuse_eqx.DiffraxAdaptive] (default
      `None`: Tsit5 with `rtol=atol=1e-9` in float64, `1e-6` in float32), solved on $[t_0, t_N]$, or
      on $[t_0, t_\star, 0]$ with $\lambda(t_\star) = 10$ when $t_N = 0$ (the last interval is a
      data step); or a pair `(integrator, timer)`, a deterministic integrator on a fine grid with the
      same ends, e.g. `(dx.Heun(), dx.KarrasTimer(200, t_min=1e-4, t_max=1.0))` (for a bf16 network,
      whose rounding can drive adaptive step control).
    - `init_timer`: the initial grid, or several to start from the best of (default: the
      `UniformTimer`, the [`LogSNRTimer`][diffuse_eqx.LogSNRTimer] and a `KarrasTimer` from the
      path's `t_max` to 0). All have `n_steps` steps and the same ends.
    - `max_iter`: the most L-BFGS iterations (default 100; 0 returns the best initial grid).
    - `tol`: stop when an iteration lowers $L$ by less than `tol` $\cdot L$ (default $10^{-9}$).
    - `batch_size`: `None` (default) runs all particles at once; a positive int runs them in
      rematerialised chunks of at most `batch_size` (`jax.lax.map` + `jax.checkpoint`), so that the
      backward pass holds one chunk's activations (for large models).
    - `progress`: show a `tqdm` progress bar over the iterations, with the current RMS error.

    **Returns:** a [`CustomTimer`][diffuse_eqx.CustomTimer] with the fitted grid.
    """
    _check_models(predictor, integrator, "fit_timer")
    n_steps = check_n_steps("fit_timer", n_steps)
    n_particles = check_int("fit_timer n_particles", n_particles)
    max_iter = check_int("fit_timer max_iter", max_iter, minimum=0)
    check_nonnegative("fit_timer tol", tol)
    x0_shape, batch_size = _check_shape_and_batch(x0_shape, batch_size, "fit_timer")
    candidates = _init_timers(predictor.path, n_steps, init_timer)
    for timer in candidates:
        _check_timer(predictor, integrator, timer, x0_shape, "fit_timer init_timer")
    ends = np.stack([as_numpy(timer.times())[[0, -1]] for timer in candidates])
    if not np.allclose(ends, ends[0], rtol=1e-9, atol=0):
        raise ValueError(
            "fit_timer init_timer: the initial grids must have the same ends (t_0, t_N); got "
            f"{[tuple(e) for e in ends.tolist()]}."
        )
    if n_steps == 1:  # nothing to fit: the grid is its ends
        return CustomTimer(candidates[0].times())
    t0, t_end = candidates[0].times()[0], candidates[0].times()[-1]
    x, keys = _pilot(predictor.path, t0, key, n_particles, x0_shape)
    thetas = [jnp.log(-jnp.diff(timer.times().astype(x.dtype))) for timer in candidates]
    grid = _grid(thetas[0], t0, t_end)
    first = _endpoints(integrator, predictor, grid, x, keys, batch_size)
    _check_deterministic(integrator, predictor, grid, x, keys, batch_size, first, "fit_timer")
    target = _reference(predictor, reference, t0, t_end, x, keys, batch_size, "fit_timer")
    args = (integrator, predictor, x, keys, target, t0, t_end, batch_size)
    losses = [float(_loss(theta, *args)) for theta in thetas]
    if not any(math.isfinite(loss) for loss in losses):
        raise FloatingPointError(
            f"fit_timer: {type(integrator).__name__} gives non-finite end points on every initial grid "
            f"({', '.join(type(t).__name__ for t in candidates)}); check the predictor there."
        )
    best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    theta, loss = thetas[best], losses[best]
    if max_iter == 0:
        return CustomTimer(candidates[best].times())

    bar = _progress_bar(max_iter) if progress else None
    try:
        # strongly typed, as `_lbfgs_step` returns it: the step compiles once
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), _lbfgs().init(theta))
        current = theta
        for _ in range(max_iter):
            current, state, new_loss = _lbfgs_step(current, state, *args)
            new_loss = float(new_loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rms=f"{math.sqrt(max(new_loss, 0.0)):.3g}")
            if not math.isfinite(new_loss):
                break
            improvement = loss - new_loss
            if new_loss < loss:
                theta, loss = current, new_loss
            if improvement <= tol * new_loss:
                break
    finally:
        if bar is not None:
            bar.close()
    return CustomTimer(_grid(theta, t0, t_end))


def timer_error(
    predictor: AbstractPredictor,
    integrator: AbstractIntegrator,
    timer: AbstractTimer | Sequence[AbstractTimer],
    key: Key,
    *,
    x0_shape: Sequence[int],
    n_particles: int = 1000,
    reference: Reference = None,
    batch_size: int | None = None,
) -> float | list[float]:
    r"""The RMS distance between `integrator` on `timer`'s grid and a tight reference solve of the
    probability-flow ODE, from the same noise,
    $\big(\frac1M \sum_m \lVert \Phi_{\rm grid}(z_m) - \Phi_{\rm ref}(z_m) \rVert^2\big)^{1/2}$,
    with $z_m$ the initial noise of `Denoiser.generate(key, n_particles)`.

    The held-out error of a grid from [`fit_timer`][diffuse_eqx.fit_timer] (with another key than the
    fit's), or the error of any grid. The arguments are `fit_timer`'s (`reference` included); the
    integrator may be stochastic here (its distance to the ODE solution is then measured as it is).
    Given a sequence of timers, it returns their errors in a list, on the same noise, solving the
    reference once per pair of ends $(t_0, t_N)$.
    """
    _check_models(predictor, integrator, "timer_error")
    n_particles = check_int("timer_error n_particles", n_particles)
    x0_shape, batch_size = _check_shape_and_batch(x0_shape, batch_size, "timer_error")
    timers = list(timer) if isinstance(timer, Sequence) else [timer]
    for t in timers:
        _check_timer(predictor, integrator, t, x0_shape, "timer_error timer")
    solved = {}  # (t_0, t_N) -> pilot noise, keys, reference end points
    errors = []
    for t in timers:
        ts = t.times()
        ends = tuple(as_numpy(ts)[[0, -1]].tolist())
        if ends not in solved:
            x, keys = _pilot(predictor.path, ts[0], key, n_particles, x0_shape)
            target = _reference(predictor, reference, ts[0], ts[-1], x, keys, batch_size, "timer_error")
            solved[ends] = x, keys, target
        x, keys, target = solved[ends]
        out = _endpoints(integrator, predictor, ts.astype(x.dtype), x, keys, batch_size)
        errors.append(float(jnp.sqrt(jnp.mean(_squared_distance(out, target)))))
    return errors if isinstance(timer, Sequence) else errors[0]


# --------------------------------------------------------------------------------------------------
# Checks.


def _check_models(predictor, integrator, owner: str) -> None:
    if not isinstance(predictor, AbstractPredictor):
        raise TypeError(
            f"{owner} predictor must be a dx.Predictor (or any AbstractPredictor); got {predictor!r}."
        )
    if not isinstance(integrator, AbstractIntegrator):
        raise TypeError(f"{owner} integrator must be an integrator, e.g. dx.Heun(); got {integrator!r}.")


def _check_shape_and_batch(x0_shape, batch_size, owner: str):
    if isinstance(x0_shape, int | np.integer) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in x0_shape
    ):
        raise ValueError(f"{owner} x0_shape must be a tuple of positive ints, e.g. (2,); got {x0_shape!r}.")
    if batch_size is not None:
        batch_size = check_int(f"{owner} batch_size", batch_size, hint=" (particles per chunk), or None")
    return tuple(int(d) for d in x0_shape), batch_size


def _check_timer(predictor, integrator, timer, x0_shape, owner: str) -> None:
    """The checks `Denoiser` makes of a grid on this path (it starts from noise, within t_max)."""
    from .._denoiser import Denoiser, check_starts_from_noise  # `_denoiser` imports the timers

    if not isinstance(timer, AbstractTimer):
        raise TypeError(f"{owner} must be a timer (or timers), e.g. dx.UniformTimer(10); got {timer!r}.")
    Denoiser(predictor=predictor, integrator=integrator, timer=timer, x0_shape=x0_shape)
    check_starts_from_noise(predictor.path, timer.times(), owner)


def _init_timers(path, n_steps: int, init_timer) -> list[AbstractTimer]:
    if init_timer is None:
        candidates = [UniformTimer(n_steps, t_max=path.t_max)]
        if n_steps >= 2:
            t_min = float(path.t_from_lambda(LAMBDA_STOP))
            candidates += [
                LogSNRTimer(n_steps, path=path),
                KarrasTimer(n_steps, t_min=t_min, t_max=path.t_max),
            ]
        return candidates
    candidates = list(init_timer) if isinstance(init_timer, Sequence) else [init_timer]
    if not candidates:
        raise ValueError("fit_timer init_timer must be a timer or a non-empty sequence of timers; got [].")
    for timer in candidates:
        if not isinstance(timer, AbstractTimer):
            raise TypeError(f"fit_timer init_timer must be a timer or timers; got {timer!r}.")
        if timer.n_steps != n_steps:
            raise ValueError(
                f"fit_timer init_timer {type(timer).__name__} has n_steps={timer.n_steps}; the fit is "
                f"for n_steps={n_steps}."
            )
    return candidates


def _check_deterministic(integrator, predictor, ts, x, keys, batch_size, out, owner: str) -> None:
    """A `ValueError` if the integrator's end points `out` change with its keys (it draws noise). The
    same shapes as `out`'s run: no new compilation."""
    other = jax.vmap(lambda k: jr.fold_in(k, 1))(keys)
    again = _endpoints(integrator, predictor, ts, x, other, batch_size)
    if not bool(jnp.array_equal(again, out, equal_nan=True)):
        raise ValueError(
            f"{owner}: {type(integrator).__name__} is stochastic (its result depends on its key): a "
            "grid fitted to one draw of its noise means nothing. Use a deterministic integrator "
            "(Euler, Heun, DPMpp2M, DDIM with eta=0, ...)."
        )


# --------------------------------------------------------------------------------------------------
# The computation.


@eqx.filter_jit
def _pilot(path, t0, key, n_particles: int, x0_shape):
    """The initial noise of `Denoiser.generate(key, n_particles)` at `t0`, and the integrator keys."""
    from .._denoiser import particle_keys

    dtype = jnp.result_type(float)

    def one(k):
        k_init, k_run = jr.split(k)
        return (path.prior_std(t0) * jr.normal(k_init, x0_shape, dtype)).astype(dtype), k_run

    return jax.vmap(one)(particle_keys(key, n_particles))


def _reference(predictor, reference, t0, t_end, x, keys, batch_size, owner: str):
    """The reference solve's end points from the particles `x` at `t0`."""
    path, dtype, user_given = predictor.path, x.dtype, reference is not None
    if isinstance(reference, tuple):
        if len(reference) != 2 or not isinstance(reference[0], AbstractIntegrator):
            raise TypeError(
                f"{owner} reference must be an integrator or (integrator, timer); got {reference!r}."
            )
        integrator, timer = reference
        if not isinstance(timer, AbstractTimer):
            raise TypeError(f"{owner} reference (integrator, timer): {timer!r} is not a timer.")
        ts = timer.times().astype(dtype)
        ends = as_numpy(ts)[[0, -1]]
        if not np.allclose(ends, [float(t0), float(t_end)], rtol=1e-12, atol=0):
            raise ValueError(
                f"{owner} reference grid runs from {ends[0]} to {ends[1]}; the grid fitted or measured "
                f"runs from {float(t0)} to {float(t_end)}: give a reference grid with the same ends."
            )
    else:
        if reference is None:
            tight = 1e-9 if dtype == jnp.float64 else 1e-6
            reference = DiffraxAdaptive(rtol=tight, atol=tight)
        elif not isinstance(reference, DiffraxAdaptive):
            raise TypeError(
                f"{owner} reference must be a DiffraxAdaptive (adaptive steps between the ends) or a pair "
                f"(integrator, timer) (a fixed-step integrator and its grid); got {reference!r}."
            )
        integrator = reference
        if float(path.sigma(t_end)) == 0:
            t_star = float(path.t_from_lambda(REFERENCE_LAMBDA))
            if not t_end < t_star < t0:
                t_star = 0.5 * float(t0)  # an unusual range: any interior point keeps the data step last
            ts = jnp.asarray([t0, t_star, t_end], dtype)
        else:
            ts = jnp.asarray([t0, t_end], dtype)
    out = _endpoints(integrator, predictor, ts, x, keys, batch_size)
    if user_given:  # the default is deterministic
        _check_deterministic(integrator, predictor, ts, x, keys, batch_size, out, f"{owner} reference")
    if not bool(jnp.all(jnp.isfinite(out))):
        raise FloatingPointError(
            f"{owner}: the reference solve ({type(integrator).__name__}) gave non-finite end points; "
            "check the predictor, or pass another reference."
        )
    return out


@eqx.filter_jit
def _endpoints(integrator, predictor, ts, x, keys, batch_size):
    """`integrate` of every particle: vmapped, or in rematerialised chunks of `batch_size`."""
    from .._denoiser import integrate

    def one(args):
        return integrate(integrator, predictor, ts, *args)[0]

    if batch_size is None:
        return jax.vmap(one)((x, keys))
    return lax.map(jax.checkpoint(one), (x, keys), batch_size=batch_size)


def _squared_distance(a, b) -> Float[Array, " n"]:
    return jnp.sum((a - b).reshape(a.shape[0], -1) ** 2, axis=1)


def _grid(theta, t0, t_end) -> Grid:
    r"""$t_0 > \dots > t_N$ with steps $(t_0 - t_N) \operatorname{softmax}(\theta)$, ends exact."""
    inner = t0 + (t_end - t0) * jnp.cumsum(jax.nn.softmax(theta))[:-1]
    return jnp.concatenate([jnp.stack([t0]), inner, jnp.stack([t_end])]).astype(theta.dtype)


def _loss(theta, integrator, predictor, x, keys, target, t0, t_end, batch_size):
    out = _endpoints(integrator, predictor, _grid(theta, t0, t_end), x, keys, batch_size)
    return jnp.mean(_squared_distance(out, target))


def _lbfgs():
    return optax.lbfgs()


@eqx.filter_jit
def _lbfgs_step(theta, state, *args):
    """One L-BFGS iteration from `theta`: the new parameters, the optimiser state and the loss there."""

    def loss(theta):
        return _loss(theta, *args)

    value, grad = optax.value_and_grad_from_state(loss)(theta, state=state)
    updates, state = _lbfgs().update(grad, state, theta, value=value, grad=grad, value_fn=loss)
    theta = optax.apply_updates(theta, updates)
    return theta, state, optax.tree_utils.tree_get(state, "value")


def _progress_bar(total: int):
    try:
        import tqdm
    except ImportError as e:
        raise ImportError("fit_timer(progress=True) needs tqdm: pip install tqdm.") from e
    return tqdm.tqdm(total=total, unit="iter", desc="fit_timer")
