import dataclasses
import functools
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, PartitionSpec as P, Sharding
from jaxtyping import Array, Float, Int, Shaped

from ._check import as_numpy, check_int, concrete
from ._custom_types import Grid, Key, Particle
from ._integrator import AbstractIntegrator, IntegratorState, Shared
from ._predictor import AbstractPredictor, Predictor
from ._timer import AbstractTimer


class DenoiserOutput(eqx.Module):
    """What [`Denoiser.generate`][diffuse_eqx.Denoiser.generate] returns.

    - `samples`: the particles at the end of the grid, shape `(n_particles, *x0_shape)`.
    - `nfe`: network evaluations per particle, counted step by step as the integrator made them.
    - `history`: `None`, or the particles at every grid time, shape
      `(n_steps + 1, n_particles, *x0_shape)`; `history[0]` is the initial noise and
      `history[-1]` the samples.
    """

    samples: Float[Array, " n_particles *shape"]
    nfe: Int[Array, ""]
    history: Float[Array, " n_steps_plus_one n_particles *shape"] | None = None


def initial_state(
    integrator: AbstractIntegrator, predictor: AbstractPredictor, ts: Grid, x: Particle, key: Key
) -> IntegratorState:
    """The integrator's state before the first step from `x`, with the predictor's initial state, no
    evaluations counted and no data estimate yet (what `integrate`, `generate` and `invert` start
    from)."""
    state = integrator.init(predictor, x, key, ts)
    return state.replace(guidance=predictor.init(x), nfe=0, x0=jnp.zeros_like(x))


def integrate(
    integrator: AbstractIntegrator,
    predictor: AbstractPredictor,
    ts: Grid,
    x: Particle,
    key: Key,
    keep_history: bool = False,
) -> tuple[Particle, Int[Array, ""], Float[Array, " n_steps_plus_one *shape"] | None]:
    """Integrates one particle `x` over the grid `ts` with `lax.scan` (compile time does not grow
    with the number of steps).

    **Returns:** the final particle, the network evaluations made, and the particle at every grid
    time if `keep_history` (else `None`).
    """
    state = initial_state(integrator, predictor, ts, x, key)

    def body(state, t_pair):
        state = integrator.step(predictor, state, t_pair[0], t_pair[1])
        return state, state.position if keep_history else None

    state, positions = lax.scan(body, state, (ts[:-1], ts[1:]))
    history = jnp.concatenate([x[None], positions]) if keep_history else None
    return state.position, state.nfe, history


def particle_keys(key: Key, n_particles: int) -> Shaped[Array, " n_particles *key"]:
    """One key per particle, `fold_in(key, i)`: particle i gets the same key whatever
    `n_particles` is."""
    return jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(n_particles))


