"""FLUX.1 transformer checkpoints (BFL single files and diffusers folders) ->
[`FluxTransformer`][diffuse_eqx.models.flux.FluxTransformer].

The model's modules carry BFL's names, blocks stacked on a leading axis, so a BFL file maps onto the
parameter paths by identity: `double_blocks.img_attn.qkv.weight[i]` is `double_blocks.{i}.img_attn.qkv.weight`
(after the optional `model.diffusion_model.` prefix). The diffusers layout is the one converted, by the
table of `_diffusers_modules`, which also handles its differences:

- diffusers splits the fused projections: `to_q/to_k/to_v` (image), `add_q_proj/add_k_proj/add_v_proj`
  (text) and, in single blocks, `to_q/to_k/to_v/proj_mlp` for BFL's `linear1`; they are concatenated
  along the output axis in that order;
- diffusers' `norm_out.linear` gives (scale, shift), BFL's `final_layer.adaLN_modulation.1` (shift, scale);
- RMS-norm scales are `.weight` in diffusers, `.scale` in BFL.

Every tensor is read with its expected shape, per-block tensors are stacked, and tensors left over
are reported, all as `CheckpointError`. The architecture is read from the checkpoint as the fields of a
[`FluxTransformerConfig`][diffuse_eqx.models.flux.FluxTransformerConfig] (plain values; this module does
not import the model).
"""

import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from .._weights import Checkpoint, CheckpointError, parameter_paths, read_config, read_json


BFL_PREFIX = "model.diffusion_model."
_FLUX1_AXES_DIM = (16, 56, 56)  # for head dim 128
_BLOCKS = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}


def _diffusers_modules(d: int, m: int) -> dict[str, str | tuple[tuple[str, int], ...]]:
    """Our module path (BFL's name, without the block index) -> its diffusers module: one name, or
    several `(name, rows)` pieces concatenated along axis 0. Block entries are relative to the block
    (`transformer_blocks.{i}.`, `single_transformer_blocks.{i}.`)."""
    table = {
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "final_layer.adaLN_modulation.1": "norm_out.linear",  # (scale, shift): swapped on reading
        "final_layer.linear": "proj_out",
    }
    # double_blocks.{i} <- transformer_blocks.{i}
    table |= {
        "double_blocks.img_mod.lin": "norm1.linear",
        "double_blocks.img_attn.qkv": (("attn.to_q", d), ("attn.to_k", d), ("attn.to_v", d)),
        "double_blocks.img_attn.norm.query_norm": "attn.norm_q",
        "double_blocks.img_attn.norm.key_norm": "attn.norm_k",
        "double_blocks.img_attn.proj": "attn.to_out.0",
        "double_blocks.img_mlp.0": "ff.net.0.proj",
        "double_blocks.img_mlp.2": "ff.net.2",
        "double_blocks.txt_mod.lin": "norm1_context.linear",
        "double_blocks.txt_attn.qkv": (
            ("attn.add_q_proj", d),
            ("attn.add_k_proj", d),
            ("attn.add_v_proj", d),
        ),
        "double_blocks.txt_attn.norm.query_norm": "attn.norm_added_q",
        "double_blocks.txt_attn.norm.key_norm": "attn.norm_added_k",
        "double_blocks.txt_attn.proj": "attn.to_add_out",
        "double_blocks.txt_mlp.0": "ff_context.net.0.proj",
        "double_blocks.txt_mlp.2": "ff_context.net.2",
    }
    # single_blocks.{i} <- single_transformer_blocks.{i}
    return table | {
        "single_blocks.modulation.lin": "norm.linear",
        "single_blocks.linear1": (("attn.to_q", d), ("attn.to_k", d), ("attn.to_v", d), ("proj_mlp", m)),
        "single_blocks.norm.query_norm": "attn.norm_q",
        "single_blocks.norm.key_norm": "attn.norm_k",
        "single_blocks.linear2": "proj_out",
    }


def _read(ckpt: Checkpoint, prefix: str, source, leaf: str, shape, swap_halves: bool = False) -> jax.Array:
    """One parameter (of one block): a tensor, or the concatenation of several (fused projections)."""
    if isinstance(source, str):
        x = ckpt.take(f"{prefix}{source}.{leaf}", shape)
    else:
        x = jnp.concatenate(
            [ckpt.take(f"{prefix}{name}.{leaf}", (rows, *shape[1:])) for name, rows in source]
        )
    if swap_halves:
        x = jnp.concatenate(jnp.split(x, 2)[::-1])
    return x


