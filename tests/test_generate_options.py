"""Denoiser.generate's options: chunked (batch_size), multi-device (sharding), callbacks and progress;
none of them changes the samples."""

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import circle_mixture
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import diffuse_eqx as dx
from diffuse_eqx._denoiser import _generate


GMM = circle_mixture()
FLOW = dx.Flow()
N_STEPS = 6
N_DEVICES = 4
# Chunking, sharding and callbacks only regroup per-particle computations: the samples differ from
# the plain run at most by the float64 round-off of batched reductions in the network (observed
# <= 5e-16); 1e-12 leaves that round-off room over the N_STEPS steps and nothing else.
TOL = 1e-12


def denoiser(integrator, network=None, n_steps=N_STEPS):
    network = network if network is not None else GMM.network(FLOW)
    return dx.Denoiser(dx.Predictor(network, FLOW), integrator, dx.UniformTimer(n_steps), (2,))


def batch_recording_network(batches):
    """The exact velocity; records on the host how many particles each evaluation receives."""
    velocity = GMM.network(FLOW)

    def record(x):
        batches.append(math.prod(x.shape[:-1]))
        return np.zeros(x.shape[:-1], x.dtype)

    def network(x, t):
        zero = jax.pure_callback(record, jax.ShapeDtypeStruct((), x.dtype), x, vmap_method="broadcast_all")
        return velocity(x, t) + zero

    return network


def assert_same_output(out, ref):
    np.testing.assert_allclose(out.samples, ref.samples, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.history, ref.history, rtol=0, atol=TOL)
    assert int(out.nfe) == int(ref.nfe)


@pytest.mark.parametrize(
    "integrator, batch_size",
    # DDIM(eta) draws fresh noise (per-particle keys through lax.map), DPM++(2M) carries memory
    [(dx.DDIM(eta=0.7), 1), (dx.DDIM(eta=0.7), 5), (dx.DPMpp2M(), 5), (dx.DPMpp2M(), 100)],
    ids=repr,
)
def test_chunked_generation_matches_plain(integrator, batch_size):
    n, key = 12, jr.key(4)
    ref = denoiser(integrator).generate(key, n, keep_history=True)
    batches = []
    out = denoiser(integrator, batch_recording_network(batches)).generate(
        key, n, keep_history=True, batch_size=batch_size
    )
    assert_same_output(out, ref)
    # the network never sees more than batch_size particles at once: 12 = 2 x 5 + 2 for k = 5
    chunks = [min(batch_size, n)] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert sorted(set(batches)) == sorted(set(chunks))
    assert len(batches) == len(chunks) * int(ref.nfe)


def test_callback_sees_every_step_of_the_whole_batch():
    den = denoiser(dx.Euler(), n_steps=8)
    ts = np.asarray(den.timer.times())
    ref = den.generate(jr.key(1), 5, keep_history=True)
    calls = []
    out = den.generate(jr.key(1), 5, keep_history=True, callback=lambda *args: calls.append(args))
    np.testing.assert_array_equal(out.samples, ref.samples)  # bitwise: the callback only observes
    np.testing.assert_array_equal(out.history, ref.history)
    assert [c[0] for c in calls] == list(range(8))
    np.testing.assert_array_equal([c[1] for c in calls], ts[1:])
    predictor = den.predictor
    for step, t, x, x0 in calls:
        assert isinstance(step, int) and isinstance(t, float)
        assert x.shape == x0.shape == (5, 2)
        np.testing.assert_array_equal(x, ref.history[step + 1])
        assert np.all(np.isfinite(x0))
        # Euler evaluates once per step, at (history[step], ts[step]): x0 is that exact posterior mean
        expected = jax.vmap(lambda x: predictor.x0(x, ts[step]))(ref.history[step])
        np.testing.assert_allclose(x0, expected, rtol=0, atol=1e-12)
    # the last Euler step of a Flow to t = 0 lands on its own data estimate
    np.testing.assert_allclose(calls[-1][2], calls[-1][3], rtol=0, atol=1e-12)


def test_progress_bar_and_same_samples(capsys):
    # DDIM(eta): the x0 estimate is otherwise dead code that XLA would fuse (and round) differently
    den = denoiser(dx.DDIM(eta=0.7))
    ref = den.generate(jr.key(2), 7, keep_history=True)
    out = den.generate(jr.key(2), 7, keep_history=True, progress=True)
    np.testing.assert_array_equal(out.samples, ref.samples)  # bitwise
    np.testing.assert_array_equal(out.history, ref.history)
    assert f"{N_STEPS}/{N_STEPS}" in capsys.readouterr().err


