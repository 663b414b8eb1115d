"""One FLUX.1-dev transformer forward with random weights: compile time, run time, peak memory.

Builds the full-size dev transformer (11.9 B parameters) with random bf16 weights directly on the
device (no download) and times one forward (median of several calls after warm-up, with
`block_until_ready`) at 512x512 (1024 image + 512 text tokens) and 1024x1024 (4096 + 512).
`--small` runs a tiny configuration instead, so the script can be checked on a CPU.
Usage: `python benchmarks/flux_forward.py [--small] [--runs N]`.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffuse_eqx.models.flux import FluxTransformer, FluxTransformerConfig


def inputs(cfg: FluxTransformerConfig, side: int, l_txt: int, key):
    rows = cols = side // 16  # 8x VAE downsampling, then 2x2 packing
    k = jax.random.split(key, 3)
    img = jax.random.normal(k[0], (rows * cols, cfg.in_channels), jnp.bfloat16)
    txt = jax.random.normal(k[1], (l_txt, cfg.context_in_dim), jnp.bfloat16)
    pooled = jax.random.normal(k[2], (cfg.vec_in_dim,), jnp.bfloat16)
    r, c = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
    img_ids = jnp.stack([jnp.zeros(rows * cols), r.ravel(), c.ravel()], -1).astype(jnp.float32)
    txt_ids = jnp.zeros((l_txt, 3), jnp.float32)
    return img, txt, pooled, jnp.float32(0.7), jnp.float32(3.5), img_ids, txt_ids


def peak_gib(device) -> float:
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny configuration (CPU check)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    device = jax.devices()[0]
    if args.small:
        cfg, cases = (
            FluxTransformerConfig(
                hidden_size=64, num_heads=2, depth=2, depth_single=2, axes_dim=(8, 12, 12), context_in_dim=64
            ),
            [(256, 32)],
        )
    else:
        cfg, cases = FluxTransformerConfig.dev(), [(512, 512), (1024, 512)]
    print(f"JAX {jax.__version__} on {device.device_kind}")
    t0 = time.perf_counter()
    model = eqx.filter_jit(lambda key: FluxTransformer(cfg, dtype=jnp.bfloat16, key=key))(jax.random.key(0))
    jax.block_until_ready(model)
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    print(
        f"random bf16 weights: {n_params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.1f} s, "
        f"peak {peak_gib(device):.1f} GiB\n"
    )
    params, static = eqx.partition(model, eqx.is_array)
    forward = jax.jit(lambda p, *a: eqx.combine(p, static)(*a))
    print(
        "| image | tokens (img + txt) | compile [s] | forward, median [ms] | XLA plan: weights + "
        "activations [GiB] | device peak so far [GiB] |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for side, l_txt in cases:
        a = inputs(cfg, side, l_txt, jax.random.key(side))
        t0 = time.perf_counter()
        compiled = forward.lower(params, *a).compile()
        compile_s = time.perf_counter() - t0
        plan = compiled.memory_analysis()
        planned = (plan.argument_size_in_bytes + plan.temp_size_in_bytes + plan.output_size_in_bytes) / 2**30
        out = jax.block_until_ready(compiled(params, *a))
        assert bool(jnp.all(jnp.isfinite(out))), "non-finite output"
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, *a))
            times.append(time.perf_counter() - t0)
        n_img = a[0].shape[0]
        print(
            f"| {side}x{side} | {n_img} + {l_txt} | {compile_s:.1f} | {1e3 * np.median(times):.1f} | "
            f"{planned:.1f} | {peak_gib(device):.1f} |"
        )


if __name__ == "__main__":
    main()
