"""The FLUX pipeline end to end on a tiny random checkpoint in the real diffusers layout: prompt
encoding, the sampling loop (our Denoiser + Euler + FluxTimer vs diffusers' FluxPipeline), decoding,
and the `diffuse-eqx generate` command."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch
from flux_helpers import HEIGHT, PROMPT, WIDTH, pipeline, rel_err, save

import diffuse_eqx as dx
from diffuse_eqx.models.flux import FluxPipeline


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny FLUX.1-dev-shaped diffusers pipeline with random weights, saved in the real layout."""
    return save(pipeline(), tmp_path_factory.mktemp("flux") / "tiny-flux"), pipeline()


def test_encode_prompt_matches_diffusers(checkpoint):
    root, torch_pipe = checkpoint
    ours = FluxPipeline.from_pretrained(root, max_sequence_length=16)
    txt, pooled = ours.encode_prompt(PROMPT)
    with torch.no_grad():
        ref_txt, ref_pooled, _ = torch_pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=16)
    assert txt.shape == (16, 32) and pooled.shape == (24,)
    errors = rel_err(txt, ref_txt[0]), rel_err(pooled, ref_pooled[0])
    print(f"encode_prompt parity: T5 {errors[0]:.1e}, CLIP pooled {errors[1]:.1e}")
    assert max(errors) <= 1e-4


def test_sampling_loop_matches_diffusers(checkpoint):
    """Same components, prompt embeddings, initial noise and sigmas: our Denoiser with Euler +
    FluxTimer against diffusers' FluxPipeline(output_type="latent")."""
    root, torch_pipe = checkpoint
    ours = FluxPipeline.from_pretrained(root)
    n_steps, guidance = 6, 3.5
    g = torch.Generator().manual_seed(1)
    txt = torch.randn(1, 12, 32, generator=g)
    pooled = torch.randn(1, 24, generator=g)
    noise = torch.randn(1, *ours.latent_shape(HEIGHT, WIDTH), generator=g)
    with torch.no_grad():
        ref = torch_pipe(
            prompt_embeds=txt,
            pooled_prompt_embeds=pooled,
            latents=noise,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=n_steps,
            guidance_scale=guidance,
            output_type="latent",
        ).images[0]
    network = ours.network(
        jnp.asarray(txt[0].numpy()), jnp.asarray(pooled[0].numpy()), HEIGHT, WIDTH, guidance
    )
    predictor = dx.Predictor(network, dx.Flow(), "velocity")
    timer = ours.timer(n_steps, HEIGHT, WIDTH)
    x = jnp.asarray(noise[0].numpy(), jnp.float32)
    samples, nfe, _ = dx.integrate(dx.Euler(), predictor, timer.times().astype(jnp.float32), x, jr.key(0))
    assert int(nfe) == n_steps
    print(f"sampling-loop parity ({n_steps} Euler steps): {rel_err(samples, ref):.1e}")
    assert rel_err(samples, ref) <= 1e-4
    # decoding: ours vs diffusers' VAE on the unpacked latents
    image = ours.decode(samples, HEIGHT, WIDTH)
    with torch.no_grad():
        unpacked = torch_pipe._unpack_latents(ref[None], HEIGHT, WIDTH, torch_pipe.vae_scale_factor)
        vae = torch_pipe.vae
        ref_image = vae.decode(unpacked / vae.config.scaling_factor + vae.config.shift_factor).sample[0]
    assert image.shape == (3, HEIGHT, WIDTH)
    print(f"decode parity: {rel_err(image, ref_image):.1e}")
    assert rel_err(image, ref_image) <= 1e-4
    # encoding (for inverse problems): packed, scaled and shifted posterior mean
    with torch.no_grad():
        mean = vae.encode(ref_image[None]).latent_dist.mean
        ref_latents = (mean - vae.config.shift_factor) * vae.config.scaling_factor
        ref_packed = torch_pipe._pack_latents(ref_latents, 1, mean.shape[1], mean.shape[2], mean.shape[3])[0]
    packed = ours.encode(jnp.asarray(ref_image.numpy()))
    print(f"encode parity: {rel_err(packed, ref_packed):.1e}")
    assert rel_err(packed, ref_packed) <= 1e-4


