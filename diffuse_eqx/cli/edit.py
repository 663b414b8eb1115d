"""`diffuse-eqx edit`: edit an image with FLUX.1 (FlowEdit, RF-Inversion, SDEdit), or inpaint it with a
mask (blended latent diffusion).

The FLUX models (`diffuse_eqx.models.flux`, the `[flux]` extra) are imported when the command runs."""

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


METHODS = ("flowedit", "rf-inversion", "sdedit")


def read_image(path: str | Path) -> jnp.ndarray:
    """A PNG/JPEG as (3, H, W) float32 in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32)
    return jnp.asarray(np.moveaxis(pixels, -1, 0) / 127.5 - 1.0)


def read_mask(path: str | Path, shape: tuple[int, int]) -> jnp.ndarray:
    """A mask image as (H, W) of 0/1: 1 (white, grey level > 127) where the image is regenerated."""
    from PIL import Image

    with Image.open(path) as image:
        mask = (np.asarray(image.convert("L")) > 127).astype(np.float32)
    if mask.shape != shape:
        raise ValueError(
            f"the mask {path} is {mask.shape[0]}x{mask.shape[1]}; the image is {shape[0]}x{shape[1]}."
        )
    return jnp.asarray(mask)


def check_options(method, steps, n, strength, gamma, eta, guidance, source_guidance) -> None:
    """Refuses bad options before any model is loaded (a `ValueError` naming the option)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    for name, value in (("steps", steps), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    for name, value, lo in (("strength", strength, 0.0), ("gamma", gamma, 0.0), ("eta", eta, 0.0)):
        if value is not None and not (
            math.isfinite(value) and lo <= value <= 1 and (name != "strength" or value > 0)
        ):
            raise ValueError(
                f"{name} must be in {'(0, 1]' if name == 'strength' else '[0, 1]'}; got {value}."
            )
    for name, value in (("guidance", guidance), ("source_guidance", source_guidance)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {value}.")


def edit(
    model: str | Path,
    image: str | Path,
    prompt: str,
    source_prompt: str = "",
    method: str = "flowedit",
    mask: str | Path | None = None,
    steps: int = 28,
    n: int = 1,
    seed: int = 0,
    strength: float | None = None,
    gamma: float | None = None,
    eta: float | None = None,
    guidance: float | None = 5.5,
    source_guidance: float | None = 1.5,
    dtype: str = "bfloat16",
    out: str | Path = "flux_edit",
    log=print,
) -> list[Path]:
    """Edits `image` to `prompt` (from `source_prompt`) with `method`, or, given a `mask`, inpaints
    the mask's white part with `prompt`; writes `n` PNGs in `out` and returns their paths.
    `strength` (FlowEdit, SDEdit), `gamma` and `eta` (RF-Inversion) default to the methods' own."""
    check_options(method, steps, n, strength, gamma, eta, guidance, source_guidance)
    from ..models.flux import FluxPipeline  # the FLUX models and their dependencies, only when run
    from .generate import write_pngs

    pixels = read_image(image)
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    mask_array = read_mask(mask, (height, width)) if mask is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(model, dtype=jnp.dtype(dtype))
    dev = pipe.transformer.config.guidance_embed
    log(f"loaded {pipe.root} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    key = jr.key(seed)
    if mask_array is not None:
        images = pipe.inpaint(
            pixels, mask_array, prompt, steps, key=key, n=n, guidance=guidance if dev else None
        )
        what = "inpaint"
    else:
        options = {k: v for k, v in (("strength", strength), ("gamma", gamma), ("eta", eta)) if v is not None}
        if method == "rf-inversion":
            options.pop("strength", None)
        else:
            options.pop("gamma", None)
            options.pop("eta", None)
        images = pipe.edit(
            pixels,
            source_prompt,
            prompt,
            method,
            steps,
            key=key,
            n=n,
            source_guidance=source_guidance if dev else None,
            target_guidance=guidance if dev else None,
            **options,
        )
        what = method
    images = pipe.to_uint8(jax.block_until_ready(images))
    log(f"{what}: {n} image(s), {steps} steps, in {time.perf_counter() - t0:.1f} s")
    return write_pngs(images, out, f"{what}_{steps}steps_seed{seed}", log)
