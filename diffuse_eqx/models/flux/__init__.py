"""FLUX.1 in Equinox: transformer, autoencoder, CLIP-L and T5 encoders, loaded from the public safetensors
(diffusers folders and BFL single files), and a pipeline that returns a conditioned velocity network."""

from .autoencoder import Autoencoder as Autoencoder, AutoencoderConfig as AutoencoderConfig
from .clip import CLIPTextConfig as CLIPTextConfig, CLIPTextEncoder as CLIPTextEncoder
from .pipeline import (
    FluxConditionedNetwork as FluxConditionedNetwork,
    FluxPipeline as FluxPipeline,
    FluxPromptNetwork as FluxPromptNetwork,
    resolve_checkpoint as resolve_checkpoint,
)
from .t5 import T5Config as T5Config, T5Encoder as T5Encoder
from .transformer import FluxTransformer as FluxTransformer, FluxTransformerConfig as FluxTransformerConfig
