"""FLUX.1 transformer checkpoints (BFL single files and diffusers folders) ->
[`FluxTransformer`][diffuse_eqx.models.flux.FluxTransformer].

Both layouts are mapped here, onto the parameter paths of the Equinox model (BFL's names, blocks
stacked on a leading axis): a table per layout says, for each module of the model, which checkpoint
module(s) it comes from. Differences handled:

- diffusers splits the fused projections: `to_q/to_k/to_v` (image), `add_q_proj/add_k_proj/add_v_proj`
  (text) and, in single blocks, `to_q/to_k/to_v/proj_mlp` for BFL's `linear1`; they are concatenated
  along the output axis in that order;
- diffusers' `norm_out.linear` gives (scale, shift), BFL's `final_layer.adaLN_modulation.1` (shift, scale);
- RMS-norm scales are `.weight` in diffusers, `.scale` in BFL.

Every tensor is read with its expected shape, per-block tensors are stacked, and tensors left over
are reported, all as `CheckpointError`.
"""

import json
import re
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._weights import Checkpoint, CheckpointError, load_into, parameter_paths
from .transformer import FluxTransformer, FluxTransformerConfig


BFL_PREFIX = "model.diffusion_model."
_FLUX1_AXES_DIM = (16, 56, 56)  # for head dim 128

# A source is one checkpoint module name, or several (name, rows) pieces concatenated along axis 0.
# Names in block tables are relative to the block prefix.


def _bfl_tables(c: FluxTransformerConfig):
    top = {
        "img_in": "img_in",
        "txt_in": "txt_in",
        "time_in.in_layer": "time_in.in_layer",
        "time_in.out_layer": "time_in.out_layer",
        "vector_in.in_layer": "vector_in.in_layer",
        "vector_in.out_layer": "vector_in.out_layer",
        "guidance_in.in_layer": "guidance_in.in_layer",
        "guidance_in.out_layer": "guidance_in.out_layer",
        "final_layer.adaLN_modulation": "final_layer.adaLN_modulation.1",
        "final_layer.linear": "final_layer.linear",
    }
    double = {}
    for s in ("img", "txt"):
        double |= {
            f"{s}_mod": f"{s}_mod.lin",
            f"{s}_attn.qkv": f"{s}_attn.qkv",
            f"{s}_attn.query_norm": f"{s}_attn.norm.query_norm",
            f"{s}_attn.key_norm": f"{s}_attn.norm.key_norm",
            f"{s}_attn.proj": f"{s}_attn.proj",
            f"{s}_mlp.in_layer": f"{s}_mlp.0",
            f"{s}_mlp.out_layer": f"{s}_mlp.2",
        }
    single = {
        "modulation": "modulation.lin",
        "linear1": "linear1",
        "query_norm": "norm.query_norm",
        "key_norm": "norm.key_norm",
        "linear2": "linear2",
    }
    return top, ("double_blocks.{}.", double), ("single_blocks.{}.", single)


def _diffusers_tables(c: FluxTransformerConfig):
    d, m = c.hidden_size, c.mlp_hidden
    top = {
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "final_layer.adaLN_modulation": "norm_out.linear",  # (scale, shift): swapped on reading
        "final_layer.linear": "proj_out",
    }
    double = {
        "img_mod": "norm1.linear",
        "img_attn.qkv": (("attn.to_q", d), ("attn.to_k", d), ("attn.to_v", d)),
        "img_attn.query_norm": "attn.norm_q",
        "img_attn.key_norm": "attn.norm_k",
        "img_attn.proj": "attn.to_out.0",
        "img_mlp.in_layer": "ff.net.0.proj",
        "img_mlp.out_layer": "ff.net.2",
        "txt_mod": "norm1_context.linear",
        "txt_attn.qkv": (("attn.add_q_proj", d), ("attn.add_k_proj", d), ("attn.add_v_proj", d)),
        "txt_attn.query_norm": "attn.norm_added_q",
        "txt_attn.key_norm": "attn.norm_added_k",
        "txt_attn.proj": "attn.to_add_out",
        "txt_mlp.in_layer": "ff_context.net.0.proj",
        "txt_mlp.out_layer": "ff_context.net.2",
    }
    single = {
        "modulation": "norm.linear",
        "linear1": (("attn.to_q", d), ("attn.to_k", d), ("attn.to_v", d), ("proj_mlp", m)),
        "query_norm": "attn.norm_q",
        "key_norm": "attn.norm_k",
        "linear2": "proj_out",
    }
    return top, ("transformer_blocks.{}.", double), ("single_transformer_blocks.{}.", single)


def _read(ckpt: Checkpoint, source, leaf: str, shape: tuple[int, ...], swap_halves: bool = False):
    """One parameter of one block: a tensor, or the concatenation of several (fused projections)."""
    if isinstance(source, str):
        x = ckpt.take(f"{source}.{leaf}", shape)
    else:
        x = jnp.concatenate([ckpt.take(f"{name}.{leaf}", (rows, *shape[1:])) for name, rows in source])
    if swap_halves:
        x = jnp.concatenate(jnp.split(x, 2)[::-1])
    return x


