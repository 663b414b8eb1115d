"""The FLUX.1 autoencoder (a KL-regularised convolutional VAE, 8x downsampling, 16 latent channels).

The architecture is Black Forest Labs' `flux/modules/autoencoder.py` (the LDM autoencoder of Rombach et
al. 2022), which is also diffusers' `AutoencoderKL` with the FLUX configuration. Modules and parameter
names follow BFL (`encoder.down.0.block.1.conv1`, `decoder.up.3.upsample.conv`, `mid.attn_1.q`, ...), so a
BFL checkpoint maps onto them by identity; the converter (`_convert_autoencoder.py`) renames diffusers'
layers by one table.

Everything works on one unbatched, channels-first image (like `eqx.nn.Conv2d`); callers `jax.vmap`.
"""

import math
from pathlib import Path
from typing import get_type_hints

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._weights import (
    Checkpoint,
    CheckpointError,
    check_sizes,
    floating_dtype,
    load_into,
    make_config,
    read_config,
    read_json,
)
from ._convert_autoencoder import convert_autoencoder, infer_autoencoder_config


class AutoencoderConfig(eqx.Module):
    r"""The hyperparameters of an [`Autoencoder`][diffuse_eqx.models.flux.Autoencoder] (diffusers'
    `AutoencoderKL` names).

    The defaults are FLUX.1's (see
    [`AutoencoderConfig.flux`][diffuse_eqx.models.flux.AutoencoderConfig.flux]).

    **Arguments:**

    - `in_channels`, `out_channels`: image channels (3).
    - `latent_channels`: latent channels $c$ (16); the encoder outputs $2c$ (mean and log-variance).
    - `block_out_channels`: channels of each resolution level (BFL: `ch * ch_mult`); one level per
      entry, each but the last halving the resolution, so images are $2^{L-1}$ times larger than
      latents ($L = 4$: 8x).
    - `layers_per_block`: residual blocks per encoder level (the decoder has one more per level).
    - `norm_num_groups`: GroupNorm groups (32), which must divide every entry of `block_out_channels`.
    - `scaling_factor`, `shift_factor`: the latent normalisation $z = s\,(\mu - m)$ (0.3611, 0.1159).
    - `use_quant_conv`, `use_post_quant_conv`: the 1x1 convolutions after the encoder and before the
      decoder (absent in FLUX; present in Stable Diffusion's autoencoders).
    - `mid_block_add_attention`: whether the middle blocks have their self-attention layer.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    mid_block_add_attention: bool = True

    def __check_init__(self):
        check_sizes(
            self, "in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"
        )
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(
                f"AutoencoderConfig.block_out_channels must be a non-empty tuple of positive ints; got "
                f"{self.block_out_channels}."
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"AutoencoderConfig.norm_num_groups={self.norm_num_groups} must divide every entry of "
                f"block_out_channels={self.block_out_channels} (it does not divide {bad})."
            )
        if self.scaling_factor == 0:
            raise ValueError("AutoencoderConfig.scaling_factor must be nonzero.")

    @classmethod
    def flux(cls) -> "AutoencoderConfig":
        """The FLUX.1 [dev] / [schnell] autoencoder (`ae.safetensors`, diffusers' `vae/`)."""
        return cls()

    @classmethod
    def tiny(cls) -> "AutoencoderConfig":
        """A small random-weight configuration with FLUX's structure (8x downsampling, 16 latent
        channels, no quant convs), for tests."""
        return cls(block_out_channels=(32, 32, 64, 64), layers_per_block=1)

    @classmethod
    def from_diffusers(cls, config: dict, source: str | Path = "AutoencoderKL config") -> "AutoencoderConfig":
        """The configuration of a diffusers `AutoencoderKL` (the contents of its `config.json`, read from
        `source`): the sizes and `scaling_factor` are required, the other keys default as in diffusers
        (`shift_factor`: 0).

        Raises `CheckpointError` naming `source` and the key for a wrong type, a missing key or an
        invalid value, and for the options this port does not implement (other block types,
        activations, or per-channel `latents_mean` / `latents_std`)."""
        hint = " Give it: `Autoencoder.from_pretrained(path, config=AutoencoderConfig(...))`."
        v = read_config(config, _DIFFUSERS_FIELDS, _DIFFUSERS_DEFAULTS, source, hint)
        fields = {name: v[name] for name in get_type_hints(cls)}
        config = make_config(cls, fields | {"shift_factor": v["shift_factor"] or 0.0}, source)
        n = len(config.block_out_channels)
        for name, block in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            if v[name] != (block,) * n:
                raise CheckpointError(
                    f"{source}: Autoencoder supports only {name} = {n} x {block!r}; the config has {v[name]}."
                )
        if v["act_fn"] not in ("silu", "swish"):
            raise CheckpointError(
                f"{source}: Autoencoder supports only act_fn='silu'; the config has {v['act_fn']!r}."
            )
        for name in ("latents_mean", "latents_std"):
            if v[name] is not None:
                raise CheckpointError(
                    f"{source}: Autoencoder does not support per-channel {name}; the config sets it."
                )
        return config

    @property
    def downsampling(self) -> int:
        """How many times larger an image is than its latent, per side ($2^{L-1}$; 8 for FLUX)."""
        return 2 ** (len(self.block_out_channels) - 1)


# The keys of a diffusers `AutoencoderKL` config.json this port reads, with diffusers' defaults where it has
# them (the sizes and `scaling_factor` are required: diffusers' 0.18215 is Stable Diffusion's).
_DIFFUSERS_FIELDS = get_type_hints(AutoencoderConfig) | {
    "shift_factor": float | None,
    "down_block_types": tuple[str, ...],
    "up_block_types": tuple[str, ...],
    "act_fn": str,
    "latents_mean": tuple[float, ...] | None,
    "latents_std": tuple[float, ...] | None,
}
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    norm_num_groups=32,
    shift_factor=None,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
    down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",),
    act_fn="silu",
    latents_mean=None,
    latents_std=None,
)


