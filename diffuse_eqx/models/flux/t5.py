"""T5 v1.1 encoder (FLUX's second text encoder, T5-XXL) in Equinox, loaded from a transformers checkpoint.

The model is transformers' `T5EncoderModel`: token embeddings without positions, pre-norm layers with
RMS norms, unscaled self-attention plus a bucketed relative-position bias (computed once, shared by all
layers), gated-GELU feed-forward blocks, and a final norm. The checkpoint mapping (`_convert`) is at the
bottom of this file.
"""

import functools
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._weights import Checkpoint, check_sizes, floating_dtype, load_into, make_config, read_config, read_json
from .clip import check_token_ids


class T5Config(eqx.Module):
    """Hyperparameters of a T5 v1.1 encoder, named as in transformers' `T5Config` (the defaults are
    FLUX's T5-XXL, `text_encoder_2/config.json`).

    **Arguments:**

    - `vocab_size`, `d_model`, `d_kv`, `num_heads`, `d_ff`, `num_layers`: the sizes of the vocabulary, the
        residual stream, one head, the heads, the feed-forward block and the layer stack.
    - `relative_attention_num_buckets`, `relative_attention_max_distance`: the relative-position buckets
        (half exact, half logarithmic up to the maximum distance, per direction).
    - `layer_norm_epsilon`: the RMS norms' epsilon.
    - `feed_forward_proj`: only `"gated-gelu"` (T5 v1.1: $\\mathrm{GELU}_{\\tanh}(x W_0) \\odot x W_1$).
    """

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __check_init__(self):
        check_sizes(self, "vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")
        exact = self.relative_attention_num_buckets // 4  # offsets below this get a bucket each
        if exact < 1 or self.relative_attention_max_distance <= exact:
            raise ValueError(
                "T5Config needs relative_attention_num_buckets >= 4 and relative_attention_max_distance > "
                f"relative_attention_num_buckets // 4; got {self.relative_attention_num_buckets} and "
                f"{self.relative_attention_max_distance}."
            )
        if self.feed_forward_proj != "gated-gelu":
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported: this is a T5 v1.1 encoder "
                "(feed_forward_proj='gated-gelu'), as used by FLUX."
            )

    @classmethod
    def from_json(cls, path: str | Path) -> "T5Config":
        """Reads a transformers `config.json`. Keys this class does not know are ignored; the sizes are
        required, the other keys default as in transformers (so a config without `feed_forward_proj`
        is a ReLU T5, refused). A wrong type, a missing size or an invalid value raises
        `CheckpointError` naming the file and the key."""
        return make_config(cls, read_config(read_json(path), cls, _DEFAULTS, path), path)


# transformers' `T5Config` defaults for the keys that are not sizes.
_DEFAULTS = dict(
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
)


def _relative_buckets(seq: int, num_buckets: int, max_distance: int) -> Int[Array, "seq seq"]:
    """T5's bidirectional bucket of the offset $j - i$ for every query $i$ and key $j$."""
    offset = jnp.arange(seq, dtype=jnp.int32)[None, :] - jnp.arange(seq, dtype=jnp.int32)[:, None]
    half = num_buckets // 2  # one half per direction: keys after the query use the upper half
    bucket = jnp.where(offset > 0, half, 0)
    distance = jnp.abs(offset)
    exact = half // 2  # distances below this get a bucket each; the rest share log-spaced buckets
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (half - exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return bucket + jnp.where(distance < exact, distance, large)


class _T5Layer(eqx.Module):
    attn_norm: eqx.nn.RMSNorm
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    o: eqx.nn.Linear
    ff_norm: eqx.nn.RMSNorm
    wi_0: eqx.nn.Linear
    wi_1: eqx.nn.Linear
    wo: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, config: T5Config, *, dtype, key: PRNGKeyArray):
        d, inner, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
        kq, kk, kv, ko, k0, k1, k2 = jr.split(key, 7)
        eps = config.layer_norm_epsilon
        linear = functools.partial(eqx.nn.Linear, use_bias=False, dtype=dtype)
        self.attn_norm = eqx.nn.RMSNorm(d, eps=eps, use_bias=False, dtype=dtype)
        self.q, self.k, self.v = (linear(d, inner, key=k) for k in (kq, kk, kv))
        self.o = linear(inner, d, key=ko)
        self.ff_norm = eqx.nn.RMSNorm(d, eps=eps, use_bias=False, dtype=dtype)
        self.wi_0 = linear(d, f, key=k0)
        self.wi_1 = linear(d, f, key=k1)
        self.wo = linear(f, d, key=k2)
        self.num_heads = config.num_heads

    def __call__(
        self,
        x: Float[Array, "seq d_model"],
        bias: Float[Array, "heads seq seq"],
        mask: Bool[Array, " seq"] | None,
    ) -> Float[Array, "seq d_model"]:
        seq = x.shape[0]
        h = jax.vmap(self.attn_norm)(x)
        q, k, v = (jax.vmap(lin)(h).reshape(seq, self.num_heads, -1) for lin in (self.q, self.k, self.v))
        a = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0)
        x = x + jax.vmap(self.o)(a.reshape(seq, -1))
        h = jax.vmap(self.ff_norm)(x)
        gate = jax.nn.gelu(jax.vmap(self.wi_0)(h), approximate=True)
        return x + jax.vmap(self.wo)(gate * jax.vmap(self.wi_1)(h))