class Denoiser(eqx.Module):
    r"""Draws samples: initial noise at $t_0 = t_{\max}$, then the integrator over the timer's grid.

    Each particle gets its own key, `fold_in(key, i)`, split once into the key of its initial
    noise $x_{t_0} = \sigma(t_0)\, z$ and the key its integrator may use; particle $i$ is the same
    whether drawn alone or among 10 000. The grid is a `lax.scan` and particles are `vmap`ped.
    `generate` is jit-compiled once per configuration.

    **Arguments:**

    - `predictor`: the [`Predictor`][diffuse_eqx.Predictor] (network + path + parameterization), or
      any [`AbstractPredictor`][diffuse_eqx.AbstractPredictor] (guidance, posterior samplers).
    - `integrator`: any [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator].
    - `timer`: any [`AbstractTimer`][diffuse_eqx.AbstractTimer]; it alone holds `n_steps`.
    - `x0_shape`: the shape of one sample.
    - `dtype`: the dtype of the particles (default: JAX's default float), real floating point.
      A low-precision dtype (`bfloat16`, `float16`) is the network's business: the particles and
      the integrator's arithmetic stay in float32 (a bf16 network casts its input down, and
      [`Predictor`][diffuse_eqx.Predictor] casts its output up), as rounding every step of the
      state to bf16 costs accuracy for no speed (`benchmarks/bf16_sampling.py`).

    Drawn from noise, the grid must start at the path's `t_max`, or where the signal-to-noise
    ratio $\alpha(t_0)/\sigma(t_0)$ is at most `SNR_TOLERANCE` (2e-2): the initial particles
    $\sigma(t_0) z$ leave out the data term $\alpha(t_0) x_0$, which must be negligible there.
    Given initial particles (`generate(..., x_init=...)`: SDEdit, an inverted image), the grid may
    start anywhere in $[0, t_{\max}]$.
    """

    predictor: AbstractPredictor
    integrator: AbstractIntegrator
    timer: AbstractTimer
    x0_shape: tuple[int, ...] = eqx.field(static=True, converter=tuple)
    dtype: Any = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not all(isinstance(d, int | np.integer) and d > 0 for d in self.x0_shape):
            raise ValueError(f"x0_shape must be a tuple of positive ints; got {self.x0_shape}.")
        if self.dtype is not None and not jnp.issubdtype(self.dtype, jnp.floating):
            raise TypeError(f"Denoiser dtype must be a real floating-point dtype; got {self.dtype}.")
        ts = self.timer.times()
        if not concrete(ts):
            return
        path, t0 = self.predictor.path, as_numpy(ts)[0]
        if concrete(path.t_max) and t0 > float(path.t_max) * (1 + 1e-6):
            raise ValueError(
                f"The timer starts at t={t0}, beyond the path's t_max={path.t_max}: the grid must "
                f"lie in [0, t_max] of {type(path).__name__}."
            )
        prediction = self.predictor.prediction if isinstance(self.predictor, Predictor) else None
        if prediction in ("noise", "score") and float(path.alpha(t0)) == 0:
            raise ValueError(
                f"The timer starts at t={t0}, where alpha(t) = 0: a {prediction!r} "
                "network carries no information about x0 there. Start the grid below t_max, or "
                "use a velocity or x0 network."
            )

    def generate(
        self,
        key: Key,
        n_particles: int,
        keep_history: bool = False,
        *,
        batch_size: int | None = None,
        sharding: Sharding | Mesh | None = None,
        callback: Callable[[int, float, np.ndarray, np.ndarray], object] | None = None,
        progress: bool = False,
        check_finite: bool = False,
        x_init: Float[Array, " n_particles *shape"] | None = None,
    ) -> DenoiserOutput:
        r"""Draws `n_particles` samples: a `lax.scan` over the grid whose body steps the whole batch of
        particles. None of `batch_size`, `sharding`, `callback` and `progress` changes the samples:
        particle $i$ is computed from its own key, `fold_in(key, i)`, by the same per-particle program
        (details: [Concepts → Batches, devices and callbacks][generate-options]).

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n_particles`: how many samples.
        - `keep_history`: also return the particles at every grid time.
        - `batch_size`: `None` (default) steps all particles at once (`vmap`); a positive int steps
          them in chunks of at most `batch_size` particles (`jax.lax.map`), per device with
          `sharding`, so that one network evaluation holds `batch_size` particles.
        - `sharding`: `None` (default: one device), a `jax.sharding.NamedSharding` that shards the
          first (particle) axis only, e.g. `NamedSharding(mesh, PartitionSpec("particles"))`, or a
          `jax.sharding.Mesh`, whose first axis then shards the particles; `samples` and `history`
          come back sharded the same way. `n_particles` must be a multiple of the number of shards.
        - `callback`: `None` (default), or `callback(step, t, x, x0)`, called on the host after each
          step with the step index, the time reached `t = ts[step + 1]`, the particles and their
          latest data estimate ([`IntegratorState.x0`][diffuse_eqx.IntegratorState]), as NumPy arrays
          of shape `(n_particles, *x0_shape)` gathered from all devices.
        - `progress`: show a `tqdm` progress bar advanced once per step.
        - `check_finite`: raise a `FloatingPointError` naming the first step, its times and a
          particle at which a particle became NaN or infinite (one reduction per step; when off,
          the default, nothing is compiled in). Under an outer `jit` the error is an
          `eqx.error_if` run-time error without the step.
        - `x_init`: `None` (default: the prior's noise $\sigma(t_0) z$ at the grid's first time), or
          the particles at the grid's first time $t_0$, shape `(n_particles, *x0_shape)`, e.g.
          [`noise_to`][diffuse_eqx.noise_to]`(path, x0, t0, key)` (SDEdit) or the latents of
          [`invert`][diffuse_eqx.invert]; the grid may then start below `t_max`. The particles'
          keys are those of a run from noise: a stochastic integrator draws the same noise.

        **Returns:** a [`DenoiserOutput`][diffuse_eqx.DenoiserOutput].
        """
        n_particles = check_int("n_particles", n_particles)
        if batch_size is not None:
            hint = " (particles per chunk), or None (all at once)"
            batch_size = check_int("batch_size", batch_size, hint=hint)
        sharding, n_shards = _particle_sharding(sharding)
        if n_particles % n_shards:
            below = n_particles // n_shards * n_shards
            raise ValueError(
                f"n_particles={n_particles} is not a multiple of the {n_shards} shards of `sharding`: "
                f"use a multiple of {n_shards} (e.g. {below or n_shards} or {below + n_shards})."
            )
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function callback(step, t, x, x0); got {callback!r}.")
        if x_init is None:
            check_starts_from_noise(self.predictor.path, self.timer.times())
        else:
            x_init = _checked_x_init(x_init, n_particles, self.x0_shape, self.dtype)
        config = (n_particles, bool(keep_history), batch_size, sharding, bool(check_finite))
        if callback is None and not progress:
            return _checked(self, x_init is None, *_generate(self, key, None, x_init, *config))

        bar = _progress_bar(int(self.timer.n_steps)) if progress else None

        def on_step(step, t, x, x0):
            if callback is not None:
                callback(step, t, x, x0)
            if bar is not None:
                bar.update(1)

        call_id = next(_call_ids) % 2**31
        _host_calls[call_id] = _Gather(on_step, n_shards)
        try:
            call = jnp.asarray(call_id, jnp.int32)
            out = jax.block_until_ready(_generate(self, key, call, x_init, *config))
            jax.effects_barrier()  # every host callback of this call has run
        finally:
            del _host_calls[call_id]
            if bar is not None:
                bar.close()
        return _checked(self, x_init is None, *out)


