"""Pretrained models ported to Equinox."""
