"""`diffuse-eqx generate`: text-to-image with FLUX.1 and any timer / integrator of the library.

The FLUX models (`diffuse_eqx.models.flux`, the `[flux]` extra) are imported when the command runs."""

import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx


INTEGRATORS = {
    "euler": dx.Euler,
    "heun": dx.Heun,
    "ddim": dx.DDIM,
    "dpmpp2s": dx.DPMpp2S,
    "dpmpp2m": dx.DPMpp2M,
}
TIMERS = ("flux", "uniform", "karras", "exponential")


def make_timer(name: str, n_steps: int, pipe, height: int, width: int) -> dx.AbstractTimer:
    """The timer called `name` for FLUX's Flow path (`flux`: the model's own schedule,
    [`FluxPipeline.timer`][diffuse_eqx.models.flux.FluxPipeline.timer])."""
    if name == "flux":
        return pipe.timer(n_steps, height, width)
    if name == "uniform":
        return dx.UniformTimer(n_steps)
    if name == "karras":
        return dx.KarrasTimer(n_steps, t_min=1e-3, t_max=1.0)
    if name == "exponential":
        return dx.ExponentialTimer(n_steps, t_min=1e-3, t_max=1.0)
    raise ValueError(f"unknown timer {name!r}; choose one of {TIMERS}.")


def check_options(height, width, steps, timer, integrator, n, guidance, negative_prompt, true_cfg) -> None:
    """Refuses bad options before any model is loaded (a `ValueError` naming the option)."""
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 16 or size % 16:
            below, above = max(16, size // 16 * 16), (size // 16 + 1) * 16
            nearest = f"{below} or {above}" if below != above and size > 16 else f"{max(16, above)}"
            raise ValueError(
                f"{name} must be a multiple of 16 (8x autoencoder, 2x2 patches) and at least 16; got "
                f"{size}: use {nearest}."
            )
    for name, value in (("steps", steps), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if timer not in TIMERS:
        raise ValueError(f"unknown timer {timer!r}; choose one of {list(TIMERS)}.")
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}.")
    for name, value in (("guidance", guidance), ("true_cfg", true_cfg)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {value}.")
    if true_cfg != 1 and negative_prompt is None:
        raise ValueError(
            f"true_cfg={true_cfg} needs a negative prompt to guide away from (use '' for the empty prompt)."
        )


def generate(
    model: str | Path,
    prompt: str,
    height: int = 512,
    width: int = 512,
    steps: int = 20,
    timer: str = "flux",
    integrator: str = "euler",
    n: int = 1,
    seed: int = 0,
    guidance: float | None = 3.5,
    negative_prompt: str | None = None,
    true_cfg: float = 1.0,
    dtype: str = "bfloat16",
    out: str | Path = "flux_out",
    log=print,
    progress: bool = False,
) -> list[Path]:
    """Generates `n` images of `prompt` and writes them as PNGs in `out`; returns their paths.

    `true_cfg` != 1 with a `negative_prompt` runs [`CFG`][diffuse_eqx.CFG] between the prompt and the
    negative prompt (diffusers' `true_cfg_scale`, one transformer call of batch 2, twice the NFE),
    beside FLUX.1-dev's distilled `guidance`. `progress` shows a progress bar over the sampling steps."""
    check_options(height, width, steps, timer, integrator, n, guidance, negative_prompt, true_cfg)
    import PIL  # noqa: F401  (without Pillow, fail before the model loads, not after sampling)

    from ..models.flux import FluxPipeline  # the FLUX models and their dependencies, only when run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(model, dtype=jnp.dtype(dtype))
    log(f"loaded {pipe.root} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    if true_cfg != 1:
        pair = pipe.condition_with_negative(prompt, negative_prompt, height, width, guidance)
        predictor = dx.CFG(pair, true_cfg)
        log(f"encoded the prompt and the negative prompt in {time.perf_counter() - t0:.1f} s")
    else:
        if negative_prompt is not None:
            log("the negative prompt is not used: true_cfg = 1 (no true CFG)")
        predictor = pipe.predictor(prompt, height, width, guidance)
        log(f"encoded the prompt in {time.perf_counter() - t0:.1f} s")
    den = dx.Denoiser(
        predictor=predictor,
        integrator=INTEGRATORS[integrator](),
        timer=make_timer(timer, steps, pipe, height, width),
        x0_shape=pipe.latent_shape(height, width),
    )  # float32 particles, whatever the network's dtype
    t0 = time.perf_counter()
    result = den.generate(jr.key(seed), n, progress=progress, check_finite=True)
    latents = jax.block_until_ready(result.samples)
    elapsed = time.perf_counter() - t0
    log(f"sampled {n} x {steps} steps ({int(result.nfe)} evaluations each) in {elapsed:.1f} s")
    t0 = time.perf_counter()
    decode = eqx.filter_jit(jax.vmap(lambda z: pipe.decode(z, height, width)))
    images = pipe.to_uint8(jax.block_until_ready(decode(latents)))
    log(f"decoded in {time.perf_counter() - t0:.1f} s")
    return write_pngs(images, out, f"{integrator}_{timer}_{steps}steps_seed{seed}", log)


def write_pngs(images: np.ndarray, out: Path, stem: str, log=print) -> list[Path]:
    """Writes uint8 images `(n, H, W, 3)` as `out/{stem}_{i:03d}.png`, logs and returns the paths."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        path = out / f"{stem}_{i:03d}.png"
        Image.fromarray(np.asarray(image)).save(path)
        paths.append(path)
    log("wrote " + ", ".join(str(p) for p in paths))
    return paths
