"""FLUX.1-dev "true CFG" (a prompt and a negative prompt combined by CFG, beside the distilled
guidance embedding) on the tiny random checkpoint of tests/flux_helpers.py: against diffusers'
FluxPipeline(true_cfg_scale=...), and through `generate` / the `diffuse-eqx generate` command."""

import re

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch
from flux_helpers import HEIGHT, PROMPT, WIDTH, pipeline, rel_err, save

import diffuse_eqx as dx
from diffuse_eqx.models.flux import FluxPipeline


NEGATIVE = "a photo of dog"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny FLUX.1-dev-shaped diffusers pipeline with random weights, saved in the real layout."""
    return save(pipeline(), tmp_path_factory.mktemp("flux") / "tiny-flux"), pipeline()


def test_true_cfg_matches_diffusers(checkpoint):
    """Same prompt embeddings, negative embeddings, noise and sigmas: CFG over
    `network_with_negative` (one transformer call of batch 2) + Euler + FluxTimer against diffusers'
    FluxPipeline(true_cfg_scale=3, guidance_scale=3.5, output_type="latent")."""
    root, torch_pipe = checkpoint
    ours = FluxPipeline.from_pretrained(root)
    n_steps, guidance, true_cfg = 5, 3.5, 3.0
    g = torch.Generator().manual_seed(2)
    txt, neg_txt = torch.randn(1, 12, 32, generator=g), torch.randn(1, 12, 32, generator=g)
    pooled, neg_pooled = torch.randn(1, 24, generator=g), torch.randn(1, 24, generator=g)
    noise = torch.randn(1, *ours.latent_shape(HEIGHT, WIDTH), generator=g)
    with torch.no_grad():
        ref = torch_pipe(
            prompt_embeds=txt,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=neg_txt,
            negative_pooled_prompt_embeds=neg_pooled,
            true_cfg_scale=true_cfg,
            latents=noise,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=n_steps,
            guidance_scale=guidance,
            output_type="latent",
        ).images[0]
    arrays = [jnp.asarray(a[0].numpy()) for a in (txt, pooled, neg_txt, neg_pooled)]
    pair = ours.network_with_negative(*arrays, HEIGHT, WIDTH, guidance)
    ts = ours.timer(n_steps, HEIGHT, WIDTH).times().astype(jnp.float32)
    x = jnp.asarray(noise[0].numpy(), jnp.float32)
    samples, nfe, _ = dx.integrate(dx.Euler(), dx.CFG(pair, true_cfg), ts, x, jr.key(0))
    assert int(nfe) == 2 * n_steps
    print(f"true-CFG sampling-loop parity ({n_steps} Euler steps): {rel_err(samples, ref):.1e}")
    assert rel_err(samples, ref) <= 1e-4
    # the batched pair is the two single-prompt networks: CFG at w = 1 is the positive prompt
    positive = dx.Predictor(ours.network(arrays[0], arrays[1], HEIGHT, WIDTH, guidance), dx.Flow())
    plain, plain_nfe, _ = dx.integrate(dx.Euler(), positive, ts, x, jr.key(0))
    at_one, _, _ = dx.integrate(dx.Euler(), dx.CFG(pair, 1.0), ts, x, jr.key(0))
    assert int(plain_nfe) == n_steps
    assert rel_err(at_one, plain) <= 1e-5
    assert rel_err(samples, plain) > 1e-2


def evaluations(text: str) -> int:
    return int(re.search(r"\((\d+) evaluations each\)", text).group(1))


def test_generate_true_cfg_command(checkpoint, tmp_path, capsys):
    """`--true-cfg 1` is no true CFG (identical images), `--true-cfg 4` changes the images and
    doubles the reported NFE; `--true-cfg` without a negative prompt is an error."""
    from PIL import Image

    from diffuse_eqx.cli import main

    root, _ = checkpoint
    common = ["generate", "--model", str(root), "--prompt", PROMPT, "--height", str(HEIGHT)]
    common += ["--width", str(WIDTH), "--steps", "3", "--dtype", "float32"]
    images, nfe = {}, {}
    for name, extra in {
        "plain": [],
        "one": ["--negative-prompt", NEGATIVE, "--true-cfg", "1"],
        "four": ["--negative-prompt", NEGATIVE, "--true-cfg", "4"],
    }.items():
        capsys.readouterr()
        main(common + extra + ["--out", str(tmp_path / name)])
        nfe[name] = evaluations(capsys.readouterr().out)
        (file,) = sorted((tmp_path / name).glob("*.png"))
        images[name] = np.asarray(Image.open(file), np.int32)
    assert nfe == {"plain": 3, "one": 3, "four": 6}
    np.testing.assert_array_equal(images["one"], images["plain"])
    assert np.abs(images["four"] - images["plain"]).max() > 0
    with pytest.raises(ValueError, match="needs a negative prompt"):  # --debug: the error itself
        main(["--debug", *common, "--true-cfg", "2", "--out", str(tmp_path / "bad")])