def convert_transformer(ckpt: Checkpoint, skeleton: eqx.Module, layout: str) -> dict[str, jax.Array]:
    """`{parameter path: array}` for every parameter of `skeleton` (a `FluxTransformer`, e.g. from
    `eqx.filter_eval_shape`), read from `ckpt` in the `"bfl"` or `"diffusers"` layout; raises
    `CheckpointError` for a missing or mis-shaped tensor, and for tensors left over."""
    config = skeleton.config
    table = _diffusers_modules(config.hidden_size, config.mlp_hidden) if layout == "diffusers" else None
    state = {}
    for path, like in parameter_paths(skeleton).items():
        module, leaf = path.rsplit(".", 1)
        group, _, in_block = module.partition(".")
        stacked = group in _BLOCKS
        if table is None:  # BFL: the identity, with the block index put back
            block, source = group, in_block if stacked else module
        else:
            block, source, leaf = _BLOCKS.get(group), table[module], "weight" if leaf == "scale" else leaf
        if stacked:  # one tensor per block
            n = like.shape[0]
            state[path] = jnp.stack(
                [_read(ckpt, f"{block}.{i}.", source, leaf, like.shape[1:]) for i in range(n)]
            )
        else:
            swap = table is not None and module == "final_layer.adaLN_modulation.1"
            state[path] = _read(ckpt, "", source, leaf, like.shape, swap_halves=swap)
    ckpt.finish()
    return state


def _out_channels(out_channels: int, in_channels: int) -> int | None:
    return None if out_channels == in_channels else out_channels


def _n_blocks(ckpt: Checkpoint, prefix: str) -> int:
    found = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def bfl_config(ckpt: Checkpoint, axes_dim: tuple[int, ...] | None) -> dict:
    """The `FluxTransformerConfig` fields of a BFL checkpoint, from its tensor shapes (BFL files do not
    record the RoPE axes: FLUX.1's for head dimension 128, else `axes_dim` must be given)."""
    if "x_embedder.weight" in ckpt:
        raise CheckpointError(
            f"{ckpt.source}: diffusers-layout tensors without a config.json; pass the diffusers "
            f"`transformer/` folder that holds both."
        )
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
    return dict(
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


def diffusers_config(file: Path, axes_dim: tuple[int, ...] | None) -> dict:
    """The `FluxTransformerConfig` fields of a diffusers `FluxTransformer2DModel`, from its `config.json`."""
    cfg = read_config(read_json(file), _DIFFUSERS_FIELDS, _DIFFUSERS_DEFAULTS, file)
    if cfg["_class_name"] != "FluxTransformer2DModel":
        raise CheckpointError(f"{file}: a {cfg['_class_name']}, not a FluxTransformer2DModel.")
    if cfg["patch_size"] != 1:
        raise CheckpointError(f"{file}: patch_size={cfg['patch_size']}; FLUX.1 packs latents with 1.")
    rope = cfg["axes_dims_rope"]
    if axes_dim is not None and tuple(axes_dim) != rope:
        raise ValueError(f"axes_dim={tuple(axes_dim)} contradicts axes_dims_rope={list(rope)} in {file}.")
    # sizes that FluxTransformerConfig names otherwise, checked here to name the key of the file
    for key in ("num_attention_heads", "attention_head_dim", "joint_attention_dim", "pooled_projection_dim"):
        if cfg[key] < 1:
            raise CheckpointError(f"{file}: {key}={cfg[key]} must be >= 1.")
    heads, in_channels = cfg["num_attention_heads"], cfg["in_channels"]
    return dict(
        in_channels=in_channels,
        hidden_size=heads * cfg["attention_head_dim"],
        num_heads=heads,
        depth=cfg["num_layers"],
        depth_single=cfg["num_single_layers"],
        axes_dim=rope,
        context_in_dim=cfg["joint_attention_dim"],
        vec_in_dim=cfg["pooled_projection_dim"],
        mlp_ratio=4.0,  # fixed in diffusers
        guidance_embed=cfg["guidance_embeds"],
        qkv_bias=True,
        out_channels=_out_channels(cfg["out_channels"] or in_channels, in_channels),
    )


# The keys of a diffusers `FluxTransformer2DModel` config.json, with diffusers' defaults where it has
# them (the sizes are required).
_DIFFUSERS_FIELDS = dict(
    _class_name=str,
    patch_size=int,
    in_channels=int,
    out_channels=int | None,
    num_layers=int,
    num_single_layers=int,
    attention_head_dim=int,
    num_attention_heads=int,
    joint_attention_dim=int,
    pooled_projection_dim=int,
    guidance_embeds=bool,
    axes_dims_rope=tuple[int, ...],
)
_DIFFUSERS_DEFAULTS = dict(
    _class_name="FluxTransformer2DModel",
    patch_size=1,
    out_channels=None,
    guidance_embeds=False,
    axes_dims_rope=_FLUX1_AXES_DIM,
)
