"""Quick start: sample a 2-D Gaussian mixture with a flow-matching sampler and check it.

The mixture's exact velocity field stands in for a trained network, so the samples can be compared
with exact draws from the target.

Run: `python examples/quickstart.py`.
"""

import jax.numpy as jnp
import jax.random as jr

import diffuse_eqx as dx


gmm = dx.GaussianMixture(
    weights=jnp.array([0.3, 0.7]),
    means=jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
    covs=jnp.array([0.3 * jnp.eye(2), 0.5 * jnp.eye(2)]),
)
path = dx.Flow()  # x_t = (1 - t) x0 + t eps
predictor = dx.Predictor(gmm.network(path, "velocity"), path, prediction="velocity")
timer = dx.FluxTimer(n_steps=20, shift=3.0)
denoiser = dx.Denoiser(predictor=predictor, integrator=dx.Heun(), timer=timer, x0_shape=(2,))
out = denoiser.generate(jr.key(0), n_particles=4096)

exact = gmm.sample(jr.key(1), 4096)
sw = dx.sliced_wasserstein(out.samples, exact, jr.key(2))
# Two independent exact sample sets are this far apart: the Monte Carlo noise of the distance.
mc_noise = dx.sliced_wasserstein(gmm.sample(jr.key(3), 4096), exact, jr.key(2))
print(f"samples: {out.samples.shape}, network evaluations per particle: {int(out.nfe)}")
print(f"sample mean {out.samples.mean(0)}, std {out.samples.std(0)}")
print(f"exact  mean {exact.mean(0)}, std {exact.std(0)}")
print(
    f"sliced Wasserstein distance to exact samples: {float(sw):.4f} (exact vs exact: {float(mc_noise):.4f})"
)
