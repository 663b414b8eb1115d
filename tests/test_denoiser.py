import jax.numpy as jnp
import jax.random as jr
import jaxtyping
import numpy as np
import pytest
from helpers import circle_mixture

import diffuse_eqx as dx


GMM = circle_mixture()
FLOW = dx.Flow()


def denoiser(integrator=None, timer=None, prediction="velocity", network=None, path=FLOW):
    network = network if network is not None else GMM.network(path, prediction)
    return dx.Denoiser(
        predictor=dx.Predictor(network, path, prediction),
        integrator=integrator if integrator is not None else dx.Heun(),
        timer=timer if timer is not None else dx.UniformTimer(8),
        x0_shape=(2,),
    )


@pytest.mark.parametrize("integrator", [dx.Euler(), dx.DDIM(eta=0.7), dx.DPMpp2M()], ids=repr)
def test_particle_i_does_not_depend_on_n_particles(integrator):
    den = denoiser(integrator)
    key = jr.PRNGKey(3)
    one = den.generate(key, 1).samples
    many = den.generate(key, 64).samples
    more = den.generate(key, 100).samples
    np.testing.assert_allclose(many[0], one[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(many, more[:64], rtol=1e-13, atol=1e-14)
    assert np.unique(np.asarray(many[:, 0])).size == 64  # distinct particles


def test_generate_compiles_once():
    traces = []

    def network(x, t):
        traces.append(1)  # Python side effect: runs only while tracing
        return GMM.velocity(FLOW, x, t)

    den = denoiser(network=network)
    den.generate(jr.PRNGKey(0), 16)
    n_traces = len(traces)
    assert n_traces > 0
    den.generate(jr.PRNGKey(1), 16)
    # an equal Denoiser built anew is the same configuration: no retrace either
    denoiser(network=network).generate(jr.PRNGKey(2), 16)
    assert len(traces) == n_traces
    den.generate(jr.PRNGKey(1), 32)  # a new particle count is a new shape: traced again
    assert len(traces) > n_traces


def test_history_and_nfe():
    timer = dx.UniformTimer(8)
    out = denoiser(dx.Heun(), timer).generate(jr.PRNGKey(0), 5, keep_history=True)
    assert out.history.shape == (9, 5, 2)
    np.testing.assert_array_equal(out.history[-1], out.samples)
    # history[0] is the initial noise: sigma(1) * N(0, I), the same draw for keep_history=False
    np.testing.assert_array_equal(out.samples, denoiser(dx.Heun(), timer).generate(jr.PRNGKey(0), 5).samples)
    assert denoiser(dx.Heun(), timer).generate(jr.PRNGKey(0), 5).history is None
    # Heun: 2 per step but the last step to t = 0 is Euler
    assert int(out.nfe) == 2 * 8 - 1
    inner = dx.UniformTimer(8, t_min=0.01)
    assert int(denoiser(dx.Heun(), inner).generate(jr.PRNGKey(0), 5).nfe) == 16
    # ... unless the velocity is finite at t = 0 (Flow) and the last step is asked to be Heun too
    full = denoiser(dx.Heun(euler_last_step=False), timer).generate(jr.PRNGKey(0), 5)
    assert int(full.nfe) == 16
    assert np.all(np.isfinite(full.samples)) and not np.allclose(full.samples, out.samples)
    # DPM++(2S) on Flow from t = 1 to 0: the first (alpha = 0) and last (sigma = 0) steps are 1st order
    assert int(denoiser(dx.DPMpp2S(), timer).generate(jr.PRNGKey(0), 5).nfe) == 2 * 8 - 2
    for integrator in (dx.Euler(), dx.DDIM(), dx.DPMpp2M()):
        assert int(denoiser(integrator, timer).generate(jr.PRNGKey(0), 5).nfe) == 8


def test_stochastic_sampler_uses_fresh_noise_but_is_reproducible():
    den = denoiser(dx.DDIM(eta=1.0))
    a = den.generate(jr.PRNGKey(0), 8).samples
    b = den.generate(jr.PRNGKey(0), 8).samples
    c = den.generate(jr.PRNGKey(1), 8).samples
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # eta = 1 differs from the deterministic sampler started from the same noise
    assert not np.allclose(a, denoiser(dx.DDIM(eta=0.0)).generate(jr.PRNGKey(0), 8).samples)


def test_float32_particles():
    den = dx.Denoiser(
        dx.Predictor(GMM.network(FLOW), FLOW), dx.Euler(), dx.UniformTimer(4), (2,), dtype=jnp.float32
    )
    assert den.generate(jr.PRNGKey(0), 3).samples.dtype == jnp.float32


def test_invalid_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha"):
        denoiser(dx.Euler(), dx.UniformTimer(8), prediction="noise")  # no x0 information at t = 1
    denoiser(dx.Euler(), dx.UniformTimer(8, t_max=0.99), prediction="noise")  # fine below t_max
    with pytest.raises(ValueError, match="t_max"):
        denoiser(dx.Euler(), dx.UniformTimer(8, t_max=2.0))
    with pytest.raises((ValueError, TypeError), match="x0_shape"):
        dx.Denoiser(dx.Predictor(GMM.network(FLOW), FLOW), dx.Euler(), dx.UniformTimer(4), (0,))
    with pytest.raises(TypeError, match="integrator"):
        dx.Denoiser(dx.Predictor(GMM.network(FLOW), FLOW), "heun", dx.UniformTimer(4), (2,))
    with pytest.raises(ValueError, match="eta"):
        dx.DDIM(eta=1.5)
    den = denoiser()
    with pytest.raises(ValueError, match="n_particles"):
        den.generate(jr.PRNGKey(0), 0)
    with pytest.raises(TypeError, match="n_particles"):
        den.generate(jr.PRNGKey(0), 2.5)


def test_wrong_shapes_fail_with_jaxtyping_errors():
    with pytest.raises(jaxtyping.TypeCheckError):
        dx.GaussianMixture(np.ones(3) / 3, np.zeros((4, 2)), np.tile(np.eye(2), (4, 1, 1)))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        GMM.log_prob(jnp.zeros(3))  # the mixture lives in 2-D
    with pytest.raises(jaxtyping.TypeCheckError):
        GMM.score(FLOW, jnp.zeros((5, 2)), 0.5)  # one particle, unbatched
    with pytest.raises(jaxtyping.TypeCheckError):
        dx.sliced_wasserstein(jnp.zeros(10), jnp.zeros(10), jr.PRNGKey(0))
    with pytest.raises(jaxtyping.TypeCheckError):
        dx.CustomTimer(jnp.ones((2, 2)))
    with pytest.raises(jaxtyping.TypeCheckError):
        FLOW.alpha("0.5")


def test_network_with_wrong_output_shape_is_named():
    den = denoiser(network=lambda x, t: jnp.zeros(3))
    with pytest.raises(ValueError, match="shaped like x"):
        den.generate(jr.PRNGKey(0), 2)