def test_pack_unpack_and_ids(checkpoint):
    root, torch_pipe = checkpoint
    ours = FluxPipeline.from_pretrained(root)
    h, w = ours.latent_size(HEIGHT, WIDTH)
    z = jr.normal(jr.key(0), (ours.latent_channels, h, w), jnp.float32)
    packed = ours.pack(z)
    ref = torch_pipe._pack_latents(torch.from_numpy(np.asarray(z))[None], 1, z.shape[0], h, w)[0]
    np.testing.assert_array_equal(packed, ref.numpy())
    np.testing.assert_array_equal(ours.unpack(packed, HEIGHT, WIDTH), z)
    ref_ids = torch_pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    np.testing.assert_array_equal(ours.image_ids(HEIGHT, WIDTH), ref_ids.numpy())
    assert ours.image_seq_len(512, 512) == (512 // ours.vae_scale_factor // 2) ** 2


def test_generate_command_bf16(checkpoint, tmp_path):
    from diffuse_eqx.cli import main

    root, _ = checkpoint
    out = tmp_path / "images"
    main(
        [
            "generate",
            "--model",
            str(root),
            "--prompt",
            PROMPT,
            "--height",
            str(HEIGHT),
            "--width",
            str(WIDTH),
            "--steps",
            "3",
            "--integrator",
            "heun",
            "--n",
            "2",
            "--dtype",
            "bfloat16",
            "--out",
            str(out),
        ]
    )
    from PIL import Image

    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    images = [np.asarray(Image.open(f)) for f in files]
    assert images[0].shape == (HEIGHT, WIDTH, 3)
    assert not np.array_equal(images[0], images[1])  # two different particles


def test_missing_or_offline_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((RuntimeError, FileNotFoundError), match="not in the local cache|not a diffusers"):
        FluxPipeline.from_pretrained("nobody-here/not-a-model")
    (tmp_path / "transformer").mkdir()
    with pytest.raises(FileNotFoundError, match="no vae/ folder"):
        FluxPipeline.from_pretrained(tmp_path)


def test_tutorial_example_runs(checkpoint, tmp_path):
    """examples/flux_tutorial.py on the tiny checkpoint: every part runs and writes its figures."""
    import importlib.util
    from pathlib import Path

    root, _ = checkpoint
    spec = importlib.util.spec_from_file_location(
        "flux_tutorial", Path(__file__).parents[1] / "examples" / "flux_tutorial.py"
    )
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)
    out = tmp_path / "tutorial"
    tutorial.main(
        [
            "--model",
            str(root),
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "4",
            "--batch",
            "3",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    names = {"timers_schedule.png", "timers.png", "integrators.png", "integrators_crops.png", "batch.png"}
    assert names <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("task", ["inpaint", "sr"])
def test_inverse_example_runs(checkpoint, tmp_path, task):
    """examples/flux_inverse.py on the tiny checkpoint: DPS through the transformer and the VAE decoder."""
    import importlib.util
    from pathlib import Path

    root, _ = checkpoint
    path = Path(__file__).parents[1] / "examples" / "flux_inverse.py"
    spec = importlib.util.spec_from_file_location("flux_inverse", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / task
    args = ["--model", str(root), "--task", task, "--height", "32", "--width", "32", "--steps", "3"]
    residual = example.main(args + ["--dtype", "float32", "--out", str(out)])
    assert np.isfinite(residual) and residual > 0
    assert (out / "flux_inverse.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------- editing


def test_editing_methods_through_the_pipeline(checkpoint):
    """invert, edit (FlowEdit, RF-Inversion, SDEdit), inpaint and outpaint on the tiny checkpoint:
    shapes, determinism per key, FlowEdit's identity (source = target: the input's latents come
    back exactly, so the output is the decoded input), inpaint's kept latents."""
    root, _ = checkpoint
    pipe = FluxPipeline.from_pretrained(root, max_sequence_length=16)
    image = jnp.clip(jr.normal(jr.key(0), (3, HEIGHT, WIDTH)) * 0.5, -1, 1)
    inv = pipe.invert(image, PROMPT, steps=4, fixed_point=2)
    assert inv.latents.shape == (1, *pipe.latent_shape(HEIGHT, WIDTH)) and bool(
        jnp.all(jnp.isfinite(inv.latents))
    )
    # the round trip: generation from the latents with the same predictor and grid
    pred = pipe.predictor(PROMPT, HEIGHT, WIDTH, 1.0)
    den = dx.Denoiser(pred, dx.Euler(), pipe.timer(4, HEIGHT, WIDTH), pipe.latent_shape(HEIGHT, WIDTH))
    back = den.generate(jr.key(0), 1, x_init=inv.latents).samples
    x = pipe.encode(image)[None]
    plain = dx.invert(dx.Euler(), pred, pipe.timer(4, HEIGHT, WIDTH), x)
    back_plain = den.generate(jr.key(0), 1, x_init=plain.latents).samples
    assert float(jnp.abs(back - x).max()) < float(jnp.abs(back_plain - x).max())

    # (n = 2 and the default strength: the programs of the method loop below, compiled once)
    same = pipe.edit(image, PROMPT, PROMPT, "flowedit", 4, n=2, source_guidance=2.0, target_guidance=2.0)
    x2 = jnp.repeat(pipe.encode(image)[None].astype(jnp.float32), 2, axis=0)
    decoded = pipe._decode_all(x2, HEIGHT, WIDTH)  # the same decoding program
    np.testing.assert_array_equal(np.asarray(same), np.asarray(decoded))
    for method, options in (
        ("flowedit", {}),
        ("rf-inversion", {"gamma": 0.5}),
        ("sdedit", {"strength": 0.5}),
    ):
        a = pipe.edit(image, PROMPT, "a dark forest", method, 4, key=jr.key(1), n=2, **options)
        b = pipe.edit(image, PROMPT, "a dark forest", method, 4, key=jr.key(1), n=2, **options)
        assert a.shape == (2, 3, HEIGHT, WIDTH) and bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="unknown method"):
        pipe.edit(image, PROMPT, PROMPT, "magic")

    mask = jnp.zeros((HEIGHT, WIDTH)).at[:16, :16].set(1.0)
    latent_mask = pipe.latent_mask(mask)
    assert latent_mask.shape == pipe.latent_shape(HEIGHT, WIDTH) and 0 < float(latent_mask.mean()) < 1
    painted = pipe.inpaint(image, mask, PROMPT, 3, n=2)
    assert painted.shape == (2, 3, HEIGHT, WIDTH) and not np.array_equal(
        np.asarray(painted[0]), np.asarray(painted[1])
    )
    wider = pipe.outpaint(image, (0, 0, 16, 16), PROMPT, 3)
    assert wider.shape == (1, 3, HEIGHT, WIDTH + 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe.outpaint(image, (0, 0, 8, 0), PROMPT, 3)


def test_edit_command(checkpoint, tmp_path):
    from PIL import Image

    from diffuse_eqx.cli import main

    root, _ = checkpoint
    pixels = (np.random.default_rng(0).uniform(0, 255, (HEIGHT, WIDTH, 3))).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, : WIDTH // 2] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = [
        "edit",
        "--model",
        str(root),
        "--image",
        str(tmp_path / "in.png"),
        "--prompt",
        PROMPT,
        "--steps",
        "3",
    ]
    assert (
        main([*common, "--source-prompt", PROMPT, "--method", "flowedit", "--out", str(tmp_path / "a")]) == 0
    )
    assert (
        main([*common, "--mask", str(tmp_path / "mask.png"), "--n", "2", "--out", str(tmp_path / "b")]) == 0
    )
    assert len(list((tmp_path / "a").glob("*.png"))) == 1 and len(list((tmp_path / "b").glob("*.png"))) == 2
    out = np.asarray(Image.open(next((tmp_path / "a").glob("*.png"))))
    assert out.shape == (HEIGHT, WIDTH, 3)
    assert main([*common, "--method", "rf-inversion", "--strength", "2", "--out", str(tmp_path / "c")]) == 2


def test_edit_example_runs(checkpoint, tmp_path):
    """examples/flux_edit.py on the tiny checkpoint: every method, one figure (the random tiny
    transformer is no contraction at 3 steps: refinement is checked in the test above, at 4)."""
    import importlib.util
    from pathlib import Path

    root, _ = checkpoint
    path = Path(__file__).parents[1] / "examples" / "flux_edit.py"
    spec = importlib.util.spec_from_file_location("flux_edit", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = ["--model", str(root), "--height", "32", "--width", "32", "--steps", "3", "--dtype", "float32"]
    errors = example.main(args + ["--max-sequence-length", "16", "--out", str(tmp_path)])
    assert all(np.isfinite(e) and e > 0 for e in errors.values()), errors
    assert (tmp_path / "flux_edit.png").stat().st_size > 0
