"""CLIP-L text encoder (FLUX's first text encoder) in Equinox, loaded from a transformers checkpoint.

The model is transformers' `CLIPTextModel`: token and learned position embeddings, pre-norm
transformer layers with causal self-attention, a final layer norm, and the pooled output read at the
end-of-text token. The checkpoint mapping (`_convert`) is at the bottom of this file.
"""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._weights import (
    Checkpoint,
    check_sizes,
    floating_dtype,
    load_into,
    make_config,
    read_config,
    read_json,
)


_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class CLIPTextConfig(eqx.Module):
    """Hyperparameters of a CLIP text tower, named as in transformers' `CLIPTextConfig` (the defaults are
    FLUX's CLIP-L, `text_encoder/config.json`).

    **Arguments:**

    - `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `intermediate_size`: the
        sizes of the vocabulary, the residual stream, the layer stack, the heads and the MLP.
    - `max_position_embeddings`: the longest sequence (77 for CLIP).
    - `hidden_act`: `"quick_gelu"` ($x\\,\\sigma(1.702 x)$, OpenAI CLIP) or `"gelu"` (exact).
    - `layer_norm_eps`: the layer norms' epsilon.
    - `eos_token_id`: the end-of-text token whose final state is the pooled output. The value 2 (old
        configs) selects transformers' legacy rule: the position of the largest token id.
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    def __check_init__(self):
        check_sizes(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        check_sizes(self, "intermediate_size", "max_position_embeddings")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {list(_ACTIVATIONS)}."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_attention_heads="
                f"{self.num_attention_heads}."
            )

    @classmethod
    def from_json(cls, path: str | Path) -> "CLIPTextConfig":
        """Reads a transformers `config.json` (a `CLIPTextModel` config, or a `CLIPModel` config with a
        `text_config`). Keys this class does not know are ignored; the sizes are required, the other
        keys default as in transformers. A wrong type, a missing size or an invalid value raises
        `CheckpointError` naming the file and the key."""
        raw = read_json(path)
        return make_config(cls, read_config(raw.get("text_config", raw), cls, _DEFAULTS, path), path)


# transformers' `CLIPTextConfig` defaults for the keys that are not sizes.
_DEFAULTS = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)


def check_token_ids(input_ids: Int[ArrayLike, " seq"], vocab_size: int) -> Int[Array, " seq"]:
    """`input_ids` as an array, with a run-time error (also under `jit`) if any id is outside the
    vocabulary $[0, V)$: an embedding lookup would silently clamp it."""
    input_ids = jnp.asarray(input_ids)
    bad = (input_ids < 0) | (input_ids >= vocab_size)
    return eqx.error_if(
        input_ids,
        jnp.any(bad),
        f"input_ids must be token ids in [0, {vocab_size}) (vocabulary size {vocab_size}).",
    )


class _CLIPLayer(eqx.Module):
    norm1: eqx.nn.LayerNorm
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    out: eqx.nn.Linear
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    act: str = eqx.field(static=True)

    def __init__(self, config: CLIPTextConfig, *, dtype, key: PRNGKeyArray):
        d, f, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        kq, kk, kv, ko, k1, k2 = jr.split(key, 6)
        self.norm1 = eqx.nn.LayerNorm(d, eps=eps, dtype=dtype)
        self.q, self.k, self.v = (eqx.nn.Linear(d, d, dtype=dtype, key=k) for k in (kq, kk, kv))
        self.out = eqx.nn.Linear(d, d, dtype=dtype, key=ko)
        self.norm2 = eqx.nn.LayerNorm(d, eps=eps, dtype=dtype)
        self.fc1 = eqx.nn.Linear(d, f, dtype=dtype, key=k1)
        self.fc2 = eqx.nn.Linear(f, d, dtype=dtype, key=k2)
        self.num_heads, self.act = config.num_attention_heads, config.hidden_act

    def __call__(
        self, x: Float[Array, "seq dim"], mask: Bool[Array, " seq"] | None
    ) -> Float[Array, "seq dim"]:
        seq, dim = x.shape
        h = jax.vmap(self.norm1)(x)
        q, k, v = (jax.vmap(lin)(h).reshape(seq, self.num_heads, -1) for lin in (self.q, self.k, self.v))
        a = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
        x = x + jax.vmap(self.out)(a.reshape(seq, dim))
        h = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.fc2)(_ACTIVATIONS[self.act](jax.vmap(self.fc1)(h)))


class CLIPTextEncoder(eqx.Module):
    r"""The CLIP text tower (transformers' `CLIPTextModel`), FLUX's first text encoder.

    For token ids $w_1, \dots, w_L$ ($L \le 77$):

    $$h^{(0)}_i = E_{w_i} + P_i,$$

    then for each layer, with $\mathrm{LN}$ a layer norm and causal multi-head attention
    ($\mathrm{softmax}(q k^\top / \sqrt{d_h})$, position $i$ attends to $j \le i$),

    $$h \leftarrow h + \mathrm{Attn}_{\text{causal}}(\mathrm{LN}_1(h)), \qquad
      h \leftarrow h + W_2\, \phi(W_1 \mathrm{LN}_2(h) + b_1) + b_2,$$

    with $\phi(x) = x\,\sigma(1.702\,x)$ (quick GELU). The output is $\mathrm{LN}_f(h^{(n)})$; the
    pooled output is its row at the end-of-text token (the first $i$ with $w_i$ = `eos_token_id`, or
    $\arg\max_i w_i$ when `eos_token_id == 2`, as in transformers).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{radford2021clip,
          title={Learning Transferable Visual Models From Natural Language Supervision},
          author={Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh,
                  Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin,
                  Pamela and Clark, Jack and Krueger, Gretchen and Sutskever, Ilya},
          booktitle={ICML}, year={2021}}
        ```

    **Arguments:**

    - `config`: a [`CLIPTextConfig`][diffuse_eqx.models.flux.CLIPTextConfig].
    - `dtype`: the parameters' dtype (`jnp.float32` or `jnp.bfloat16`).
    - `key`: a JAX random key (random weights; use
      [`CLIPTextEncoder.from_pretrained`][diffuse_eqx.models.flux.CLIPTextEncoder.from_pretrained] for real
      ones).
    """

    token_embedding: Float[Array, "vocab dim"]
    position_embedding: Float[Array, "positions dim"]
    layers: _CLIPLayer  # stacked: every leaf has a leading layer axis
    final_norm: eqx.nn.LayerNorm
    config: CLIPTextConfig = eqx.field(static=True)

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, key: PRNGKeyArray):
        kt, kp, kl = jr.split(key, 3)
        d = config.hidden_size
        self.token_embedding = 0.02 * jr.normal(kt, (config.vocab_size, d), dtype)
        self.position_embedding = 0.01 * jr.normal(kp, (config.max_position_embeddings, d), dtype)
        self.layers = eqx.filter_vmap(lambda k: _CLIPLayer(config, dtype=dtype, key=k))(
            jr.split(kl, config.num_hidden_layers)
        )
        self.final_norm = eqx.nn.LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype)
        self.config = config

    def __call__(
        self, input_ids: Int[ArrayLike, " seq"], attention_mask: Int[ArrayLike, " seq"] | None = None
    ) -> tuple[Float[Array, "seq dim"], Float[Array, " dim"]]:
        """**Arguments:**

        - `input_ids`: token ids, shape `(seq,)` with `seq <= max_position_embeddings`.
        - `attention_mask`: optional 1/0 key mask (1 = attend), combined with the causal mask. FLUX's
            pipelines pass none (the default).

        **Returns:** `(hidden, pooled)`: the final hidden states `(seq, dim)` and the end-of-text state
        `(dim,)`.
        """
        input_ids = check_token_ids(input_ids, self.config.vocab_size)
        (seq,) = input_ids.shape
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {seq} tokens; this CLIP encoder takes at most "
                f"{self.config.max_position_embeddings}. Truncate the prompt's tokens."
            )
        mask = None if attention_mask is None else jnp.asarray(attention_mask) != 0
        x = self.token_embedding[input_ids] + self.position_embedding[:seq]
        params, static = eqx.partition(self.layers, eqx.is_array)

        def step(x, layer_params):
            return eqx.combine(layer_params, static)(x, mask), None

        x, _ = jax.lax.scan(step, x, params)
        x = jax.vmap(self.final_norm)(x)
        if self.config.eos_token_id == 2:  # transformers' legacy rule: end-of-text is the largest id
            eos = jnp.argmax(input_ids)
        else:
            eos = jnp.argmax(input_ids == self.config.eos_token_id)
        return x, x[eos]

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=jnp.float32) -> "CLIPTextEncoder":
        """Loads a transformers `CLIPTextModel` folder (FLUX's `text_encoder/`: `config.json` and
        `model.safetensors`, or shards with `model.safetensors.index.json`). Every tensor is checked:
        a missing, unexpected or mis-shaped one raises `CheckpointError` naming it.

        **Arguments:**

        - `path`: the folder.
        - `dtype`: the parameters' dtype (`jnp.float32` or `jnp.bfloat16`; norms always compute their
            statistics in float32).
        """
        path, dtype = Path(path), floating_dtype(dtype)
        config = CLIPTextConfig.from_json(path / "config.json")
        ckpt = Checkpoint(path, dtype, strip_prefix="text_model.")
        skeleton = eqx.filter_eval_shape(cls, config, dtype=dtype, key=jr.key(0))
        return load_into(skeleton, _convert(ckpt, config), ckpt.source)


# transformers name (under `encoder.layers.N.`) -> ours (under `layers.`), for the stacked layer tensors.
_LAYER_NAMES = {
    "layer_norm1": "norm1",
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.out_proj": "out",
    "layer_norm2": "norm2",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}


def _convert(ckpt: Checkpoint, config: CLIPTextConfig) -> dict[str, Array]:
    """Maps a transformers `CLIPTextModel` checkpoint (names with or without the `text_model.` prefix,
    which the [`Checkpoint`][] strips) to this module's parameter paths, and checks nothing is left."""
    d, f = config.hidden_size, config.intermediate_size
    n, p = config.num_hidden_layers, config.max_position_embeddings
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "out": (d, d), "fc1": (f, d), "fc2": (d, f)}
    state = {
        "token_embedding": ckpt.take("embeddings.token_embedding.weight", (config.vocab_size, d)),
        "position_embedding": ckpt.take("embeddings.position_embedding.weight", (p, d)),
        "final_norm.weight": ckpt.take("final_layer_norm.weight", (d,)),
        "final_norm.bias": ckpt.take("final_layer_norm.bias", (d,)),
    }
    for theirs, ours in _LAYER_NAMES.items():
        weight = shapes.get(ours, (d,))
        for kind, shape in (("weight", weight), ("bias", weight[:1])):
            state[f"layers.{ours}.{kind}"] = jnp.stack(
                [ckpt.take(f"encoder.layers.{i}.{theirs}.{kind}", shape) for i in range(n)]
            )
    # Older checkpoints saved the position-ids buffer (0, 1, ..., 76); it holds no parameter.
    if "embeddings.position_ids" in ckpt:
        ckpt.take("embeddings.position_ids", (1, p), floating=False)
    ckpt.finish()
    return state
