"""The FLUX autoencoder against diffusers' `AutoencoderKL` (PyTorch, CPU) on small random configurations,
and its checkpoint converter on diffusers folders and BFL single files."""

import json
import re
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from flux_helpers import FLUX_VAE, SD_VAE, autoencoder, autoencoder_to_bfl, rel_err, save  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from diffuse_eqx.models._weights import CheckpointError  # noqa: E402
from diffuse_eqx.models.flux.autoencoder import Autoencoder, AutoencoderConfig  # noqa: E402


SIZE = 32  # image side


def reference(vae, image, latent):
    cfg = vae.config
    shift = cfg.shift_factor or 0.0
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(image)[None]).latent_dist.mean
        z = (mean - shift) * cfg.scaling_factor
        x = vae.decode(torch.from_numpy(latent)[None] / cfg.scaling_factor + shift).sample
    return z[0].numpy(), x[0].numpy()


def inputs(vae, seed=1):
    rng = np.random.default_rng(seed)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    image = rng.uniform(-1, 1, size=(3, SIZE, SIZE)).astype(np.float32)
    latent = rng.normal(size=(vae.config.latent_channels, SIZE // f, SIZE // f)).astype(np.float32)
    return image, latent


@pytest.fixture(scope="module")
def flux_vae(tmp_path_factory):
    """A FLUX-like diffusers VAE, saved as a diffusers folder; with its reference outputs."""
    vae = autoencoder(**FLUX_VAE)
    folder = save(vae, tmp_path_factory.mktemp("flux") / "vae")
    image, latent = inputs(vae)
    return vae, folder, image, latent, reference(vae, image, latent)


@eqx.filter_jit
def encode_decode(ae, image, latent):
    return ae.encode(image), ae.decode(latent)


def check_parity(ae, image, latent, ref):
    z, x = encode_decode(ae, jnp.asarray(image, jnp.float32), jnp.asarray(latent, jnp.float32))
    assert z.shape == ref[0].shape and x.shape == ref[1].shape
    assert z.dtype == x.dtype == jnp.float32
    errors = rel_err(z, ref[0]), rel_err(x, ref[1])
    print(f"relative max errors: encode {errors[0]:.2e}, decode {errors[1]:.2e}")
    assert max(errors) <= 1e-4, errors
    return errors


def test_parity_flux_like(flux_vae):
    vae, folder, image, latent, ref = flux_vae
    ae = Autoencoder.from_pretrained(folder)
    assert ae.config == AutoencoderConfig(**FLUX_VAE)
    assert ae.config.downsampling == 8 and ae.quant_conv is None and ae.post_quant_conv is None
    check_parity(ae, image, latent, ref)


def test_parity_quant_convs(tmp_path):
    vae = autoencoder(**SD_VAE, seed=2)
    save(vae, tmp_path / "vae")
    image, latent = inputs(vae, seed=3)
    ae = Autoencoder.from_pretrained(tmp_path / "vae")
    assert ae.quant_conv is not None and ae.post_quant_conv is not None and ae.config.shift_factor == 0.0
    assert ae.encoder.mid.attn_1 is None
    check_parity(ae, image, latent, reference(vae, image, latent))


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_bfl_single_file_gives_the_same_model(flux_vae, tmp_path, prefix):
    vae, folder, *_ = flux_vae
    bfl = autoencoder_to_bfl(vae)
    assert "decoder.up.1.block.0.nin_shortcut.weight" in bfl and bfl["encoder.mid.attn_1.q.weight"].ndim == 4
    save_file({prefix + k: v for k, v in bfl.items()}, tmp_path / "ae.safetensors")
    ours = Autoencoder.from_pretrained(tmp_path / "ae.safetensors")  # config inferred from the shapes
    theirs = Autoencoder.from_pretrained(folder)
    assert ours.config == theirs.config
    assert bool(eqx.tree_equal(ours, theirs))  # every leaf equal


def test_sharded_folder_and_legacy_single_file(flux_vae, tmp_path):
    vae, folder, *_ = flux_vae
    theirs = Autoencoder.from_pretrained(folder)
    vae.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert bool(eqx.tree_equal(Autoencoder.from_pretrained(tmp_path / "sharded"), theirs))
    # diffusers' names, in one file without config.json, with the old attention names
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {
        re.sub(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.", lambda m: f"attentions.0.{old[m[1]]}.", k): v
        for k, v in vae.state_dict().items()
    }
    assert "decoder.mid_block.attentions.0.proj_attn.bias" in state
    save_file(state, tmp_path / "vae.safetensors")
    assert bool(eqx.tree_equal(Autoencoder.from_pretrained(tmp_path / "vae.safetensors"), theirs))


def broken_folder(src, dst, edit):
    """A copy of the diffusers folder `src` whose tensors went through `edit`."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    from safetensors.torch import load_file

    tensors = load_file(src / "diffusion_pytorch_model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "diffusion_pytorch_model.safetensors")
    return dst


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda t: t.pop("decoder.up_blocks.3.resnets.1.conv2.bias"),
            "missing tensor 'decoder.up_blocks.3.resnets.1.conv2.bias'",
        ),
        (
            lambda t: t.pop("encoder.mid_block.attentions.0.to_k.weight"),
            "missing tensor 'encoder.mid_block.attentions.0.to_k.weight'",
        ),
        (
            lambda t: t.update({"decoder.extra.weight": torch.zeros(2)}),
            "unexpected tensors.*'decoder.extra.weight'",
        ),
        (
            lambda t: t.update({"encoder.conv_in.bias": torch.zeros(5)}),
            "'encoder.conv_in.bias' has shape \\(5,\\)",
        ),
        (
            lambda t: t.update({"decoder.mid_block.attentions.0.to_q.weight": torch.zeros(64, 32)}),
            "'decoder.mid_block.attentions.0.to_q.weight' has shape \\(64, 32\\)",
        ),
    ],
)
def test_bad_diffusers_checkpoints_name_the_tensor(flux_vae, tmp_path, edit, match):
    folder = broken_folder(flux_vae[1], tmp_path / "vae", edit)
    with pytest.raises(CheckpointError, match=match):
        Autoencoder.from_pretrained(folder)


def test_bad_bfl_checkpoint_names_the_tensor(flux_vae, tmp_path):
    bfl = autoencoder_to_bfl(flux_vae[0])
    del bfl["decoder.up.0.block.1.norm2.weight"]
    save_file(bfl, tmp_path / "ae.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'decoder.up.0.block.1.norm2.weight'"):
        Autoencoder.from_pretrained(tmp_path / "ae.safetensors")


def test_corrupt_file_and_bad_config(flux_vae, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(flux_vae[1], folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00 not a safetensors file")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        Autoencoder.from_pretrained(folder)
    shutil.copy(flux_vae[1] / "diffusion_pytorch_model.safetensors", folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        Autoencoder.from_pretrained(folder)
    (folder / "config.json").write_text(
        json.dumps({**json.loads((flux_vae[1] / "config.json").read_text()), "act_fn": "gelu"})
    )
    with pytest.raises(ValueError, match="act_fn"):
        Autoencoder.from_pretrained(folder)


def test_bfloat16(flux_vae):
    vae, folder, image, latent, ref = flux_vae
    ae = Autoencoder.from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(eqx.filter(ae, eqx.is_array)))
    z, x = encode_decode(ae, jnp.asarray(image, jnp.float32), jnp.asarray(latent, jnp.float32))
    assert z.dtype == x.dtype == jnp.bfloat16
    assert bool(jnp.isfinite(x).all()) and bool(jnp.isfinite(z).all())
    errors = rel_err(z.astype(jnp.float32), ref[0]), rel_err(x.astype(jnp.float32), ref[1])
    print(f"bf16 relative max errors: encode {errors[0]:.2e}, decode {errors[1]:.2e}")
    assert max(errors) < 0.1, errors  # diffusers in bf16 (torch, CPU): 3.4e-2 and 2.0e-2


def test_batches_by_vmap_and_bad_shapes(flux_vae):
    ae = Autoencoder.from_pretrained(flux_vae[1])
    latents = jnp.asarray(np.stack([flux_vae[3]] * 2), jnp.float32)
    images = eqx.filter_jit(lambda ae, zs: jax.vmap(ae.decode)(zs))(ae, latents)
    assert images.shape == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(images[1], flux_vae[4][1], rtol=0, atol=1e-4 * np.abs(flux_vae[4][1]).max())
    with pytest.raises(ValueError, match="latent of shape \\(16, h, w\\)"):
        ae.decode(jnp.zeros((4, 4, 4), jnp.float32))
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode(jnp.zeros((3, 12, 16), jnp.float32))


def test_config_checks():
    assert AutoencoderConfig.flux().block_out_channels == (128, 256, 512, 512)
    assert AutoencoderConfig.tiny().downsampling == 8
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderConfig(block_out_channels=(48, 64), norm_num_groups=32)