def check_starts_from_noise(path, ts: Grid, owner: str = "Denoiser") -> None:
    """A `ValueError` if a concrete grid `ts` starts below the path's `t_max` where the data term of
    the initial particles would not be negligible (see `SNR_TOLERANCE`); a traced grid is checked
    at run time."""
    if not concrete(ts) or not concrete(path.t_max):
        return
    t0 = as_numpy(ts)[0]
    if not _starts_from_noise(path, jnp.asarray(t0)):
        snr = float(path.alpha(t0) / path.sigma(t0))
        raise ValueError(
            f"{owner}: the timer starts at t0={t0}, below the path's t_max={path.t_max}, where the "
            f"signal-to-noise ratio alpha(t0)/sigma(t0) = {snr:.3g} exceeds SNR_TOLERANCE = "
            f"{SNR_TOLERANCE:g}: pure noise sigma(t0) z would lack the data term alpha(t0) x0. "
            f"Start the grid at t_max={path.t_max}, or pass the initial particles "
            "(generate(..., x_init=dx.noise_to(path, x0, t0, key)))."
        )


#: The largest signal-to-noise ratio alpha(t0)/sigma(t0) at which a grid may start from pure noise
#: below the path's t_max (t0 = 0.99 on `Flow`: 0.0101; EDM at sigma = 80: 0.0125).
SNR_TOLERANCE = 2e-2


def _starts_from_noise(path, t0) -> Array:
    """True where a grid starting at `t0` may start from pure noise: `t0` is the path's `t_max`
    (EDM's sigma_max = 80 included), or the signal-to-noise ratio there is at most `SNR_TOLERANCE`."""
    at_t_max = t0 >= path.t_max * (1 - 1e-6)
    return at_t_max | (path.alpha(t0) <= SNR_TOLERANCE * path.sigma(t0))


