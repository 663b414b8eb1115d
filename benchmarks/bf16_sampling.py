"""How far a bfloat16 FLUX network moves the samples from the float32 run of the same noise.

A small FLUX.1-dev-shaped transformer with random weights (two blocks of each kind, head dimension
32, 16x16 latents of 16 channels) gives the velocity; the same weights cast to bfloat16 give the
bf16 network. Each row samples 8 particles with Euler over FLUX's dynamic-shift grid from the same
keys and prints the RMS distance to the float32 run, relative to the float32 samples' RMS:
`Denoiser(dtype=jnp.bfloat16)` (the README's FLUX set-up), `Denoiser(dtype=jnp.float32)` with the
bf16 network, and a pure-bf16 loop for comparison (network and particles in bf16, emulated by
rounding every particle update to bf16). Usage: `python benchmarks/bf16_sampling.py [--steps N]`.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import diffuse_eqx as dx
from diffuse_eqx.models.flux import FluxConditionedNetwork, FluxTransformer, FluxTransformerConfig


CONFIG = FluxTransformerConfig(
    in_channels=64,
    hidden_size=64,
    num_heads=2,
    depth=2,
    depth_single=2,
    axes_dim=(8, 12, 12),
    context_in_dim=32,
    vec_in_dim=16,
)
SIDE, L_TXT = 8, 16  # 8x8 packed tokens (a 16x16 latent, a 128x128 image), 16 text tokens


def network(dtype) -> FluxConditionedNetwork:
    k_model, k_txt, k_pooled = jr.split(jr.key(0), 3)
    transformer = FluxTransformer(CONFIG, dtype=jnp.float32, key=k_model)
    transformer = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, transformer)
    rows, cols = jnp.meshgrid(jnp.arange(SIDE), jnp.arange(SIDE), indexing="ij")
    img_ids = jnp.stack([jnp.zeros(SIDE * SIDE), rows.ravel(), cols.ravel()], -1).astype(jnp.float32)
    return FluxConditionedNetwork(
        transformer=transformer,
        txt=jr.normal(k_txt, (L_TXT, CONFIG.context_in_dim)).astype(dtype),
        pooled=jr.normal(k_pooled, (CONFIG.vec_in_dim,)).astype(dtype),
        img_ids=img_ids,
        txt_ids=jnp.zeros((L_TXT, 3), jnp.float32),
        guidance=jnp.asarray(3.5, jnp.float32),
    )


def sample(net, dtype, steps: int, n: int = 8) -> jax.Array:
    denoiser = dx.Denoiser(
        predictor=dx.Predictor(net, dx.Flow(), "velocity"),
        integrator=dx.Euler(),
        timer=dx.FluxTimer(steps, image_seq_len=SIDE * SIDE),
        x0_shape=(SIDE * SIDE, CONFIG.in_channels),
        dtype=dtype,
    )
    return denoiser.generate(jr.key(1), n).samples.astype(jnp.float32)


def bf16_loop(net, steps: int, n: int = 8) -> jax.Array:
    """Euler with the particles rounded to bf16 after every update (the network in bf16)."""
    ts = dx.FluxTimer(steps, image_seq_len=SIDE * SIDE).times()
    keys = dx.particle_keys(jr.key(1), n)
    x = jax.vmap(lambda k: jr.normal(jr.split(k)[0], (SIDE * SIDE, CONFIG.in_channels)))(keys)
    x = x.astype(jnp.bfloat16)

    @jax.jit
    def step(x, t, s):
        v = jax.vmap(lambda xi: net(xi, t))(x)
        return (x + (s - t).astype(jnp.bfloat16) * v).astype(jnp.bfloat16)

    for t, s in zip(ts[:-1], ts[1:]):
        x = step(x, t, s)
    return x.astype(jnp.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    net32, net16 = network(jnp.float32), network(jnp.bfloat16)
    reference = sample(net32, jnp.float32, args.steps)
    scale = float(jnp.sqrt(jnp.mean(reference**2)))
    rows = [
        ("bf16 network, Denoiser(dtype=bfloat16)", sample(net16, jnp.bfloat16, args.steps)),
        ("bf16 network, Denoiser(dtype=float32)", sample(net16, jnp.float32, args.steps)),
        ("bf16 network and bf16 particles (emulated)", bf16_loop(net16, args.steps)),
    ]
    print(f"| {args.steps} Euler steps, 8 particles | relative RMS distance to the float32 run |")
    print("| :--- | ---: |")
    for name, x in rows:
        print(f"| {name} | {float(jnp.sqrt(jnp.mean((x - reference) ** 2))) / scale:.3e} |")


if __name__ == "__main__":
    main()
