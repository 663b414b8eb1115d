"""Tiny random FLUX checkpoints for the FLUX tests.

PyTorch reference models (diffusers, transformers) with small configurations and random weights, built
once per process (`functools.cache`: the tests only read them), written in their real diffusers folder
layouts as safetensors by `save`, and the BFL single-file layouts derived from them. Also the one
error measure the FLUX tests use, `rel_err`.
"""

import functools
import math
import re
from pathlib import Path

import numpy as np
import torch


# --------------------------------------------------------------------------------------------- tools


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|, in float64 (`ref` an array or a torch tensor)."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach().numpy()
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, in eval mode: norm gains 1 + 0.3 N(0, 1) (a unit gain would hide a
    transposed or missing one), embedding tables N(0, 1), other weights N(0, 1 / fan_in) (unit-gain
    layers), biases 0.1 N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                if isinstance(module, torch.nn.Embedding):
                    p.copy_(noise)
                elif p.ndim == 1 and name == "weight":  # LayerNorm, GroupNorm, RMSNorm, T5LayerNorm
                    p.copy_(1 + 0.3 * noise)
                elif p.ndim >= 2:
                    p.copy_(noise / math.sqrt(p[0].numel()))
                else:
                    p.copy_(0.1 * noise)
    return model.eval()