def _checked_x_init(x_init, n_particles: int, x0_shape: tuple[int, ...], dtype) -> Array:
    """`x_init` as an array of shape `(n_particles, *x0_shape)` of the particles' dtype."""
    shape = getattr(x_init, "shape", None)
    if shape is None or tuple(shape) != (n_particles, *x0_shape):
        raise ValueError(
            f"generate: x_init must have shape (n_particles, *x0_shape) = {(n_particles, *x0_shape)}; "
            f"got {shape if shape is not None else type(x_init).__name__}."
        )
    dtype = jnp.promote_types(dtype or jnp.result_type(float), jnp.float32)
    x_init = jnp.asarray(x_init)
    if not jnp.issubdtype(x_init.dtype, jnp.floating):
        raise TypeError(f"generate: x_init must be real floating point; got dtype {x_init.dtype}.")
    if concrete(x_init) and not bool(jnp.all(jnp.isfinite(x_init))):
        raise ValueError("generate: x_init has NaN or infinite values.")
    return x_init.astype(dtype)


def _checked(
    denoiser: Denoiser,
    from_noise: bool,
    out: DenoiserOutput,
    x0,
    nfe: Int[Array, " n_shards"],
    bad: Int[Array, "n_shards 2"] | None,
) -> DenoiserOutput:
    """The `DenoiserOutput`, after the run-time check of a traced grid and `check_finite`'s
    verdict. `_generate` returns its per-shard reductions (`nfe`, and `bad`: `None` if not checked,
    else the first (step, particle of the shard) at which a particle became non-finite, (-1, -1) if
    none), combined here, after the run, so that no reduction inside it crosses devices."""
    del x0
    out = _checked_grid(
        denoiser.predictor.path,
        denoiser.timer.times(),
        dataclasses.replace(out, nfe=jnp.max(nfe)),
        from_noise=from_noise,
    )
    if bad is None:
        return out
    if not concrete(bad):
        return eqx.error_if(
            out, jnp.any(bad[:, 0] >= 0), "generate(check_finite=True): a particle became non-finite."
        )
    bad = as_numpy(bad)
    per_shard = out.samples.shape[0] // bad.shape[0]
    found = [(int(b[0]), shard * per_shard + int(b[1])) for shard, b in enumerate(bad) if b[0] >= 0]
    if not found:
        return out
    step, particle = min(found)
    ts = as_numpy(denoiser.timer.times())
    where = "in the initial noise" if step == 0 else f"at step {step} (t = {ts[step - 1]:g} -> {ts[step]:g})"
    raise FloatingPointError(
        f"generate(check_finite=True): particle {particle} became non-finite (NaN or inf) {where} of "
        f"{len(ts) - 1}. Check the network's output there (e.g. dx.Predictor(...).predict(x, t))."
    )


def _progress_bar(total: int):
    try:
        import tqdm
    except ImportError as e:  # tqdm comes with the [flux] extra, not with the core install
        raise ImportError("generate(progress=True) needs tqdm: pip install tqdm.") from e
    return tqdm.tqdm(total=total, unit="step", desc="generate")


def _particle_sharding(sharding) -> tuple[NamedSharding | None, int]:
    """The `NamedSharding` of the particle axis and its number of shards."""
    if sharding is None:
        return None, 1
    if isinstance(sharding, Mesh):
        sharding = NamedSharding(sharding, PartitionSpec(sharding.axis_names[0]))
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            "sharding must be None, a jax.sharding.Mesh or a jax.sharding.NamedSharding such as "
            f"NamedSharding(mesh, PartitionSpec('particles')); got {sharding!r}."
        )
    spec = tuple(sharding.spec)
    if any(axis is not None for axis in spec[1:]):
        raise ValueError(
            f"sharding must shard the particle axis only (the first); got PartitionSpec{spec}. "
            f"Use PartitionSpec({spec[0]!r})."
        )
    axes = () if not spec or spec[0] is None else spec[0]
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    mesh = sharding.mesh
    if not mesh.are_all_axes_auto:
        # Explicit axes (`jax.make_mesh`'s default) would ask every op of the network for a
        # sharding rule; the particles are independent, so automatic propagation is exact
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
        sharding = NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind)
    return sharding, math.prod(mesh.shape[a] for a in axes)


# Host callbacks of the calls in progress, by call id. The id is a traced argument of `_generate`,
# so a new callback (a new lambda, a new progress bar) does not recompile the program.
_host_calls: dict[int, Callable] = {}
_call_ids = itertools.count()