def _state(ckpt: Checkpoint, skeleton: FluxTransformer, layout: str) -> dict:
    """`{parameter path: array}` for every parameter of `skeleton`, read from `ckpt`."""
    config = skeleton.config
    top, (double_prefix, double), (single_prefix, single) = (
        _diffusers_tables(config) if layout == "diffusers" else _bfl_tables(config)
    )
    leaf_name = {"weight": "weight", "bias": "bias", "scale": "weight" if layout == "diffusers" else "scale"}
    state = {}
    for path, like in parameter_paths(skeleton).items():
        module, leaf = path.rsplit(".", 1)
        group, _, rest = module.partition(".")
        if group in ("double_blocks", "single_blocks"):
            prefix, table = (double_prefix, double) if group == "double_blocks" else (single_prefix, single)
            source = table[rest]
            blocks = []
            for i in range(like.shape[0]):
                where = prefix.format(i)
                block_source = (
                    where + source if isinstance(source, str) else [(where + n, r) for n, r in source]
                )
                blocks.append(_read(ckpt, block_source, leaf_name[leaf], like.shape[1:]))
            state[path] = jnp.stack(blocks)
        else:
            swap = layout == "diffusers" and module == "final_layer.adaLN_modulation"
            state[path] = _read(ckpt, top[module], leaf_name[leaf], like.shape, swap_halves=swap)
    return state


def _out_channels(out_channels: int, in_channels: int) -> int | None:
    return None if out_channels == in_channels else out_channels


def _n_blocks(ckpt: Checkpoint, prefix: str) -> int:
    found = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _bfl_config(ckpt: Checkpoint, axes_dim: tuple[int, ...] | None) -> FluxTransformerConfig:
    """The architecture of a BFL checkpoint, from its tensor shapes."""
    hidden, in_channels = ckpt.shape("img_in.weight")
    depth, depth_single = _n_blocks(ckpt, "double_blocks."), _n_blocks(ckpt, "single_blocks.")
    if depth:
        head_dim = ckpt.shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
        mlp_hidden = ckpt.shape("double_blocks.0.img_mlp.0.weight")[0]
    else:
        head_dim = ckpt.shape("single_blocks.0.norm.query_norm.scale")[0]
        mlp_hidden = ckpt.shape("single_blocks.0.linear1.weight")[0] - 3 * hidden
    if hidden % head_dim:
        raise CheckpointError(
            f"{ckpt.source}: the QK-norm scale has {head_dim} entries (the head dimension), which does not "
            f"divide the hidden size {hidden} of 'img_in.weight'."
        )
    if axes_dim is None:
        if head_dim != sum(_FLUX1_AXES_DIM):
            raise ValueError(
                f"{ckpt.source}: head dimension {head_dim} is not FLUX.1's 128 and BFL files do not record "
                f"the RoPE axes; pass axes_dim=(...) summing to {head_dim}."
            )
        axes_dim = _FLUX1_AXES_DIM
    return FluxTransformerConfig(
        in_channels=in_channels,
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth=depth,
        depth_single=depth_single,
        axes_dim=tuple(axes_dim),
        context_in_dim=ckpt.shape("txt_in.weight")[1],
        vec_in_dim=ckpt.shape("vector_in.in_layer.weight")[1],
        mlp_ratio=mlp_hidden / hidden,
        guidance_embed="guidance_in.in_layer.weight" in ckpt,
        qkv_bias=depth == 0 or "double_blocks.0.img_attn.qkv.bias" in ckpt,
        out_channels=_out_channels(ckpt.shape("final_layer.linear.weight")[0], in_channels),
    )


def _diffusers_config(file: Path, axes_dim: tuple[int, ...] | None) -> FluxTransformerConfig:
    """The architecture of a diffusers `FluxTransformer2DModel`, from its `config.json`."""
    try:
        cfg = json.loads(file.read_text())
        if cfg.get("_class_name", "FluxTransformer2DModel") != "FluxTransformer2DModel":
            raise CheckpointError(f"{file}: a {cfg['_class_name']}, not a FluxTransformer2DModel.")
        if cfg.get("patch_size", 1) != 1:
            raise CheckpointError(f"{file}: patch_size={cfg['patch_size']}; FLUX.1 packs latents with 1.")
        heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
        rope = tuple(cfg.get("axes_dims_rope", _FLUX1_AXES_DIM))
        config = FluxTransformerConfig(
            in_channels=cfg["in_channels"],
            hidden_size=heads * head_dim,
            num_heads=heads,
            depth=cfg["num_layers"],
            depth_single=cfg["num_single_layers"],
            axes_dim=rope,
            context_in_dim=cfg["joint_attention_dim"],
            vec_in_dim=cfg["pooled_projection_dim"],
            mlp_ratio=4.0,  # fixed in diffusers
            guidance_embed=bool(cfg.get("guidance_embeds", False)),
            qkv_bias=True,
            out_channels=_out_channels(cfg.get("out_channels") or cfg["in_channels"], cfg["in_channels"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{file}: not a valid FluxTransformer2DModel config ({e!r}).") from e
    if axes_dim is not None and tuple(axes_dim) != rope:
        raise ValueError(f"axes_dim={tuple(axes_dim)} contradicts axes_dims_rope={list(rope)} in {file}.")
    return config


def load_transformer(
    path: str | Path, dtype=jnp.float32, axes_dim: tuple[int, ...] | None = None
) -> FluxTransformer:
    """See [`FluxTransformer.from_pretrained`][diffuse_eqx.models.flux.FluxTransformer.from_pretrained]."""
    path = Path(path)
    config_file = path / "config.json"
    if path.is_dir() and config_file.is_file():
        layout, config = "diffusers", _diffusers_config(config_file, axes_dim)
        ckpt = Checkpoint(path, dtype)
    else:
        layout = "bfl"
        ckpt = Checkpoint(path, dtype, strip_prefix=BFL_PREFIX)
        if "x_embedder.weight" in ckpt:
            raise CheckpointError(
                f"{path}: diffusers-layout tensors without a config.json; pass the diffusers `transformer/` "
                f"folder that holds both."
            )
        config = _bfl_config(ckpt, axes_dim)
    skeleton = eqx.filter_eval_shape(FluxTransformer, config, dtype=dtype, key=jr.key(0))
    state = _state(ckpt, skeleton, layout)
    ckpt.finish()
    return load_into(skeleton, state, ckpt.source)