class T5Encoder(eqx.Module):
    r"""The encoder of T5 v1.1 (transformers' `T5EncoderModel`), FLUX's second text encoder.

    For token ids $w_1, \dots, w_L$, $h^{(0)}_i = E_{w_i}$ (no position embedding), then for each layer

    $$h \leftarrow h + W_o\,\mathrm{softmax}\big(q k^\top + B\big) v, \quad (q, k, v) = \mathrm{RMS}_1(h)
      (W_q, W_k, W_v), \qquad
      h \leftarrow h + W_{o}' \big(\mathrm{GELU}_{\tanh}(W_0 \mathrm{RMS}_2(h)) \odot W_1 \mathrm{RMS}_2(h)
      \big),$$

    per head, with no $1/\sqrt{d_{kv}}$ scaling. $\mathrm{RMS}(x) = g \odot x / \sqrt{\overline{x^2} +
    \epsilon}$ (no mean subtraction; the statistic in float32). The bias
    $B_{hij} = b_{\mathrm{bucket}(j - i),\,h}$ comes from one learned table (the first layer's in the
    checkpoint) and is shared by every layer; buckets are exact for $|j - i| < 8$, logarithmic up to
    `relative_attention_max_distance`, separate for each direction. The output is
    $\mathrm{RMS}_f(h^{(n)})$.

    ??? cite "Reference"
        ```bibtex
        @article{raffel2020t5,
          title={Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer},
          author={Raffel, Colin and Shazeer, Noam and Roberts, Adam and Lee, Katherine and Narang,
                  Sharan and Matena, Michael and Zhou, Yanqi and Li, Wei and Liu, Peter J.},
          journal={Journal of Machine Learning Research},
          volume={21}, number={140}, pages={1--67}, year={2020}}
        @article{shazeer2020glu,
          title={{GLU} Variants Improve Transformer}, author={Shazeer, Noam},
          journal={arXiv:2002.05202}, year={2020}}
        ```

    **Arguments:**

    - `config`: a [`T5Config`][diffuse_eqx.models.flux.T5Config].
    - `dtype`: the parameters' dtype (`jnp.float32` or `jnp.bfloat16`).
    - `key`: a JAX random key (random weights; use
      [`T5Encoder.from_pretrained`][diffuse_eqx.models.flux.T5Encoder.from_pretrained] for real ones).
    """

    embedding: Float[Array, "vocab d_model"]
    relative_attention_bias: Float[Array, "buckets heads"]
    layers: _T5Layer  # stacked: every leaf has a leading layer axis
    final_norm: eqx.nn.RMSNorm
    config: T5Config = eqx.field(static=True)

    def __init__(self, config: T5Config, *, dtype=jnp.float32, key: PRNGKeyArray):
        ke, kb, kl = jr.split(key, 3)
        d, eps = config.d_model, config.layer_norm_epsilon
        self.embedding = jr.normal(ke, (config.vocab_size, d), dtype)
        self.relative_attention_bias = jr.normal(
            kb, (config.relative_attention_num_buckets, config.num_heads), dtype
        )
        self.layers = eqx.filter_vmap(lambda k: _T5Layer(config, dtype=dtype, key=k))(
            jr.split(kl, config.num_layers)
        )
        self.final_norm = eqx.nn.RMSNorm(d, eps=eps, use_bias=False, dtype=dtype)
        self.config = config

    def __call__(
        self, input_ids: Int[ArrayLike, " seq"], attention_mask: Int[ArrayLike, " seq"] | None = None
    ) -> Float[Array, "seq d_model"]:
        """**Arguments:**

        - `input_ids`: token ids, shape `(seq,)` (any length: positions are relative).
        - `attention_mask`: optional 1/0 key mask (1 = attend). FLUX's pipelines pass none (the default).

        **Returns:** the final hidden states, shape `(seq, d_model)`.
        """
        input_ids = check_token_ids(input_ids, self.config.vocab_size)
        (seq,) = input_ids.shape
        c = self.config
        mask = None if attention_mask is None else jnp.asarray(attention_mask) != 0
        buckets = _relative_buckets(seq, c.relative_attention_num_buckets, c.relative_attention_max_distance)
        bias = jnp.moveaxis(self.relative_attention_bias[buckets], -1, 0)  # (heads, query, key)
        params, static = eqx.partition(self.layers, eqx.is_array)

        def step(x, layer_params):
            return eqx.combine(layer_params, static)(x, bias, mask), None

        x, _ = jax.lax.scan(step, self.embedding[input_ids], params)
        return jax.vmap(self.final_norm)(x)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=jnp.float32) -> "T5Encoder":
        """Loads a transformers `T5EncoderModel` folder (FLUX's `text_encoder_2/`: `config.json` and
        `model.safetensors`, or shards with `model.safetensors.index.json`). Every tensor is checked: a
        missing, unexpected or mis-shaped one raises `CheckpointError` naming it.

        **Arguments:**

        - `path`: the folder.
        - `dtype`: the parameters' dtype (`jnp.float32` or `jnp.bfloat16`; norms and softmax compute in
            float32).
        """
        path, dtype = Path(path), floating_dtype(dtype)
        config = T5Config.from_json(path / "config.json")
        ckpt = Checkpoint(path, dtype)
        skeleton = eqx.filter_eval_shape(cls, config, dtype=dtype, key=jr.key(0))
        return load_into(skeleton, _convert(ckpt, config), ckpt.source)


