"""Checkpoint names of the FLUX autoencoder: BFL's `ae.safetensors` and diffusers' `AutoencoderKL`.

The Equinox model uses BFL's names, so a BFL checkpoint maps onto it one to one (after an optional key
prefix). Diffusers renames the same layers:

| ours / BFL                             | diffusers                                         |
|----------------------------------------|---------------------------------------------------|
| `encoder.down.{i}.block.{j}`           | `encoder.down_blocks.{i}.resnets.{j}`             |
| `encoder.down.{i}.downsample`          | `encoder.down_blocks.{i}.downsamplers.0`          |
| `decoder.up.{i}.block.{j}`             | `decoder.up_blocks.{L-1-i}.resnets.{j}` (reversed) |
| `decoder.up.{i}.upsample`              | `decoder.up_blocks.{L-1-i}.upsamplers.0`          |
| `*.mid.block_1`, `*.mid.block_2`       | `*.mid_block.resnets.0`, `*.mid_block.resnets.1`  |
| `*.mid.attn_1.{norm,q,k,v,proj_out}`   | `*.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` |
| `*.nin_shortcut`                       | `*.conv_shortcut`                                 |
| `{encoder,decoder}.norm_out`           | `{encoder,decoder}.conv_norm_out`                 |

Older diffusers files name the attention layers `query`, `key`, `value`, `proj_attn`; both are read.
Attention projections are 1x1 convolutions `(C, C, 1, 1)` in BFL and linear layers `(C, C)` in
diffusers; both are accepted. Convolution biases become Equinox's `(C, 1, 1)`.
"""

import re
from collections.abc import Callable

import jax

from .._weights import Checkpoint, CheckpointError


_ANCHOR = "encoder.conv_in.weight"


