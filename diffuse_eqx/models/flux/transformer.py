r"""The FLUX.1 transformer (Black Forest Labs' `flux/model.py` and `flux/modules/layers.py`) in Equinox.

One sample, unbatched (vmap for a batch). Blocks of one kind are stored stacked (every parameter has
a leading block axis) and run with `jax.lax.scan`, so the compiled program does not grow with depth.
The modules are BFL's, under BFL's names (`double_blocks.img_attn.norm.query_norm.scale`,
`single_blocks.linear1.weight`, `final_layer.adaLN_modulation.1.weight`, ...), so a BFL single file maps
onto the parameters by identity (less the `model.diffusion_model.` prefix and the block index);
[`FluxTransformer.from_pretrained`][diffuse_eqx.models.flux.FluxTransformer.from_pretrained] also reads
the diffusers `transformer/` folders, whose names `_convert_transformer.py` maps in one table.
"""

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._weights import Checkpoint, check_sizes, floating_dtype, load_into, make_config
from ._convert_transformer import BFL_PREFIX, bfl_config, convert_transformer, diffusers_config


_F32 = jnp.float32
_NORM_EPS = 1e-6  # LayerNorm and RMS QK-norm epsilon in FLUX.1


class FluxTransformerConfig(eqx.Module):
    r"""The architecture of a FLUX.1 transformer (BFL's `FluxParams`).

    The defaults are FLUX.1's;
    [`FluxTransformerConfig.dev`][diffuse_eqx.models.flux.FluxTransformerConfig.dev] and
    [`FluxTransformerConfig.schnell`][diffuse_eqx.models.flux.FluxTransformerConfig.schnell] differ only in
    `guidance_embed`. Small configurations (for
    tests) need `hidden_size / num_heads == sum(axes_dim)` with every axis even.

    **Arguments:**

    - `in_channels`: channels of a packed latent token (16 latent channels x 2 x 2 patches = 64).
    - `hidden_size`: the width $d$ of the residual streams.
    - `num_heads`: attention heads (head dimension `hidden_size // num_heads`, 128 in FLUX.1).
    - `depth`: the number of double-stream blocks.
    - `depth_single`: the number of single-stream blocks.
    - `axes_dim`: the head-dimension slices rotated by each position axis (RoPE), summing to the head
      dimension.
    - `theta`: the RoPE base.
    - `context_in_dim`: the width of the T5 text states.
    - `vec_in_dim`: the width of the pooled CLIP vector.
    - `mlp_ratio`: MLP width over `hidden_size`.
    - `guidance_embed`: whether the model embeds a guidance scale (FLUX.1-dev, guidance-distilled).
    - `qkv_bias`: whether the double-stream QKV projections have a bias.
    - `out_channels`: output channels per token; `None` means `in_channels`.
    """

    in_channels: int = 64
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19
    depth_single: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    context_in_dim: int = 4096
    vec_in_dim: int = 768
    mlp_ratio: float = 4.0
    guidance_embed: bool = True
    qkv_bias: bool = True
    out_channels: int | None = None

    def __check_init__(self):
        check_sizes(self, "in_channels", "num_heads", "hidden_size", "context_in_dim", "vec_in_dim", "theta")
        if self.out_channels is not None:
            check_sizes(self, "out_channels")
        if not self.mlp_ratio > 0:
            raise ValueError(f"FluxTransformerConfig: mlp_ratio={self.mlp_ratio} must be > 0.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"FluxTransformerConfig: hidden_size={self.hidden_size} is not a multiple of "
                f"num_heads={self.num_heads}."
            )
        if sum(self.axes_dim) != self.head_dim or any(d % 2 for d in self.axes_dim):
            raise ValueError(
                f"FluxTransformerConfig: axes_dim={self.axes_dim} must be even and sum to the head dimension "
                f"hidden_size // num_heads = {self.head_dim}."
            )
        if min(self.depth, self.depth_single) < 0 or self.depth + self.depth_single < 1:
            raise ValueError(
                f"FluxTransformerConfig: depth={self.depth} and depth_single={self.depth_single} (diffusers' "
                "num_layers and num_single_layers) must be >= 0, with at least one block."
            )

    @classmethod
    def dev(cls) -> "FluxTransformerConfig":
        """FLUX.1-dev: guidance-distilled, so it takes a guidance scale."""
        return cls(guidance_embed=True)

    @classmethod
    def schnell(cls) -> "FluxTransformerConfig":
        """FLUX.1-schnell: timestep-distilled, no guidance embedding."""
        return cls(guidance_embed=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels


# ----------------------------------------------------------------------------------------------------
# Layers (BFL's `modules/layers.py`; modules without parameters keep their place, so paths match BFL's)


class _Linear(eqx.Module):
    """$x W^\\top + b$ on the last axis (weights in PyTorch's (out, in) layout)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, dtype, key: PRNGKeyArray):
        wkey, bkey = jr.split(key)
        lim = 1 / math.sqrt(in_features)
        self.weight = jr.uniform(wkey, (out_features, in_features), _F32, -lim, lim).astype(dtype)
        self.bias = jr.uniform(bkey, (out_features,), _F32, -lim, lim).astype(dtype) if bias else None

    def __call__(self, x: Float[Array, "*batch in"]) -> Float[Array, "*batch out"]:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class _SiLU(eqx.Module):
    """`nn.SiLU()`."""

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jax.nn.silu(x)


class _GELU(eqx.Module):
    """`nn.GELU(approximate="tanh")`."""

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jax.nn.gelu(x, approximate=True)


class _LayerNorm(eqx.Module):
    """`nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)`, statistics in float32."""

    def __call__(self, x: Float[Array, "L d"]) -> Float[Array, "L d"]:
        x32 = x.astype(_F32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + _NORM_EPS)).astype(x.dtype)


def _sequential(layers: tuple[eqx.Module, ...], x: Float[Array, "*batch d"]) -> Float[Array, "*batch e"]:
    """`nn.Sequential`: a tuple of layers applied in turn (so its parameters are `name.0`, `name.2`, ...)."""
    for layer in layers:
        x = layer(x)
    return x


class _MLPEmbedder(eqx.Module):
    """BFL's `MLPEmbedder`: `out_layer(silu(in_layer(x)))`."""

    in_layer: _Linear
    out_layer: _Linear

    def __init__(self, in_dim: int, hidden_dim: int, *, dtype, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        self.in_layer = _Linear(in_dim, hidden_dim, dtype=dtype, key=k1)
        self.out_layer = _Linear(hidden_dim, hidden_dim, dtype=dtype, key=k2)

    def __call__(self, x: Float[Array, " d_in"]) -> Float[Array, " d"]:
        return self.out_layer(jax.nn.silu(self.in_layer(x)))


class _RMSNorm(eqx.Module):
    r"""$x / \sqrt{\overline{x^2} + \epsilon} \cdot s$ over the head dimension, statistics in float32."""

    scale: Float[Array, " dim"]

    def __init__(self, dim: int, *, dtype):
        self.scale = jnp.ones((dim,), dtype)

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x32 = x.astype(_F32)
        rrms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + _NORM_EPS)
        return (x32 * rrms).astype(x.dtype) * self.scale


class _QKNorm(eqx.Module):
    """BFL's `QKNorm`: RMS-normalised queries and keys, returned in the values' dtype."""

    query_norm: _RMSNorm
    key_norm: _RMSNorm

    def __init__(self, dim: int, *, dtype):
        self.query_norm = _RMSNorm(dim, dtype=dtype)
        self.key_norm = _RMSNorm(dim, dtype=dtype)

    def __call__(
        self, q: Float[Array, "L H D"], k: Float[Array, "L H D"], v: Float[Array, "L H D"]
    ) -> tuple[Float[Array, "L H D"], Float[Array, "L H D"]]:
        return self.query_norm(q).astype(v.dtype), self.key_norm(k).astype(v.dtype)


class _SelfAttention(eqx.Module):
    """BFL's `SelfAttention`: the fused QKV projection, QK-norm and output projection of one stream of a
    double block (the block runs the joint attention itself)."""

    qkv: _Linear
    norm: _QKNorm
    proj: _Linear

    def __init__(self, dim: int, head_dim: int, *, qkv_bias: bool, dtype, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        self.qkv = _Linear(dim, 3 * dim, bias=qkv_bias, dtype=dtype, key=k1)
        self.norm = _QKNorm(head_dim, dtype=dtype)
        self.proj = _Linear(dim, dim, dtype=dtype, key=k2)


class _ModulationOut(NamedTuple):
    shift: Float[Array, " d"]
    scale: Float[Array, " d"]
    gate: Float[Array, " d"]


class _Modulation(eqx.Module):
    r"""BFL's `Modulation`: $(\beta, \gamma, g)$ (two such triples for a double block)
    $= W\,\mathrm{silu}(y) + b$."""

    lin: _Linear
    is_double: bool = eqx.field(static=True)

    def __init__(self, dim: int, *, double: bool, dtype, key: PRNGKeyArray):
        self.is_double = double
        self.lin = _Linear(dim, (6 if double else 3) * dim, dtype=dtype, key=key)

    def __call__(self, vec: Float[Array, " d"]) -> tuple[_ModulationOut, _ModulationOut | None]:
        out = jnp.split(self.lin(jax.nn.silu(vec)), 6 if self.is_double else 3)
        return _ModulationOut(*out[:3]), _ModulationOut(*out[3:]) if self.is_double else None


def _timestep_embedding(
    t: Real[ArrayLike, ""], dim: int = 256, max_period: float = 10_000.0
) -> Float[Array, " dim"]:
    r"""BFL's `timestep_embedding` of $1000\,t$, cosines first, in float32:
    $[\cos(1000\,t\,\omega_j), \sin(1000\,t\,\omega_j)]_j$ with $\omega_j = P^{-j/(d/2)}$, $j < d/2$."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=_F32) / half)
    args = 1000.0 * jnp.asarray(t, _F32) * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)])


def _rope(
    ids: Real[Array, "L n_axes"], axes_dim: tuple[int, ...], theta: int
) -> tuple[Float[Array, "L half"], ...]:
    r"""BFL's `EmbedND`: the rotation angles of 3-axis RoPE as (cos, sin), float32: pair $j$ of axis
    $a$ turns by $p_a \theta^{-2j/d_a}$, the axes' pairs concatenated (`half` = head_dim / 2)."""
    pos = ids.astype(_F32)
    angles = [
        pos[:, a, None] * theta ** (-jnp.arange(0, d, 2, dtype=_F32) / d) for a, d in enumerate(axes_dim)
    ]
    angles = jnp.concatenate(angles, axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(
    x: Float[Array, "L H D"], cos: Float[Array, "L half"], sin: Float[Array, "L half"]
) -> Float[Array, "L H D"]:
    """Rotates adjacent pairs $(x_{2j}, x_{2j+1})$ by the angles of each token, in float32."""
    pairs = x.astype(_F32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = jnp.stack([c * x0 - s * x1, s * x0 + c * x1], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def _attention(
    q: Float[Array, "L H D"], k: Float[Array, "L H D"], v: Float[Array, "L H D"], pe: tuple[Array, Array]
) -> Float[Array, "L HD"]:
    r"""$\mathrm{softmax}(\tilde q \tilde k^\top / \sqrt{D})\, v$ with RoPE-rotated $\tilde q, \tilde k$,
    heads merged, by `jax.nn.dot_product_attention` (cuDNN flash attention where available)."""
    q, k = _apply_rope(q, *pe), _apply_rope(k, *pe)
    out = None
    if _use_cudnn(q):
        try:
            out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (RuntimeError, NotImplementedError, ValueError):  # cuDNN too old or shape unsupported
            out = None
    if out is None:
        out = jax.nn.dot_product_attention(q, k, v)  # implementation=None is XLA's
    return out.reshape(out.shape[0], -1)


def _use_cudnn(q: Array) -> bool:
    """cuDNN's fused attention on NVIDIA GPUs: bf16/fp16, head dimension a multiple of 8 up to 128.
    (JAX's default, `implementation=None`, always takes the XLA path.)"""
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 128
    )


def _split_heads(qkv: Float[Array, "L threeHD"], num_heads: int) -> tuple[Float[Array, "L H D"], ...]:
    """BFL's `rearrange(qkv, "L (K H D) -> K L H D", K=3)`."""
    q, k, v = jnp.moveaxis(qkv.reshape(qkv.shape[0], 3, num_heads, -1), 1, 0)
    return q, k, v


class _DoubleStreamBlock(eqx.Module):
    r"""BFL's `DoubleStreamBlock`: separate weights for the image and text streams, joint attention
    over [text; image] tokens. For each stream, with $(\beta_1, \gamma_1, g_1, \beta_2, \gamma_2, g_2)$
    $= W_{mod}\,\mathrm{silu}(y) + b_{mod}$,

    $$x \leftarrow x + g_1 \odot \mathrm{proj}(\mathrm{Attn}((1+\gamma_1)\mathrm{LN}(x) + \beta_1)), \qquad
      x \leftarrow x + g_2 \odot \mathrm{MLP}((1+\gamma_2)\mathrm{LN}(x) + \beta_2).$$
    """

    img_mod: _Modulation
    img_norm1: _LayerNorm
    img_attn: _SelfAttention
    img_norm2: _LayerNorm
    img_mlp: tuple[_Linear, _GELU, _Linear]
    txt_mod: _Modulation
    txt_norm1: _LayerNorm
    txt_attn: _SelfAttention
    txt_norm2: _LayerNorm
    txt_mlp: tuple[_Linear, _GELU, _Linear]
    num_heads: int = eqx.field(static=True)

    def __init__(self, config: FluxTransformerConfig, *, dtype, key: PRNGKeyArray):
        keys = jr.split(key, 8)
        d, m, head_dim, qkv_bias = config.hidden_size, config.mlp_hidden, config.head_dim, config.qkv_bias
        self.num_heads = config.num_heads
        self.img_mod = _Modulation(d, double=True, dtype=dtype, key=keys[0])
        self.img_norm1 = _LayerNorm()
        self.img_attn = _SelfAttention(d, head_dim, qkv_bias=qkv_bias, dtype=dtype, key=keys[1])
        self.img_norm2 = _LayerNorm()
        self.img_mlp = (
            _Linear(d, m, dtype=dtype, key=keys[2]),
            _GELU(),
            _Linear(m, d, dtype=dtype, key=keys[3]),
        )
        self.txt_mod = _Modulation(d, double=True, dtype=dtype, key=keys[4])
        self.txt_norm1 = _LayerNorm()
        self.txt_attn = _SelfAttention(d, head_dim, qkv_bias=qkv_bias, dtype=dtype, key=keys[5])
        self.txt_norm2 = _LayerNorm()
        self.txt_mlp = (
            _Linear(d, m, dtype=dtype, key=keys[6]),
            _GELU(),
            _Linear(m, d, dtype=dtype, key=keys[7]),
        )

    def __call__(
        self,
        img: Float[Array, "Li d"],
        txt: Float[Array, "Lt d"],
        vec: Float[Array, " d"],
        pe: tuple[Array, Array],
    ) -> tuple[Float[Array, "Li d"], Float[Array, "Lt d"]]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)

        img_modulated = (1 + img_mod1.scale) * self.img_norm1(img) + img_mod1.shift
        img_q, img_k, img_v = _split_heads(self.img_attn.qkv(img_modulated), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)

        txt_modulated = (1 + txt_mod1.scale) * self.txt_norm1(txt) + txt_mod1.shift
        txt_q, txt_k, txt_v = _split_heads(self.txt_attn.qkv(txt_modulated), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)

        q = jnp.concatenate([txt_q, img_q])
        k = jnp.concatenate([txt_k, img_k])
        v = jnp.concatenate([txt_v, img_v])
        attn = _attention(q, k, v, pe)
        txt_attn, img_attn = attn[: txt.shape[0]], attn[txt.shape[0] :]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * _sequential(
            self.img_mlp, (1 + img_mod2.scale) * self.img_norm2(img) + img_mod2.shift
        )
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * _sequential(
            self.txt_mlp, (1 + txt_mod2.scale) * self.txt_norm2(txt) + txt_mod2.shift
        )
        return img, txt


class _SingleStreamBlock(eqx.Module):
    r"""BFL's `SingleStreamBlock` on the joint [text; image] sequence: attention and MLP in parallel from
    one fused input projection, with $(\beta, \gamma, g) = W_{mod}\,\mathrm{silu}(y) + b_{mod}$ and
    $h = (1+\gamma)\mathrm{LN}(x) + \beta$,

    $$[q, k, v, u] = \mathrm{linear1}(h), \qquad
      x \leftarrow x + g \odot \mathrm{linear2}([\mathrm{Attn}(q, k, v), \mathrm{gelu}(u)]).$$
    """

    linear1: _Linear
    linear2: _Linear
    norm: _QKNorm
    pre_norm: _LayerNorm
    mlp_act: _GELU
    modulation: _Modulation
    hidden_size: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(self, config: FluxTransformerConfig, *, dtype, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        d, m = config.hidden_size, config.mlp_hidden
        self.hidden_size, self.num_heads = d, config.num_heads
        self.linear1 = _Linear(d, 3 * d + m, dtype=dtype, key=k1)
        self.linear2 = _Linear(d + m, d, dtype=dtype, key=k2)
        self.norm = _QKNorm(config.head_dim, dtype=dtype)
        self.pre_norm = _LayerNorm()
        self.mlp_act = _GELU()
        self.modulation = _Modulation(d, double=False, dtype=dtype, key=k3)

    def __call__(
        self, x: Float[Array, "L d"], vec: Float[Array, " d"], pe: tuple[Array, Array]
    ) -> Float[Array, "L d"]:
        mod, _ = self.modulation(vec)
        x_mod = (1 + mod.scale) * self.pre_norm(x) + mod.shift
        qkv, mlp = jnp.split(self.linear1(x_mod), [3 * self.hidden_size], axis=-1)
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = _attention(q, k, v, pe)
        output = self.linear2(jnp.concatenate([attn, self.mlp_act(mlp)], axis=-1))
        return x + mod.gate * output


class _LastLayer(eqx.Module):
    r"""BFL's `LastLayer`: $\mathrm{linear}((1+\gamma)\mathrm{LN}(x) + \beta)$ with
    $(\beta, \gamma) = W\,\mathrm{silu}(y) + b$ (shift first)."""

    norm_final: _LayerNorm
    linear: _Linear
    adaLN_modulation: tuple[_SiLU, _Linear]

    def __init__(self, config: FluxTransformerConfig, *, dtype, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        d = config.hidden_size
        self.norm_final = _LayerNorm()
        self.linear = _Linear(d, config.output_channels, dtype=dtype, key=k1)
        self.adaLN_modulation = (_SiLU(), _Linear(d, 2 * d, dtype=dtype, key=k2))

    def __call__(self, x: Float[Array, "L d"], vec: Float[Array, " d"]) -> Float[Array, "L c"]:
        shift, scale = jnp.split(_sequential(self.adaLN_modulation, vec), 2)
        x = (1 + scale) * self.norm_final(x) + shift
        return self.linear(x)


def _scan_blocks(blocks: eqx.Module, carry, step: Callable):
    """Runs `carry = step(block_i, carry)` over stacked blocks with one `lax.scan` (one traced block)."""
    params, static = eqx.partition(blocks, eqx.is_array)

    def body(carry, block_params):
        return step(eqx.combine(block_params, static), carry), None

    return jax.lax.scan(body, carry, params)[0]


# ----------------------------------------------------------------------------------------------------
# The model


class FluxTransformer(eqx.Module):
    r"""The FLUX.1 rectified-flow transformer: the velocity $v_\theta(x_t, t, c)$ of packed latents.

    With $y = \mathrm{MLP}_t(\mathrm{emb}(1000\,t)) + \mathrm{MLP}_g(\mathrm{emb}(1000\,g))
    + \mathrm{MLP}_y(\text{pooled})$ the modulation vector (the guidance term only for
    guidance-distilled models), image tokens $x = W_{img} x_t$ and text tokens $c = W_{txt} c_{T5}$
    go through `depth` double-stream blocks (separate weights, joint attention over [text; image]),
    then `depth_single` single-stream blocks on the concatenated sequence, then an adaptive final
    layer on the image tokens. Attention uses 3-axis RoPE on the token ids (rotations in float32),
    RMS-normalised queries and keys, and $1/\sqrt{D}$ scaling ($D$ the head dimension); layer norms are
    affine-free with $(1 + \text{scale}, \text{shift}, \text{gate})$ modulation from $\mathrm{silu}(y)$.

    In bf16, the timestep embedding, RoPE and the norms' statistics are still float32
    ([FLUX.1 → Numerics][flux-numerics]). Load a checkpoint with
    [`FluxTransformer.from_pretrained`][diffuse_eqx.models.flux.FluxTransformer.from_pretrained].

    ??? cite "Reference"
        ```bibtex
        @misc{flux2024,
          author={Black Forest Labs}, title={FLUX},
          year={2024}, howpublished={\url{https://github.com/black-forest-labs/flux}}}
        ```

    **Arguments:**

    - `config`: the architecture.
    - `dtype`: the dtype of every parameter (`jnp.float32` or `jnp.bfloat16`).
    - `key`: a PRNG key for the random initialisation (PyTorch's `nn.Linear` uniform; QK-norm scales 1).
    """

    config: FluxTransformerConfig = eqx.field(static=True)
    img_in: _Linear
    txt_in: _Linear
    time_in: _MLPEmbedder
    vector_in: _MLPEmbedder
    guidance_in: _MLPEmbedder | None
    double_blocks: _DoubleStreamBlock
    single_blocks: _SingleStreamBlock
    final_layer: _LastLayer

    def __init__(self, config: FluxTransformerConfig, *, dtype: DTypeLike = jnp.float32, key: PRNGKeyArray):
        keys = jr.split(key, 8)
        d = config.hidden_size
        self.config = config
        self.img_in = _Linear(config.in_channels, d, dtype=dtype, key=keys[0])
        self.txt_in = _Linear(config.context_in_dim, d, dtype=dtype, key=keys[1])
        self.time_in = _MLPEmbedder(256, d, dtype=dtype, key=keys[2])
        self.vector_in = _MLPEmbedder(config.vec_in_dim, d, dtype=dtype, key=keys[3])
        self.guidance_in = _MLPEmbedder(256, d, dtype=dtype, key=keys[4]) if config.guidance_embed else None
        self.double_blocks = eqx.filter_vmap(lambda k: _DoubleStreamBlock(config, dtype=dtype, key=k))(
            jr.split(keys[5], config.depth)
        )
        self.single_blocks = eqx.filter_vmap(lambda k: _SingleStreamBlock(config, dtype=dtype, key=k))(
            jr.split(keys[6], config.depth_single)
        )
        self.final_layer = _LastLayer(config, dtype=dtype, key=keys[7])

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: DTypeLike = jnp.float32, *, axes_dim: tuple[int, ...] | None = None
    ) -> "FluxTransformer":
        """Loads a FLUX.1 transformer checkpoint, checking every tensor.

        **Arguments:**

        - `path`: a diffusers `transformer/` folder (`config.json` and
          `diffusion_pytorch_model.safetensors`, or shards with their `.safetensors.index.json`), or a
          BFL single file (`flux1-dev.safetensors`, `flux1-schnell.safetensors`; keys with or without
          the `model.diffusion_model.` prefix), whose architecture is inferred from the tensor shapes.
        - `dtype`: the dtype of the parameters (`jnp.bfloat16` halves the memory; FLUX.1 is ~12B).
        - `axes_dim`: RoPE axes for a BFL file whose head dimension is not FLUX.1's 128 (BFL files do
          not record them); otherwise `(16, 56, 56)` or the diffusers `config.json` value.

        **Returns:** the [`FluxTransformer`][diffuse_eqx.models.flux.FluxTransformer]. Raises
        `CheckpointError` naming any missing, unexpected or mis-shaped tensor, or an unreadable file.
        """
        path, dtype = Path(path), floating_dtype(dtype)
        if path.is_dir() and (path / "config.json").is_file():
            file = path / "config.json"
            config = make_config(FluxTransformerConfig, diffusers_config(file, axes_dim), file)
            layout, ckpt = "diffusers", Checkpoint(path, dtype)
        else:
            layout, ckpt = "bfl", Checkpoint(path, dtype, strip_prefix=BFL_PREFIX)
            config = make_config(FluxTransformerConfig, bfl_config(ckpt, axes_dim), ckpt.source)
        skeleton = eqx.filter_eval_shape(cls, config, dtype=dtype, key=jr.key(0))
        return load_into(skeleton, convert_transformer(ckpt, skeleton, layout), ckpt.source)

    def __call__(
        self,
        img: Float[Array, "L_img c_in"],
        txt: Float[Array, "L_txt c_txt"],
        pooled: Float[Array, " c_vec"],
        t: Real[ArrayLike, ""],
        guidance: Real[ArrayLike, ""] | None,
        img_ids: Real[Array, "L_img n_axes"],
        txt_ids: Real[Array, "L_txt n_axes"],
    ) -> Float[Array, "L_img c_out"]:
        r"""The velocity of the packed latents `img` at noise level `t`.

        **Arguments:**

        - `img`: packed latent tokens, `(L_img, in_channels)` (2x2 patches of the 16-channel latent).
        - `txt`: T5 hidden states, `(L_txt, context_in_dim)`.
        - `pooled`: the pooled CLIP vector, `(vec_in_dim,)`.
        - `t`: the noise level in $[0, 1]$ ($t = 1$ is noise); the model embeds $1000\,t$.
        - `guidance`: the guidance scale for guidance-distilled models (FLUX.1-dev, e.g. 3.5);
          `None` for FLUX.1-schnell.
        - `img_ids`, `txt_ids`: RoPE positions per token (FLUX: `(0, row, col)` for image tokens, zeros
          for text tokens).

        **Returns:** the velocity $dx_t/dt$ of the tokens, `(L_img, out_channels)`, in the parameters' dtype.
        """
        cfg = self.config
        self._check_inputs(img, txt, pooled, guidance, img_ids)
        dtype = self.img_in.weight.dtype
        vec = self.time_in(_timestep_embedding(t).astype(dtype))
        if self.guidance_in is not None:
            vec = vec + self.guidance_in(_timestep_embedding(guidance).astype(dtype))
        vec = vec + self.vector_in(pooled.astype(dtype))
        img = self.img_in(img.astype(dtype))
        txt = self.txt_in(txt.astype(dtype))
        pe = _rope(jnp.concatenate([txt_ids, img_ids]), cfg.axes_dim, cfg.theta)

        img, txt = _scan_blocks(self.double_blocks, (img, txt), lambda block, c: block(*c, vec, pe))
        x = _scan_blocks(self.single_blocks, jnp.concatenate([txt, img]), lambda block, c: block(c, vec, pe))
        return self.final_layer(x[txt.shape[0] :], vec)

    def _check_inputs(self, img, txt, pooled, guidance, img_ids) -> None:
        cfg = self.config
        for name, got, want in (
            ("img", img.shape[-1], cfg.in_channels),
            ("txt", txt.shape[-1], cfg.context_in_dim),
            ("pooled", pooled.shape[-1], cfg.vec_in_dim),
            ("img_ids", img_ids.shape[-1], len(cfg.axes_dim)),
        ):
            if got != want:
                raise ValueError(
                    f"FluxTransformer: `{name}` has last dimension {got}; the model expects {want}."
                )
        if cfg.guidance_embed and guidance is None:
            raise ValueError(
                "FluxTransformer: this model is guidance-distilled (guidance_embed=True, e.g. FLUX.1-dev); "
                "pass a guidance scale, e.g. guidance=3.5."
            )
        if not cfg.guidance_embed and guidance is not None:
            raise ValueError(
                "FluxTransformer: this model has no guidance embedding (guidance_embed=False, e.g. "
                "FLUX.1-schnell); pass guidance=None (use classifier-free guidance for guidance)."
            )