def save(model, folder: Path) -> Path:
    """Writes a diffusers / transformers model or pipeline in its folder layout, as safetensors."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# -------------------------------------------------------------------------------------- transformer

TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=24,
    axes_dims_rope=(4, 6, 6),
)


@functools.cache
def transformer(guidance: bool = True, depth: int = 2):
    """A small diffusers `FluxTransformer2DModel` (`depth` double and `depth` single blocks)."""
    import diffusers

    config = TRANSFORMER | dict(num_layers=depth, num_single_layers=depth, guidance_embeds=guidance)
    return randomise(diffusers.FluxTransformer2DModel(**config), seed=int(guidance) + 2 * depth)


def transformer_to_bfl(model) -> dict[str, torch.Tensor]:
    """A diffusers `FluxTransformer2DModel`'s tensors under BFL's names (the inverse of diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers`)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {}

    def linear(bfl, *names):
        for leaf in ("weight", "bias"):
            out[f"{bfl}.{leaf}"] = torch.cat([sd.pop(f"{n}.{leaf}") for n in names])

    linear("img_in", "x_embedder")
    linear("txt_in", "context_embedder")
    for bfl, ours in (
        ("time_in", "timestep_embedder"),
        ("vector_in", "text_embedder"),
        ("guidance_in", "guidance_embedder"),
    ):
        if f"time_text_embed.{ours}.linear_1.weight" in sd:
            linear(f"{bfl}.in_layer", f"time_text_embed.{ours}.linear_1")
            linear(f"{bfl}.out_layer", f"time_text_embed.{ours}.linear_2")
    for i in range(model.config.num_layers):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        linear(b + "img_mod.lin", d + "norm1.linear")
        linear(b + "txt_mod.lin", d + "norm1_context.linear")
        linear(b + "img_attn.qkv", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v")
        linear(b + "txt_attn.qkv", d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj")
        linear(b + "img_attn.proj", d + "attn.to_out.0")
        linear(b + "txt_attn.proj", d + "attn.to_add_out")
        for s, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{b}{s}_attn.norm.query_norm.scale"] = sd.pop(f"{d}attn.{q}.weight")
            out[f"{b}{s}_attn.norm.key_norm.scale"] = sd.pop(f"{d}attn.{k}.weight")
        for s, ff in (("img", "ff"), ("txt", "ff_context")):
            linear(f"{b}{s}_mlp.0", f"{d}{ff}.net.0.proj")
            linear(f"{b}{s}_mlp.2", f"{d}{ff}.net.2")
    for i in range(model.config.num_single_layers):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        linear(b + "modulation.lin", d + "norm.linear")
        linear(b + "linear1", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp")
        linear(b + "linear2", d + "proj_out")
        out[b + "norm.query_norm.scale"] = sd.pop(d + "attn.norm_q.weight")
        out[b + "norm.key_norm.scale"] = sd.pop(d + "attn.norm_k.weight")
    linear("final_layer.linear", "proj_out")
    for leaf in ("weight", "bias"):
        scale, shift = sd.pop(f"norm_out.linear.{leaf}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = torch.cat([shift, scale])
    assert not sd, f"unconverted diffusers tensors: {sorted(sd)}"
    return out


# -------------------------------------------------------------------------------------- autoencoder

# FLUX's structure (8x downsampling, 16 latent channels, no quant convs, FLUX's latent normalisation),
# small channels; another with quant convs, 8 groups, no shift and no mid-block attention; and the
# pipeline's (2x downsampling, 4 latent channels).
FLUX_VAE = dict(
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=32,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SD_VAE = dict(
    block_out_channels=(16, 32),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.18215,
    shift_factor=None,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=False,
)
PIPELINE_VAE = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


@functools.cache
def autoencoder(seed: int = 0, **config):
    """A small diffusers `AutoencoderKL` (`config`: e.g. `FLUX_VAE`)."""
    import diffusers

    n = len(config["block_out_channels"])
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n)
    return randomise(diffusers.AutoencoderKL(**blocks, **config), seed)


def autoencoder_to_bfl(vae) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL`'s tensors under BFL's `ae.safetensors` names (the inverse of diffusers'
    `convert_ldm_vae_checkpoint`), attention projections as 1x1 convolutions."""
    n_levels = len(vae.config.block_out_channels)
    out = {}
    for name, tensor in vae.state_dict().items():
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.block.",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        for old, bfl in [
            ("group_norm", "norm"),
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "proj_out"),
        ]:
            new = new.replace(f"mid_block.attentions.0.{old}.", f"mid.attn_1.{bfl}.")
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight", new):
            tensor = tensor[:, :, None, None]
        assert new not in out
        out[new] = tensor.contiguous()
    return out


# ------------------------------------------------------------------------------------ text encoders

VOCAB = 100  # the text-encoder tests' vocabulary; the pipeline's tokenizers have 20 tokens
CLIP = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    eos_token_id=VOCAB - 1,
    bos_token_id=VOCAB - 2,
)
PIPELINE_CLIP = CLIP | dict(
    vocab_size=20,
    hidden_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    eos_token_id=1,
    bos_token_id=3,
    pad_token_id=0,
)
T5 = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)
PIPELINE_T5 = T5 | dict(vocab_size=20, d_ff=48, num_layers=1)


@functools.cache
def clip(seed: int = 0, **config):
    """A small transformers `CLIPTextModel` (`config`: e.g. `CLIP`)."""
    import transformers

    return randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)), seed)


@functools.cache
def t5(seed: int = 1, **config):
    """A small transformers `T5EncoderModel` (`config`: e.g. `T5`)."""
    import transformers

    return randomise(transformers.T5EncoderModel(transformers.T5Config(**config)), seed)


# ----------------------------------------------------------------------------------------- pipeline

HEIGHT = WIDTH = 32  # the tiny pipeline's images
PROMPT = "a serene mountain lake at sunset highly detailed"  # in the tiny tokenizers' vocabulary


def tiny_tokenizer(model_max_length: int):
    """A word-level tokenizer over a few words (`<s> ... </s>`, padded with `<pad>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a photo of cat dog serene mountain lake at sunset highly detailed landscape".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 3), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


@functools.cache
def pipeline():
    """A tiny FLUX.1-dev-shaped diffusers `FluxPipeline` (one block of each kind, 2x autoencoder,
    one-layer text encoders, tiny tokenizers), to write with `save` in the real layout."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=autoencoder(**PIPELINE_VAE),
        text_encoder=clip(**PIPELINE_CLIP),
        tokenizer=tiny_tokenizer(77),
        text_encoder_2=t5(**PIPELINE_T5),
        tokenizer_2=tiny_tokenizer(512),
        transformer=transformer(guidance=True, depth=1),
    )