def _layout(ckpt: Checkpoint, n_levels: int | None = None) -> tuple[Callable[[str], str], str]:
    """The function from our parameter names to the checkpoint's keys, and the layout's name.
    `n_levels` (resolution levels) numbers diffusers' reversed `up_blocks`; by default it is counted."""
    prefixes = sorted({k[: -len(_ANCHOR)] for k in ckpt.keys() if k.endswith(_ANCHOR)})
    if len(prefixes) != 1:
        found = "no" if not prefixes else f"{len(prefixes)} ({prefixes})"
        raise CheckpointError(
            f"{ckpt.source}: expected one autoencoder, found by its {_ANCHOR!r} tensor; found {found}."
        )
    prefix = prefixes[0]
    if prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" not in ckpt:
        return (lambda name: prefix + name), "BFL"
    legacy = prefix + "encoder.mid_block.attentions.0.query.weight" in ckpt
    attention = (
        {"norm": "group_norm", "q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"}
        if legacy
        else {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    )
    if n_levels is None:
        up_block = re.escape(prefix) + r"decoder\.up_blocks\.\d+\.resnets\.0\.conv1\.weight"
        n_levels = sum(1 for k in ckpt.keys() if re.fullmatch(up_block, k))

    def diffusers(name: str) -> str:
        name = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", name)
        name = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", name)
        name = re.sub(
            r"^decoder\.up\.(\d+)\.(block|upsample)\.",
            lambda m: (
                f"decoder.up_blocks.{n_levels - 1 - int(m[1])}."
                + ("resnets." if m[2] == "block" else "upsamplers.0.")
            ),
            name,
        )
        name = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", name)
        name = re.sub(
            r"\.mid\.attn_1\.(\w+)\.", lambda m: f".mid_block.attentions.0.{attention[m[1]]}.", name
        )
        name = name.replace(".nin_shortcut.", ".conv_shortcut.")
        name = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", name)
        return prefix + name

    return diffusers, "diffusers"


def infer_autoencoder_config(ckpt: Checkpoint) -> dict:
    """`AutoencoderConfig` fields read from the tensors' shapes (either layout): channels, levels,
    residual blocks per level, quant convs and mid-block attention. GroupNorm groups, `scaling_factor`
    and `shift_factor` are not in the tensors and keep their (FLUX) defaults."""
    key, _ = _layout(ckpt)
    levels = []
    while key(f"encoder.down.{len(levels)}.block.0.conv1.weight") in ckpt:
        levels.append(ckpt.shape(key(f"encoder.down.{len(levels)}.block.0.conv1.weight"))[0])
    n_blocks = 0
    while key(f"encoder.down.0.block.{n_blocks}.conv1.weight") in ckpt:
        n_blocks += 1
    if not levels:
        raise CheckpointError(
            f"{ckpt.source}: missing tensor {key('encoder.down.0.block.0.conv1.weight')!r}."
        )
    return dict(
        in_channels=ckpt.shape(key("encoder.conv_in.weight"))[1],
        out_channels=ckpt.shape(key("decoder.conv_out.weight"))[0],
        latent_channels=ckpt.shape(key("decoder.conv_in.weight"))[1],
        block_out_channels=tuple(levels),
        layers_per_block=n_blocks,
        use_quant_conv=key("quant_conv.weight") in ckpt,
        use_post_quant_conv=key("post_quant_conv.weight") in ckpt,
        mid_block_add_attention=key("encoder.mid.attn_1.q.weight") in ckpt,
    )


def _layers(config) -> list[tuple[str, str, tuple[int, ...]]]:
    """`(our layer path, kind, sizes)` for every layer of an `Autoencoder` with this config."""
    chs, n, c = config.block_out_channels, config.layers_per_block, config.latent_channels
    layers = []

    def resnet(path, c_in, c_out):
        layers.extend([(f"{path}.norm1", "norm", (c_in,)), (f"{path}.conv1", "conv", (c_in, c_out, 3))])
        layers.extend([(f"{path}.norm2", "norm", (c_out,)), (f"{path}.conv2", "conv", (c_out, c_out, 3))])
        if c_in != c_out:
            layers.append((f"{path}.nin_shortcut", "conv", (c_in, c_out, 1)))

    def mid(path):
        resnet(f"{path}.block_1", chs[-1], chs[-1])
        if config.mid_block_add_attention:
            layers.append((f"{path}.attn_1.norm", "norm", (chs[-1],)))
            layers.extend((f"{path}.attn_1.{p}", "linear", (chs[-1],)) for p in ("q", "k", "v", "proj_out"))
        resnet(f"{path}.block_2", chs[-1], chs[-1])

    layers.append(("encoder.conv_in", "conv", (config.in_channels, chs[0], 3)))
    c_in = chs[0]
    for i, ch in enumerate(chs):
        for j in range(n):
            resnet(f"encoder.down.{i}.block.{j}", c_in, ch)
            c_in = ch
        if i < len(chs) - 1:
            layers.append((f"encoder.down.{i}.downsample.conv", "conv", (ch, ch, 3)))
    mid("encoder.mid")
    layers.append(("encoder.norm_out", "norm", (chs[-1],)))
    layers.append(("encoder.conv_out", "conv", (chs[-1], 2 * c, 3)))

    layers.append(("decoder.conv_in", "conv", (c, chs[-1], 3)))
    mid("decoder.mid")
    c_in = chs[-1]
    for i in reversed(range(len(chs))):
        for j in range(n + 1):
            resnet(f"decoder.up.{i}.block.{j}", c_in, chs[i])
            c_in = chs[i]
        if i > 0:
            layers.append((f"decoder.up.{i}.upsample.conv", "conv", (chs[i], chs[i], 3)))
    layers.append(("decoder.norm_out", "norm", (chs[0],)))
    layers.append(("decoder.conv_out", "conv", (chs[0], config.out_channels, 3)))

    if config.use_quant_conv:
        layers.append(("quant_conv", "conv", (2 * c, 2 * c, 1)))
    if config.use_post_quant_conv:
        layers.append(("post_quant_conv", "conv", (c, c, 1)))
    return layers


def convert_autoencoder(ckpt: Checkpoint, config) -> dict[str, jax.Array]:
    """The `{parameter path: array}` state of an `Autoencoder` with `config`, read from a BFL or
    diffusers checkpoint; raises `CheckpointError` naming any missing, mis-shaped or unexpected tensor."""
    key, _ = _layout(ckpt, len(config.block_out_channels))
    state = {}
    for path, kind, sizes in _layers(config):
        if kind == "norm":
            (ch,) = sizes
            state[f"{path}.weight"] = ckpt.take(key(f"{path}.weight"), (ch,))
            state[f"{path}.bias"] = ckpt.take(key(f"{path}.bias"), (ch,))
        elif kind == "conv":
            c_in, c_out, k = sizes
            state[f"{path}.weight"] = ckpt.take(key(f"{path}.weight"), (c_out, c_in, k, k))
            state[f"{path}.bias"] = ckpt.take(key(f"{path}.bias"), (c_out,)).reshape(c_out, 1, 1)
        else:  # linear: a (C, C) matrix, or BFL's (C, C, 1, 1) 1x1 convolution
            (ch,) = sizes
            name = key(f"{path}.weight")
            if name in ckpt and ckpt.shape(name) == (ch, ch, 1, 1):
                state[f"{path}.weight"] = ckpt.take(name, (ch, ch, 1, 1)).reshape(ch, ch)
            else:
                state[f"{path}.weight"] = ckpt.take(name, (ch, ch))
            state[f"{path}.bias"] = ckpt.take(key(f"{path}.bias"), (ch,))
    ckpt.finish()
    return state
