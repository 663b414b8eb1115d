"""The original Diffuse FLUX.1-dev tutorial, with diffuse_eqx: timers, integrators, batched sampling.

Needs the FLUX.1-dev weights (a Hugging Face repository id, fetched with `huggingface_hub`, or a local
folder in the diffusers layout) and, at 512x512 in bf16, a GPU with ~40 GB. Writes the figures to
`--out` and prints the timings:

    python examples/flux_tutorial.py --model black-forest-labs/FLUX.1-dev --out flux_tutorial

1. Timer comparison: Uniform, FluxTimer with a static shift and with the dynamic (resolution) shift,
   all with DDIM: the schedules, their step sizes, and the images.
2. Integrator comparison with the FLUX schedule: DDIM, Euler, Heun, DPM++ 2S, DPM++ 2M, and centre
   crops of each image.
3. A batch of 10 samples in one `generate` call, timed (sampling and decoding separately).
"""

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import diffuse_eqx as dx  # noqa: E402
from diffuse_eqx.models.flux import FluxPipeline  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="black-forest-labs/FLUX.1-dev")
    p.add_argument(
        "--prompt", default="A serene landscape with mountains at sunset, highly detailed, photorealistic"
    )
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--out", type=Path, default=Path("flux_tutorial"))
    return p.parse_args(argv)


def show(images: dict, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4.4), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        ax.imshow(img)
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    h, w, n = args.height, args.width, args.steps
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(args.model, dtype=jnp.dtype(args.dtype))
    network = pipe.condition(args.prompt, h, w, args.guidance)  # the text encoders are released after this
    print(f"loaded and encoded the prompt in {time.perf_counter() - t0:.1f} s")
    predictor = dx.Predictor(network, dx.Flow(), "velocity")
    decode = eqx.filter_jit(jax.vmap(lambda z: pipe.decode(z, h, w)))

    def sample(timer, integrator, n_particles=1, seed=args.seed):
        den = dx.Denoiser(predictor, integrator, timer, pipe.latent_shape(h, w), dtype=pipe.dtype)
        out = den.generate(jr.key(seed), n_particles)
        return pipe.to_uint8(decode(out.samples)), int(out.nfe)

    # 1. timers
    timers = {
        "Uniform": dx.UniformTimer(n),
        "Flux static (shift 3)": dx.FluxTimer(n, shift=3.0),
        f"the model's own (pipe.timer, mu={float(pipe.timer(n, h, w).mu):.2f})": pipe.timer(n, h, w),
    }
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, timer in timers.items():
        ts = np.asarray(timer.times())
        a1.plot(ts, "o-", label=name)
        a2.plot(-np.diff(ts), "o-", label=name)
    a1.set(xlabel="step i", ylabel="t_i", title="schedules")
    a2.set(xlabel="step i", ylabel="-dt_i", title="step sizes")
    a1.legend()
    fig.tight_layout()
    fig.savefig(args.out / "timers_schedule.png", dpi=110)
    plt.close(fig)
    images = {name: sample(timer, dx.DDIM())[0][0] for name, timer in timers.items()}
    show(images, args.out / "timers.png", f"Timer comparison (DDIM, {n} steps)")

    # 2. integrators, with the FLUX schedule
    integrators = {
        "DDIM": dx.DDIM(),
        "Euler": dx.Euler(),
        "Heun": dx.Heun(),
        "DPM++ 2S": dx.DPMpp2S(),
        "DPM++ 2M": dx.DPMpp2M(),
    }
    images = {}
    for name, integrator in integrators.items():
        img, nfe = sample(pipe.timer(n, h, w), integrator)
        images[f"{name} ({nfe} NFE)"] = img[0]
    show(images, args.out / "integrators.png", f"Integrator comparison (FluxTimer, {n} steps)")
    c = min(192, h // 2, w // 2)
    crops = {k: v[(h - c) // 2 : (h + c) // 2, (w - c) // 2 : (w + c) // 2] for k, v in images.items()}
    show(crops, args.out / "integrators_crops.png", f"Integrator comparison: {c}x{c} centre crops")

    # 3. a batch of samples in one call
    den = dx.Denoiser(predictor, dx.Euler(), pipe.timer(n, h, w), pipe.latent_shape(h, w), dtype=pipe.dtype)
    jax.block_until_ready(den.generate(jr.key(0), args.batch).samples)  # compile
    t0 = time.perf_counter()
    latents = jax.block_until_ready(den.generate(jr.key(args.seed + 1234), args.batch).samples)
    t_sample = time.perf_counter() - t0
    jax.block_until_ready(decode(latents))  # compile
    t0 = time.perf_counter()
    batch = pipe.to_uint8(jax.block_until_ready(decode(latents)))
    t_decode = time.perf_counter() - t0
    print(f"{args.batch} samples: sampling {t_sample:.2f} s, decoding {t_decode:.2f} s (after compilation)")
    show(
        {f"#{i + 1}": img for i, img in enumerate(batch)},
        args.out / "batch.png",
        f"{args.batch} samples (Euler + FluxTimer), {t_sample:.1f} s",
    )
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