def _convert(ckpt: Checkpoint, config: T5Config) -> dict[str, Array]:
    """Maps a transformers `T5EncoderModel` checkpoint to this module's parameter paths, and checks
    nothing is left. The token embedding is tied: `encoder.embed_tokens.weight` (what the encoder reads)
    and/or `shared.weight`; both are accepted."""
    d, inner, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
    embedding_shape = (config.vocab_size, d)
    names = [n for n in ("encoder.embed_tokens.weight", "shared.weight") if n in ckpt]
    if not names:
        ckpt.take("shared.weight")  # raises: missing tensor 'shared.weight'
    embeddings = [ckpt.take(n, embedding_shape) for n in names]
    prefix = "encoder.block.{}.layer."
    layer_tensors = {
        "attn_norm.weight": ("0.layer_norm.weight", (d,)),
        "q.weight": ("0.SelfAttention.q.weight", (inner, d)),
        "k.weight": ("0.SelfAttention.k.weight", (inner, d)),
        "v.weight": ("0.SelfAttention.v.weight", (inner, d)),
        "o.weight": ("0.SelfAttention.o.weight", (d, inner)),
        "ff_norm.weight": ("1.layer_norm.weight", (d,)),
        "wi_0.weight": ("1.DenseReluDense.wi_0.weight", (f, d)),
        "wi_1.weight": ("1.DenseReluDense.wi_1.weight", (f, d)),
        "wo.weight": ("1.DenseReluDense.wo.weight", (d, f)),
    }
    state = {
        "embedding": embeddings[0],
        "relative_attention_bias": ckpt.take(
            prefix.format(0) + "0.SelfAttention.relative_attention_bias.weight",
            (config.relative_attention_num_buckets, config.num_heads),
        ),
        "final_norm.weight": ckpt.take("encoder.final_layer_norm.weight", (d,)),
    }
    for ours, (theirs, shape) in layer_tensors.items():
        state[f"layers.{ours}"] = jnp.stack(
            [ckpt.take(prefix.format(i) + theirs, shape) for i in range(config.num_layers)]
        )
    ckpt.finish()
    return state
