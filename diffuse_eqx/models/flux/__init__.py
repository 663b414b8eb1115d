"""FLUX.1 in Equinox: transformer, autoencoder, CLIP-L and T5 encoders, loaded from the public safetensors."""
