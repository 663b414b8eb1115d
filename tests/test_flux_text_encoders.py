"""FLUX's text encoders (CLIP-L, T5 v1.1) against transformers on small random configurations, and
their checkpoint checks."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flux_helpers import CLIP, T5, VOCAB, clip, rel_err, save, t5
from safetensors.numpy import load_file, save_file

from diffuse_eqx.models._weights import CheckpointError
from diffuse_eqx.models.flux.clip import CLIPTextConfig, CLIPTextEncoder
from diffuse_eqx.models.flux.t5 import T5Config, T5Encoder


RTOL = 1e-4  # max |ours - reference| <= RTOL * max |reference|


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    reference = clip(**CLIP)
    return reference, save(reference, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    reference = t5(**T5)
    return reference, save(reference, tmp_path_factory.mktemp("t5"))


def _ids(seq, eos_at=(), seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB - 1, seq).astype(np.int32)
    ids[list(eos_at)] = VOCAB - 1
    return ids


def _torch(x):
    return torch.tensor(np.asarray(x), dtype=torch.long)[None]


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("eos_token_id", [VOCAB - 1, 2, 50])  # CLIP-L's rule, the legacy argmax rule
def test_clip_matches_transformers(tmp_path, eos_token_id):
    reference = clip(**CLIP | dict(eos_token_id=eos_token_id))
    ours = CLIPTextEncoder.from_pretrained(save(reference, tmp_path))
    assert ours.config.eos_token_id == eos_token_id
    ids = _ids(77, eos_at=(20, 50))
    ids[ids == 50] = 51
    ids[[10, 30]] = 50  # a non-maximal eos id, before the maximal one: the two rules differ
    hidden, pooled = eqx.filter_jit(ours)(ids)
    with torch.no_grad():
        out = reference(_torch(ids))
    assert hidden.shape == (77, 32) and pooled.shape == (32,)
    assert rel_err(hidden, out.last_hidden_state[0]) <= RTOL
    assert rel_err(pooled, out.pooler_output[0]) <= RTOL
    expected = {VOCAB - 1: 20, 2: 20, 50: 10}[eos_token_id]
    np.testing.assert_array_equal(pooled, hidden[expected])


def test_clip_short_prompt_and_mask(clip_folder):
    reference, path = clip_folder
    ours = CLIPTextEncoder.from_pretrained(path)
    ids, mask = _ids(16, eos_at=(9,)), np.r_[np.ones(10), np.zeros(6)].astype(np.int32)
    with torch.no_grad():
        plain = reference(_torch(ids))
        masked = reference(_torch(ids), attention_mask=_torch(mask))
    hidden, pooled = ours(ids)
    assert rel_err(hidden, plain.last_hidden_state[0]) <= RTOL
    assert rel_err(pooled, plain.pooler_output[0]) <= RTOL
    hidden, _ = ours(ids, attention_mask=mask)
    assert rel_err(hidden, masked.last_hidden_state[0]) <= RTOL
    with pytest.raises(ValueError, match="at most 77"):
        ours(_ids(78))


@pytest.mark.parametrize("seq", [12, 200])  # 200 > max distance 128: the logarithmic and clipped buckets
def test_t5_matches_transformers(t5_folder, seq):
    reference, path = t5_folder
    ours = T5Encoder.from_pretrained(path)
    ids = _ids(seq, eos_at=(seq - 1,), seed=seq)
    with torch.no_grad():
        out = reference(_torch(ids))
    hidden = eqx.filter_jit(ours)(ids)
    assert hidden.shape == (seq, 32)
    assert rel_err(hidden, out.last_hidden_state[0]) <= RTOL


def test_t5_mask_matches_transformers(t5_folder):
    reference, path = t5_folder
    ids, mask = _ids(12, eos_at=(7,)), np.r_[np.ones(8), np.zeros(4)].astype(np.int32)
    with torch.no_grad():
        out = reference(_torch(ids), attention_mask=_torch(mask))
    hidden = T5Encoder.from_pretrained(path)(ids, attention_mask=mask)
    assert rel_err(hidden, out.last_hidden_state[0]) <= RTOL


def test_t5_relative_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from diffuse_eqx.models.flux.t5 import _relative_buckets

    seq = 600
    offsets = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]
    expected = T5Attention._relative_position_bucket(offsets, True, 32, 128).numpy()
    np.testing.assert_array_equal(np.asarray(_relative_buckets(seq, 32, 128)), expected)


# ------------------------------------------------------------------------------ checkpoint layouts


def _rewrite(src, dst, edit):
    """Copies a saved folder to `dst`, with its tensors edited by `edit(dict) -> dict`."""
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors")
    return dst


def test_clip_flux_layout(clip_folder, tmp_path):
    """FLUX's `text_encoder/` names carry `text_model.` and may keep the position-ids buffer."""
    reference, path = clip_folder

    def flux_layout(t):
        t = {"text_model." + k: v for k, v in t.items()}
        t["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        return t

    ours = CLIPTextEncoder.from_pretrained(_rewrite(path, tmp_path / "flux", flux_layout))
    ids = _ids(77, eos_at=(5,))
    with torch.no_grad():
        out = reference(_torch(ids))
    assert rel_err(ours(ids)[0], out.last_hidden_state[0]) <= RTOL


@pytest.mark.parametrize("names", [("shared.weight",), ("encoder.embed_tokens.weight",), ("both",)])
def test_t5_tied_embeddings_and_shards(t5_folder, tmp_path, names):
    reference, path = t5_folder

    def embeddings(t):
        table = t.pop("shared.weight")
        for name in ("shared.weight", "encoder.embed_tokens.weight") if names == ("both",) else names:
            t[name] = table
        return t

    folder = _rewrite(path, tmp_path / "t5", embeddings)
    # split into two shards with an index, as FLUX's text_encoder_2/ is stored
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, shard in shards.items():
        save_file({k: tensors[k] for k in shard}, folder / file)
    weight_map = {k: file for file, shard in shards.items() for k in shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = _ids(20, eos_at=(19,))
    with torch.no_grad():
        out = reference(_torch(ids))
    assert rel_err(T5Encoder.from_pretrained(folder)(ids), out.last_hidden_state[0]) <= RTOL


# ---------------------------------------------------------------------------------------------- errors

_CLIP_LAYER = "encoder.layers.1.self_attn.k_proj.weight"
_T5_LAYER = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"


def _pop(name):
    return lambda t: {k: v for k, v in t.items() if k != name}


def _add(name):
    return lambda t: {**t, name: np.zeros(3, np.float32)}


def _reshape(name):
    return lambda t: {**t, name: t[name][:-1]}


@pytest.mark.parametrize(
    "model, edit, match",
    [
        ("clip", _pop(_CLIP_LAYER), f"missing tensor '{_CLIP_LAYER}'"),
        ("clip", _add("text_projection.weight"), "unexpected tensors.*'text_projection.weight'"),
        ("clip", _reshape(_CLIP_LAYER), f"'{_CLIP_LAYER}' has shape \\(31, 32\\)"),
        ("clip", _reshape("embeddings.position_embedding.weight"), "position_embedding.weight' has shape"),
        ("t5", _pop(_T5_LAYER), f"missing tensor '{_T5_LAYER}'"),
        ("t5", _pop("shared.weight"), "missing tensor 'shared.weight'"),
        ("t5", _add("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"), "unexpected"),
        ("t5", _add("decoder.final_layer_norm.weight"), "unexpected tensors.*'decoder.final_layer_norm"),
        ("t5", _reshape(_T5_LAYER), f"'{_T5_LAYER}' has shape \\(63, 32\\)"),
    ],
)
def test_bad_checkpoint_names_the_tensor(clip_folder, t5_folder, tmp_path, model, edit, match):
    cls, (_, path) = (CLIPTextEncoder, clip_folder) if model == "clip" else (T5Encoder, t5_folder)
    with pytest.raises(CheckpointError, match=match):
        cls.from_pretrained(_rewrite(path, tmp_path / model, edit))


@pytest.mark.parametrize("model", ["clip", "t5"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file(clip_folder, t5_folder, tmp_path, model, damage):
    cls, (_, path) = (CLIPTextEncoder, clip_folder) if model == "clip" else (T5Encoder, t5_folder)
    folder = _rewrite(path, tmp_path / model, lambda t: t)
    data = (folder / "model.safetensors").read_bytes()
    data = data[: len(data) - 200] if damage == "truncated" else b"\x07not a safetensors file" * 10
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        cls.from_pretrained(folder)


def test_bad_config(t5_folder, tmp_path):
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="relu")
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="swish")
    with pytest.raises(CheckpointError, match="config.json"):
        T5Encoder.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ bf16


@pytest.mark.parametrize("model", ["clip", "t5"])
def test_bfloat16(clip_folder, t5_folder, model):
    cls, (_, path) = (CLIPTextEncoder, clip_folder) if model == "clip" else (T5Encoder, t5_folder)
    ids = _ids(77, eos_at=(30,))
    full, half = cls.from_pretrained(path), cls.from_pretrained(path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(eqx.filter(half, eqx.is_array))} == {jnp.dtype(jnp.bfloat16)}
    expected, got = full(ids), half(ids)
    if model == "clip":
        (expected, _), (got, pooled16) = expected, got
        assert pooled16.dtype == jnp.bfloat16
        np.testing.assert_array_equal(pooled16, got[30])
    assert got.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(got)))
    error = jnp.max(jnp.abs(got.astype(jnp.float32) - expected)) / jnp.max(jnp.abs(expected))
    assert error < 0.05, error