def _swish(x):
    return jax.nn.silu(x)


class _GroupNorm(eqx.Module):
    """GroupNorm with its statistics (and affine map) in float32, returned in the input's dtype."""

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, groups: int, channels: int, *, dtype, eps: float = 1e-6):
        self.weight = jnp.ones(channels, dtype)
        self.bias = jnp.zeros(channels, dtype)
        self.groups, self.eps = groups, eps

    def __call__(self, x: Float[Array, "channels height width"]) -> Float[Array, "channels height width"]:
        c, h, w = x.shape
        g = x.astype(jnp.float32).reshape(self.groups, -1)
        mean = g.mean(axis=1, keepdims=True)
        var = jnp.square(g - mean).mean(axis=1, keepdims=True)
        g = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(c, h, w)
        weight, bias = (p.astype(jnp.float32)[:, None, None] for p in (self.weight, self.bias))
        out = g * weight + bias
        return out.astype(x.dtype)


def _conv(c_in: int, c_out: int, kernel: int, *, stride=1, padding=None, dtype, key: PRNGKeyArray):
    padding = kernel // 2 if padding is None else padding
    return eqx.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, key=key, dtype=dtype)


class _ResnetBlock(eqx.Module):
    r"""A residual block, with the skip through a 1x1 convolution (`nin_shortcut`) when the channel
    count changes:

    $$x + \mathrm{conv}_2 \circ \mathrm{swish} \circ \mathrm{norm}_2 \circ \mathrm{conv}_1 \circ
      \mathrm{swish} \circ \mathrm{norm}_1(x).$$
    """

    norm1: _GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: _GroupNorm
    conv2: eqx.nn.Conv2d
    nin_shortcut: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, groups: int, *, dtype, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = _GroupNorm(groups, c_in, dtype=dtype)
        self.conv1 = _conv(c_in, c_out, 3, dtype=dtype, key=k1)
        self.norm2 = _GroupNorm(groups, c_out, dtype=dtype)
        self.conv2 = _conv(c_out, c_out, 3, dtype=dtype, key=k2)
        self.nin_shortcut = _conv(c_in, c_out, 1, dtype=dtype, key=k3) if c_in != c_out else None

    def __call__(self, x: Float[Array, "c_in h w"]) -> Float[Array, "c_out h w"]:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class _AttnBlock(eqx.Module):
    r"""Single-head self-attention over the $N = hw$ positions, with a residual connection:

    $$x + W_o\, V\, \mathrm{softmax}\!\big(K^\top Q / \sqrt{C}\big), \qquad
    Q, K, V = W_{q,k,v}\, \mathrm{norm}(x) + b_{q,k,v} \in \mathbb{R}^{C \times N}$$

    (the softmax over keys, computed in float32)."""

    norm: _GroupNorm
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    proj_out: eqx.nn.Linear

    def __init__(self, channels: int, groups: int, *, dtype, key: PRNGKeyArray):
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.norm = _GroupNorm(groups, channels, dtype=dtype)
        self.q = eqx.nn.Linear(channels, channels, dtype=dtype, key=kq)
        self.k = eqx.nn.Linear(channels, channels, dtype=dtype, key=kk)
        self.v = eqx.nn.Linear(channels, channels, dtype=dtype, key=kv)
        self.proj_out = eqx.nn.Linear(channels, channels, dtype=dtype, key=ko)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        c, h, w = x.shape
        tokens = self.norm(x).reshape(c, h * w).T  # (N, C)
        q, k, v = (jax.vmap(layer)(tokens) for layer in (self.q, self.k, self.v))
        logits = jnp.einsum("nc,mc->nm", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jax.vmap(self.proj_out)(weights @ v)
        return x + out.T.reshape(c, h, w)


class _MidBlock(eqx.Module):
    """Residual block, self-attention (optional), residual block, at the lowest resolution."""

    block_1: _ResnetBlock
    attn_1: _AttnBlock | None
    block_2: _ResnetBlock

    def __init__(self, channels: int, groups: int, attention: bool, *, dtype, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.block_1 = _ResnetBlock(channels, channels, groups, dtype=dtype, key=k1)
        self.attn_1 = _AttnBlock(channels, groups, dtype=dtype, key=k2) if attention else None
        self.block_2 = _ResnetBlock(channels, channels, groups, dtype=dtype, key=k3)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class _Downsample(eqx.Module):
    """A stride-2 3x3 convolution after zero padding on the bottom and right only (BFL, diffusers)."""

    conv: eqx.nn.Conv2d

    def __init__(self, channels: int, *, dtype, key: PRNGKeyArray):
        self.conv = _conv(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), dtype=dtype, key=key)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h2 w2"]:
        return self.conv(x)


class _Upsample(eqx.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    conv: eqx.nn.Conv2d

    def __init__(self, channels: int, *, dtype, key: PRNGKeyArray):
        self.conv = _conv(channels, channels, 3, dtype=dtype, key=key)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h2 w2"]:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class _DownLevel(eqx.Module):
    """One encoder level: residual blocks, then a downsampling layer (absent at the last level)."""

    block: tuple[_ResnetBlock, ...]
    downsample: _Downsample | None

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c2 h2 w2"]:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class _UpLevel(eqx.Module):
    """One decoder level: residual blocks, then an upsampling layer (absent at level 0)."""

    block: tuple[_ResnetBlock, ...]
    upsample: _Upsample | None

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c2 h2 w2"]:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class _Encoder(eqx.Module):
    """Image $(C_{in}, H, W)$ to the posterior's parameters $(2c, H/2^{L-1}, W/2^{L-1})$."""

    conv_in: eqx.nn.Conv2d
    down: tuple[_DownLevel, ...]
    mid: _MidBlock
    norm_out: _GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(self, config: AutoencoderConfig, *, dtype, key: PRNGKeyArray):
        chs, g, n = config.block_out_channels, config.norm_num_groups, config.layers_per_block
        keys = iter(jax.random.split(key, 4 + len(chs) * (n + 1)))
        self.conv_in = _conv(config.in_channels, chs[0], 3, dtype=dtype, key=next(keys))
        down, c_in = [], chs[0]
        for i, c in enumerate(chs):
            blocks = []
            for _ in range(n):
                blocks.append(_ResnetBlock(c_in, c, g, dtype=dtype, key=next(keys)))
                c_in = c
            last = i == len(chs) - 1
            downsample = None if last else _Downsample(c, dtype=dtype, key=next(keys))
            down.append(_DownLevel(tuple(blocks), downsample))
        self.down = tuple(down)
        self.mid = _MidBlock(chs[-1], g, config.mid_block_add_attention, dtype=dtype, key=next(keys))
        self.norm_out = _GroupNorm(g, chs[-1], dtype=dtype)
        self.conv_out = _conv(chs[-1], 2 * config.latent_channels, 3, dtype=dtype, key=next(keys))

    def __call__(self, x: Float[Array, "c_in H W"]) -> Float[Array, "two_c h w"]:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(_swish(self.norm_out(x)))


class _Decoder(eqx.Module):
    """Latent $(c, h, w)$ to image $(C_{out}, 2^{L-1} h, 2^{L-1} w)$. `up[i]` is resolution level `i`
    (BFL's order), so the levels run from `up[L-1]` (lowest resolution) to `up[0]`."""

    conv_in: eqx.nn.Conv2d
    mid: _MidBlock
    up: tuple[_UpLevel, ...]
    norm_out: _GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(self, config: AutoencoderConfig, *, dtype, key: PRNGKeyArray):
        chs, g, n = config.block_out_channels, config.norm_num_groups, config.layers_per_block
        keys = iter(jax.random.split(key, 4 + len(chs) * (n + 2)))
        self.conv_in = _conv(config.latent_channels, chs[-1], 3, dtype=dtype, key=next(keys))
        self.mid = _MidBlock(chs[-1], g, config.mid_block_add_attention, dtype=dtype, key=next(keys))
        up, c_in = [None] * len(chs), chs[-1]
        for i in reversed(range(len(chs))):
            blocks = []
            for _ in range(n + 1):
                blocks.append(_ResnetBlock(c_in, chs[i], g, dtype=dtype, key=next(keys)))
                c_in = chs[i]
            upsample = None if i == 0 else _Upsample(chs[i], dtype=dtype, key=next(keys))
            up[i] = _UpLevel(tuple(blocks), upsample)
        self.up = tuple(up)
        self.norm_out = _GroupNorm(g, chs[0], dtype=dtype)
        self.conv_out = _conv(chs[0], config.out_channels, 3, dtype=dtype, key=next(keys))

    def __call__(self, z: Float[Array, "c h w"]) -> Float[Array, "c_out H W"]:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(_swish(self.norm_out(x)))


class Autoencoder(eqx.Module):
    r"""The FLUX.1 autoencoder, on one unbatched channels-first image (`jax.vmap` for batches).

    The encoder gives a diagonal Gaussian posterior $\mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))$
    over the raw latent; the transformer works in the normalised latent space

    $$z = s\,(\mu(x) - m), \qquad \hat x = D(z / s + m),$$

    with $s$ = `scaling_factor` (0.3611) and $m$ = `shift_factor` (0.1159).
    [`Autoencoder.encode`][diffuse_eqx.models.flux.Autoencoder.encode]
    returns the posterior *mean* (no sampling),
    [`Autoencoder.decode`][diffuse_eqx.models.flux.Autoencoder.decode] the decoder's output (roughly in
    $[-1, 1]$, not clipped). GroupNorm statistics and the attention softmax are computed in float32
    whatever the parameters' dtype.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{rombach2022high,
          title={High-Resolution Image Synthesis with Latent Diffusion Models},
          author={Rombach, Robin and Blattmann, Andreas and Lorenz, Dominik and Esser, Patrick and
                  Ommer, Bj{\"o}rn},
          booktitle={CVPR}, year={2022}}
        @misc{flux2024,
          author={Black Forest Labs}, title={FLUX},
          year={2024}, howpublished={\url{https://github.com/black-forest-labs/flux}}}
        ```

    **Arguments:**

    - `config`: the [`AutoencoderConfig`][diffuse_eqx.models.flux.AutoencoderConfig]
      (`AutoencoderConfig.flux()` for FLUX.1).
    - `dtype`: the parameters' dtype (float32 or bfloat16).
    - `key`: the PRNG key for the random initialisation (use
      [`Autoencoder.from_pretrained`][diffuse_eqx.models.flux.Autoencoder.from_pretrained] for
      trained weights).
    """

    encoder: _Encoder
    decoder: _Decoder
    quant_conv: eqx.nn.Conv2d | None
    post_quant_conv: eqx.nn.Conv2d | None
    config: AutoencoderConfig = eqx.field(static=True)

    def __init__(self, config: AutoencoderConfig, *, dtype=jnp.float32, key: PRNGKeyArray):
        ke, kd, kq, kp = jax.random.split(key, 4)
        c = config.latent_channels
        self.config = config
        self.encoder = _Encoder(config, dtype=dtype, key=ke)
        self.decoder = _Decoder(config, dtype=dtype, key=kd)
        self.quant_conv = _conv(2 * c, 2 * c, 1, dtype=dtype, key=kq) if config.use_quant_conv else None
        self.post_quant_conv = _conv(c, c, 1, dtype=dtype, key=kp) if config.use_post_quant_conv else None

    @property
    def dtype(self):
        """The parameters' dtype (inputs are cast to it)."""
        return self.decoder.conv_in.weight.dtype

    def encode(self, x: Float[Array, "channels height width"]) -> Float[Array, "latent h w"]:
        r"""The normalised posterior mean $z = s\,(\mu(x) - m)$ of an image.

        **Arguments:**

        - `x`: an image of shape `(in_channels, H, W)` with values in $[-1, 1]$; `H` and `W` multiples
          of `config.downsampling` (8 for FLUX). Cast to the parameters' dtype.

        **Returns:** the latent, of shape `(latent_channels, H / 8, W / 8)` for FLUX, in the parameters'
        dtype.
        """
        cfg, f = self.config, self.config.downsampling
        if x.ndim != 3 or x.shape[0] != cfg.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"Autoencoder.encode takes one image of shape ({cfg.in_channels}, H, W) with H and W "
                f"multiples of {f}; got shape {x.shape}. vmap over a batch."
            )
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[: cfg.latent_channels]
        return ((mean - cfg.shift_factor) * cfg.scaling_factor).astype(self.dtype)

    def decode(self, z: Float[Array, "latent h w"]) -> Float[Array, "channels height width"]:
        r"""The image $D(z / s + m)$ of a normalised latent.

        **Arguments:**

        - `z`: a latent of shape `(latent_channels, h, w)` in the transformer's (normalised) space.
          Cast to the parameters' dtype.

        **Returns:** the image, of shape `(out_channels, 8 h, 8 w)` for FLUX, roughly in $[-1, 1]$ (not
        clipped), in the parameters' dtype.
        """
        cfg = self.config
        if z.ndim != 3 or z.shape[0] != cfg.latent_channels:
            raise ValueError(
                f"Autoencoder.decode takes one latent of shape ({cfg.latent_channels}, h, w); got shape "
                f"{z.shape}. vmap over a batch."
            )
        z = (z / cfg.scaling_factor + cfg.shift_factor).astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype=jnp.float32, *, config: AutoencoderConfig | None = None
    ) -> "Autoencoder":
        """Loads trained weights, checking every tensor.

        **Arguments:**

        - `path`: a diffusers `vae/` folder (`config.json` and `diffusion_pytorch_model.safetensors`,
          possibly sharded), or a single safetensors file in BFL's layout (`ae.safetensors`, keys like
          `decoder.up.0.block.0.conv1.weight`, possibly behind a prefix such as `vae.`) or diffusers'.
        - `dtype`: the parameters' dtype (float32 or bfloat16).
        - `config`: the configuration, when it cannot be read or inferred. By default it is read from
          `config.json` next to the weights, or else inferred from the tensors' shapes with FLUX's
          GroupNorm groups (32), `scaling_factor` and `shift_factor` (a single file's config).

        **Returns:** the `Autoencoder`. Raises `CheckpointError` naming any tensor that is missing,
        unexpected or mis-shaped, and for unreadable files.
        """
        path, dtype = Path(path), floating_dtype(dtype)
        ckpt = Checkpoint(path, dtype=dtype)
        if config is None:
            config_file = path / "config.json"
            if path.is_dir() and config_file.is_file():
                config = AutoencoderConfig.from_diffusers(read_json(config_file), config_file)
            else:
                config = make_config(AutoencoderConfig, infer_autoencoder_config(ckpt), ckpt.source)
        skeleton = eqx.filter_eval_shape(cls, config, dtype=dtype, key=jax.random.key(0))
        return load_into(skeleton, convert_autoencoder(ckpt, config), ckpt.source)