def test_host_callback_compiled_only_when_requested_and_without_retrace():
    traces = []

    def network(x, t):
        traces.append(1)  # runs only while tracing
        return GMM.velocity(FLOW, x, t)

    den = denoiser(dx.Euler(), network)
    assert "callback" not in _generate.lower(den, jr.key(0), None, None, 4, False, None, None).as_text()
    assert "callback" in _generate.lower(den, jr.key(0), jnp.int32(0), None, 4, False, None, None).as_text()
    counts = []
    den.generate(jr.key(0), 4, callback=lambda *args: counts.append(1))
    n_traces = len(traces)
    den.generate(jr.key(1), 4, callback=lambda *args: counts.append(2), progress=True)  # a new callback
    den.generate(jr.key(1), 4, progress=True)
    assert len(traces) == n_traces
    assert counts == [1] * N_STEPS + [2] * N_STEPS


def test_bad_arguments_raise_clear_errors():
    den = denoiser(dx.Euler())
    key = jr.key(0)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size"):
            den.generate(key, 4, batch_size=bad)
    for bad in (2.5, True, "4"):
        with pytest.raises(TypeError, match="batch_size"):
            den.generate(key, 4, batch_size=bad)
    for bad in ("particles", PartitionSpec("particles"), jax.devices()[0]):
        with pytest.raises(TypeError, match="sharding"):
            den.generate(key, 4, sharding=bad)
    with pytest.raises(TypeError, match="callback"):
        den.generate(key, 4, callback=3)


@pytest.mark.slow
def test_sharded_generation_on_4_devices():
    """XLA_FLAGS must be set before JAX starts: in a normal run this test reruns itself in a fresh
    interpreter with 4 virtual CPU devices."""
    if jax.device_count() != N_DEVICES:
        if os.environ.get("DIFFUSE_EQX_SHARDING_CHILD"):
            pytest.fail(f"the child process has {jax.device_count()} devices, not {N_DEVICES}")
        flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
        env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", DIFFUSE_EQX_SHARDING_CHILD="1")
        env.pop("PYTEST_ADDOPTS", None)  # e.g. -m "not slow" would deselect the child's only test
        child = subprocess.run(
            [sys.executable, "-m", "pytest", f"{__file__}::{test_sharded_generation_on_4_devices.__name__}"]
            + ["-q", "-x"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(__file__).parents[1],
        )
        assert child.returncode == 0 and "1 passed" in child.stdout, child.stdout + child.stderr
        return

    den = denoiser(dx.DDIM(eta=0.7))
    key, n = jr.key(7), 12
    ref = den.generate(key, n, keep_history=True)
    mesh = Mesh(np.array(jax.devices()), ("particles",))
    by_spec = NamedSharding(mesh, PartitionSpec("particles"))
    for kwargs in (dict(sharding=mesh), dict(sharding=by_spec), dict(sharding=mesh, batch_size=2)):
        out = den.generate(key, n, keep_history=True, **kwargs)
        assert_same_output(out, ref)
        assert out.samples.sharding.is_equivalent_to(by_spec, 2)
        assert len(out.samples.sharding.device_set) == N_DEVICES
        assert [s.data.shape for s in out.samples.addressable_shards] == [(n // N_DEVICES, 2)] * N_DEVICES
        history = NamedSharding(mesh, PartitionSpec(None, "particles"))
        assert out.history.sharding.is_equivalent_to(history, 3)

    # the callback sees the whole batch, gathered, and changes nothing
    calls = []
    out = den.generate(key, n, keep_history=True, sharding=mesh, callback=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == list(range(N_STEPS))
    sharded = den.generate(key, n, keep_history=True, sharding=mesh)
    np.testing.assert_array_equal(out.samples, sharded.samples)
    for step, _, x, x0 in calls:
        np.testing.assert_array_equal(x, sharded.history[step + 1])
        assert x0.shape == (n, 2) and np.all(np.isfinite(x0))

    # a 2-D mesh, with jax.make_mesh's Explicit axes: the particles are sharded over its first axis
    mesh_2d = jax.make_mesh((2, 2), ("particles", "model"))
    assert mesh_2d.are_all_axes_explicit
    out = den.generate(key, n, keep_history=True, sharding=mesh_2d)
    assert_same_output(out, ref)
    assert out.samples.sharding.is_equivalent_to(NamedSharding(mesh_2d, PartitionSpec("particles")), 2)

    with pytest.raises(ValueError, match="multiple of 4"):
        den.generate(key, 10, sharding=mesh)
    with pytest.raises(ValueError, match="particle axis only"):
        den.generate(key, 12, sharding=NamedSharding(mesh_2d, PartitionSpec("particles", "model")))
