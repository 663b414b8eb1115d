"""FLUX.1 transformer: parity with diffusers' `FluxTransformer2DModel` on small random configurations,
both checkpoint layouts, checkpoint errors, bf16, and a compiled size that does not grow with depth."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flux_helpers import TRANSFORMER as SMALL, rel_err, save, transformer as reference, transformer_to_bfl
from safetensors.torch import save_file

from diffuse_eqx.models._weights import CheckpointError
from diffuse_eqx.models.flux.transformer import FluxTransformer, FluxTransformerConfig


diffusers = pytest.importorskip("diffusers")

AXES = (4, 6, 6)


def small_config(**changes) -> FluxTransformerConfig:
    base = dict(
        in_channels=16,
        hidden_size=32,
        num_heads=2,
        depth=2,
        depth_single=2,
        axes_dim=AXES,
        context_in_dim=32,
        vec_in_dim=24,
        guidance_embed=True,
    )
    return FluxTransformerConfig(**(base | changes))


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("flux_transformer")


@pytest.fixture(scope="module")
def folders(tmp_root):
    """The small diffusers `transformer/` folders, with (dev) and without (schnell) guidance."""
    name = {True: "flux_dev", False: "flux_schnell"}
    return {g: save(reference(g), tmp_root / name[g] / "transformer") for g in (True, False)}


def inputs(l_rows: int, l_cols: int, l_txt: int, seed: int, frame: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(l_rows * l_cols, SMALL["in_channels"])).astype(np.float32)
    txt = rng.normal(size=(l_txt, SMALL["joint_attention_dim"])).astype(np.float32)
    pooled = rng.normal(size=(SMALL["pooled_projection_dim"],)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(l_rows), np.arange(l_cols), indexing="ij")
    img_ids = np.stack([np.full(rows.size, frame), rows.ravel(), cols.ravel()], -1).astype(np.float32)
    txt_ids = np.zeros((l_txt, 3), np.float32)
    return img, txt, pooled, img_ids, txt_ids


def run_reference(model, img, txt, pooled, t, guidance, img_ids, txt_ids) -> np.ndarray:
    with torch.no_grad():
        out = model(
            hidden_states=torch.from_numpy(img)[None],
            encoder_hidden_states=torch.from_numpy(txt)[None],
            pooled_projections=torch.from_numpy(pooled)[None],
            timestep=torch.tensor([t], dtype=torch.float32),  # diffusers multiplies by 1000 itself
            img_ids=torch.from_numpy(img_ids),
            txt_ids=torch.from_numpy(txt_ids),
            guidance=None if guidance is None else torch.tensor([guidance], dtype=torch.float32),
            return_dict=False,
        )[0]
    return out[0].numpy()


@eqx.filter_jit
def run_ours(model, img, txt, pooled, t, guidance, img_ids, txt_ids):
    return model(img, txt, pooled, t, guidance, img_ids, txt_ids)


def f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


def bfl_tensors() -> dict:
    return transformer_to_bfl(reference(True))


def assert_same_model(a: FluxTransformer, b: FluxTransformer):
    assert a.config == b.config
    leaves_a, tree_a = jax.tree.flatten(eqx.filter(a, eqx.is_array))
    leaves_b, tree_b = jax.tree.flatten(eqx.filter(b, eqx.is_array))
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", [True, False])
def test_parity_with_diffusers(guidance, folders):
    model = FluxTransformer.from_pretrained(folders[guidance])
    assert model.config == small_config(guidance_embed=guidance)
    ratios = []
    for (rows, cols, l_txt, frame), t in zip([(3, 4, 5, 0), (4, 5, 7, 1)], [0.7, 0.25]):
        img, txt, pooled, img_ids, txt_ids = inputs(rows, cols, l_txt, seed=rows, frame=frame)
        g = 3.5 if guidance else None
        ref = run_reference(reference(guidance), img, txt, pooled, t, g, img_ids, txt_ids)
        out = run_ours(
            model, *f32(img, txt, pooled), jnp.float32(t), g and jnp.float32(g), *f32(img_ids, txt_ids)
        )
        assert out.dtype == jnp.float32 and out.shape == ref.shape
        ratios.append(rel_err(out, ref))
    print(f"guidance={guidance}: max|ours - diffusers| / max|diffusers| = {ratios}")
    assert max(ratios) <= 1e-4, ratios


def test_bfl_single_file_matches_diffusers_folder(folders, tmp_root):
    folder_model = FluxTransformer.from_pretrained(folders[True])
    tensors = bfl_tensors()
    save_file(tensors, tmp_root / "flux1-small.safetensors")
    save_file(
        {"model.diffusion_model." + k: v for k, v in tensors.items()}, tmp_root / "flux1-prefixed.safetensors"
    )
    for name in ("flux1-small.safetensors", "flux1-prefixed.safetensors"):
        model = FluxTransformer.from_pretrained(tmp_root / name, axes_dim=AXES)
        assert_same_model(model, folder_model)


def test_bfl_config_inference_needs_axes_for_small_heads(tmp_root):
    save_file(bfl_tensors(), tmp_root / "flux1-axes.safetensors")
    with pytest.raises(ValueError, match="axes_dim"):
        FluxTransformer.from_pretrained(tmp_root / "flux1-axes.safetensors")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("double_blocks.1.img_attn.proj.weight"), "double_blocks.1.img_attn.proj.weight"),
        (
            lambda sd: sd.update({"double_blocks.0.extra.weight": torch.zeros(3)}),
            "double_blocks.0.extra.weight",
        ),
        (
            lambda sd: sd.update({"single_blocks.1.linear2.weight": torch.zeros(32, 100)}),
            "single_blocks.1.linear2.weight",
        ),
        (lambda sd: sd.pop("guidance_in.out_layer.bias"), "guidance_in.out_layer.bias"),
    ],
    ids=["missing", "unexpected", "misshaped", "missing_guidance_bias"],
)
def test_bfl_checkpoint_errors(edit, match, tmp_root):
    tensors = dict(bfl_tensors())
    edit(tensors)
    file = tmp_root / "flux1-broken.safetensors"
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match=match.replace(".", r"\.")):
        FluxTransformer.from_pretrained(file, axes_dim=AXES)


def test_diffusers_checkpoint_errors(folders, tmp_root):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_root / "broken" / "transformer"
    shutil.copytree(folders[False], folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors.pop("transformer_blocks.0.attn.add_k_proj.bias")
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.0\.attn\.add_k_proj\.bias"):
        FluxTransformer.from_pretrained(folder)


def test_truncated_file(tmp_root):
    file = tmp_root / "flux1-truncated.safetensors"
    save_file(bfl_tensors(), file)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="flux1-truncated.safetensors"):
        FluxTransformer.from_pretrained(file, axes_dim=AXES)


def test_bf16(folders):
    folder = folders[True]
    model32 = FluxTransformer.from_pretrained(folder)
    model16 = FluxTransformer.from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(eqx.filter(model16, eqx.is_array)))
    img, txt, pooled, img_ids, txt_ids = inputs(3, 4, 5, seed=3)
    args = (*f32(img, txt, pooled), jnp.float32(0.7), jnp.float32(3.5), *f32(img_ids, txt_ids))
    out32, out16 = run_ours(model32, *args), run_ours(model16, *args)
    assert out16.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out16)))
    err = float(jnp.max(jnp.abs(out16.astype(jnp.float32) - out32)) / jnp.max(jnp.abs(out32)))
    print(f"bf16: max|bf16 - fp32| / max|fp32| = {err:.2e}")
    assert err <= 5e-2


def test_compiled_size_does_not_grow_with_depth():
    def n_equations(depth: int) -> int:
        config = small_config(depth=depth, depth_single=depth)
        skeleton = eqx.filter_eval_shape(FluxTransformer, config, key=jax.random.key(0))
        params, static = eqx.partition(skeleton, lambda x: isinstance(x, jax.ShapeDtypeStruct))
        forward = lambda p, *args: eqx.combine(p, static)(*args)  # noqa: E731
        args = [
            jax.ShapeDtypeStruct(shape, jnp.float32)
            for shape in [(4, 16), (3, 32), (24,), (), (), (4, 3), (3, 3)]
        ]
        return len(jax.make_jaxpr(forward)(params, *args).jaxpr.eqns)

    assert n_equations(2) == n_equations(6)


def test_full_size_matches_diffusers_parameter_count():
    for config, guidance in ((FluxTransformerConfig.dev(), True), (FluxTransformerConfig.schnell(), False)):
        ours = eqx.filter_eval_shape(FluxTransformer, config, dtype=jnp.bfloat16, key=jax.random.key(0))
        with torch.device("meta"):
            ref = diffusers.FluxTransformer2DModel(guidance_embeds=guidance)
        assert sum(x.size for x in jax.tree.leaves(ours)) == sum(p.numel() for p in ref.parameters())


def test_call_errors():
    # The checks run before any weight is used, so parameter-free skeletons suffice.
    model = eqx.filter_eval_shape(FluxTransformer, small_config(guidance_embed=False), key=jax.random.key(0))
    img, txt, pooled, img_ids, txt_ids = f32(*inputs(2, 2, 3, seed=0))
    with pytest.raises(ValueError, match="guidance=None"):
        model(img, txt, pooled, 0.5, 3.5, img_ids, txt_ids)
    with pytest.raises(ValueError, match="`txt`"):
        model(img, txt[:, :8], pooled, 0.5, None, img_ids, txt_ids)
    dev = eqx.filter_eval_shape(FluxTransformer, small_config(), key=jax.random.key(0))
    with pytest.raises(ValueError, match="guidance scale"):
        dev(img, txt, pooled, 0.5, None, img_ids, txt_ids)
    with pytest.raises(ValueError, match="axes_dim"):
        small_config(axes_dim=(4, 4, 4))