class _Gather:
    """Calls `fn(step, t, x, x0)` with the whole batch once every shard has reported `step` (each
    device calls back with its own particles, in its own thread)."""

    def __init__(self, fn: Callable, n_shards: int):
        self.fn, self.n_shards, self.lock = fn, n_shards, threading.Lock()
        self.pending: dict[int, dict[int, tuple]] = {}
        self.done = -1  # steps are completed in order: each device reports its steps in order

    def __call__(self, shard: int, step: int, t: float, x: np.ndarray, x0: np.ndarray) -> None:
        with self.lock:
            if step <= self.done:  # a replica's copy (a mesh axis that does not shard particles)
                return
            parts = self.pending.setdefault(step, {})
            parts[shard] = (x, x0)
            if len(parts) < self.n_shards:
                return
            del self.pending[step]
            self.done = step
            x, x0 = (np.concatenate([parts[i][k] for i in range(self.n_shards)]) for k in (0, 1))
            self.fn(step, t, x, x0)


def _on_step(call_id, shard, step, t, x, x0) -> None:
    fn = _host_calls.get(int(call_id))
    if fn is not None:
        fn(int(shard), int(step), float(t), np.asarray(x), np.asarray(x0))


@eqx.filter_jit
def _generate(
    denoiser: Denoiser,
    key: Key,
    call_id: Int[Array, ""] | None,
    x_init: Float[Array, " n_particles *shape"] | None,
    n_particles: int,
    keep_history: bool,
    batch_size: int | None,
    sharding: NamedSharding | None,
    check_finite: bool = False,
) -> tuple[
    DenoiserOutput,
    Float[Array, " n_particles *shape"],
    Int[Array, " n_shards"],
    Int[Array, "n_shards 2"] | None,
]:
    """The particles of `fold_in(key, i)`, i < n_particles. With `sharding`, the particles are
    split into one group per shard, `_run_shard` is vmapped over the groups and XLA's partitioner
    (GSPMD) puts each group on its device: every reduction (the NFE, the first non-finite particle)
    stays within a group, so particle i is computed as it is on one device; the groups' `nfe` and
    `bad` are combined by `_checked`, after the run.

    (Not `jax.shard_map`: inside it every traced value's type carries the manual mesh, which
    lineax's structure checks refuse, lineax#185, so no linear solve would run.)"""
    keys = particle_keys(key, n_particles)
    run = functools.partial(_run_shard, denoiser, call_id, keep_history, batch_size, check_finite)
    if sharding is None:
        samples, x0, nfe, bad, history = run(keys, x_init, 0)
    else:
        groups = _particle_sharding(sharding)[1]

        def place(tree, *spec_prefix):
            where = NamedSharding(sharding.mesh, P(*spec_prefix, *sharding.spec))
            return jax.tree.map(lambda a: lax.with_sharding_constraint(a, where), tree)

        keys = place(keys.reshape(groups, -1, *keys.shape[1:]))
        if x_init is not None:
            x_init = place(x_init.reshape(groups, -1, *x_init.shape[1:]))
        samples, x0, nfe, bad, history = jax.vmap(run, out_axes=(0, 0, 0, 0, 1))(
            keys, x_init, jnp.arange(groups)
        )
        samples, x0 = (a.reshape(n_particles, *a.shape[2:]) for a in (samples, x0))
        nfe, bad = nfe.reshape(groups), bad.reshape(groups, 2)
        history = history.reshape(history.shape[0], n_particles, *history.shape[3:])
        samples, x0, history = place(samples), place(x0), place(history, None)
    out = DenoiserOutput(samples=samples, nfe=nfe[0], history=history if keep_history else None)
    # the last x0 estimate is returned (and dropped by `generate`) so that XLA computes and carries
    # x0 at every step with or without a callback reading it: the same fusions, the same rounding
    return out, x0, nfe, bad if check_finite else None


def _run_shard(denoiser, call_id, keep_history, batch_size, check_finite, keys, x_given, shard):
    """One device's particles (all of them without sharding): init, then a `lax.scan` over the
    grid, from the prior's noise or from the particles `x_given`. Returns the samples, the last
    x0, the (1,) max NFE, the (1, 2) first non-finite (step, particle) and the history (or an empty
    placeholder)."""
    ts = denoiser.timer.times()
    dtype = jnp.promote_types(denoiser.dtype or jnp.result_type(float), jnp.float32)
    std = denoiser.predictor.path.prior_std(ts[0])
    integrator, predictor = denoiser.integrator, denoiser.predictor

    def batched(fn, tree):
        """`fn` (one particle) over the particles of `tree`: vmap, or chunks of `batch_size`.
        `Shared` values, in and out, stay one unbatched copy."""
        shared, tree = eqx.partition(tree, _is_shared, is_leaf=_is_shared)

        def one(particle):
            out = fn(eqx.combine(particle, shared, is_leaf=_is_shared))
            return eqx.partition(out, lambda a: not _is_shared(a), is_leaf=_is_shared)

        if batch_size is None:
            tree, shared_out = jax.vmap(one, out_axes=(0, None))(tree)
        else:
            tree, shared_out = lax.map(one, tree, batch_size=batch_size)
            shared_out = jax.tree.map(lambda a: a[0], shared_out)  # lax.map stacks its copies
        return eqx.combine(tree, shared_out, is_leaf=_is_shared)

    def init(k_and_x):
        k, x = k_and_x
        k_init, k_run = jr.split(k)
        if x is None:
            x = (std * jr.normal(k_init, denoiser.x0_shape, dtype)).astype(dtype)
        return initial_state(integrator, predictor, ts, x, k_run)

    state = batched(init, (keys, x_given))
    x_init = state.position
    bad = _first_non_finite(jnp.full((2,), -1, jnp.int32), 0, x_init)

    def body(carry, xs):
        state, bad = carry
        i, t, t_next = xs
        state = batched(lambda s: integrator.step(predictor, s, t, t_next), state)
        if check_finite:
            bad = _first_non_finite(bad, i + 1, state.position)
        # fences the step off from what reads it, so that a callback cannot change how XLA fuses
        # (and rounds) the step: the samples are the same, bit for bit, with or without one
        state = lax.optimization_barrier(state)
        if call_id is not None:
            jax.debug.callback(_on_step, call_id, shard, i, t_next, state.position, state.x0)
        return (state, bad), state.position if keep_history else None

    n_steps = ts.shape[0] - 1
    (state, bad), positions = lax.scan(body, (state, bad), (jnp.arange(n_steps), ts[:-1], ts[1:]))
    history = jnp.concatenate([x_init[None], positions]) if keep_history else jnp.zeros((1, keys.shape[0]))
    return state.position, state.x0, jnp.max(state.nfe)[None], bad[None], history


def _is_shared(node) -> bool:
    return isinstance(node, Shared)


def _first_non_finite(bad: Int[Array, " 2"], step, x: Float[Array, " n *shape"]) -> Int[Array, " 2"]:
    """`bad` if already set, else (step, first non-finite particle) if there is one."""
    finite = jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
    now = jnp.stack([jnp.asarray(step, jnp.int32), jnp.argmin(finite).astype(jnp.int32)])
    return jnp.where((bad[0] < 0) & ~jnp.all(finite), now, bad)


def _checked_grid(path, ts: Grid, out: DenoiserOutput, from_noise: bool = True) -> DenoiserOutput:
    """`out` behind a run-time check of a traced grid (a timer built under `jit`/`vmap`): finite,
    strictly decreasing, in [0, t_max], starting from noise (see `SNR_TOLERANCE`) if `from_noise`.
    A concrete grid was checked when the timer and the Denoiser were built (and by `generate`)."""
    if concrete(ts):
        return out
    ok = jnp.all(jnp.isfinite(ts)) & jnp.all(ts[1:] < ts[:-1]) & (ts[-1] >= 0)
    out = eqx.error_if(out, ~ok, "Denoiser: the grid must be finite, strictly decreasing and >= 0.")
    ok = ts[0] <= path.t_max * (1 + 1e-6)
    if from_noise:
        ok = ok & _starts_from_noise(path, ts[0])
    return eqx.error_if(
        out, ~ok, "Denoiser: the grid must start at the path's t_max, or where alpha/sigma <= SNR_TOLERANCE."
    )
