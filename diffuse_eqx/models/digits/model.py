"""The digits model: a small class-conditional UNet predicting the velocity of the Flow path on 8x8
images, and the [`DigitsModel`][diffuse_eqx.models.digits.DigitsModel] that wraps it for sampling."""

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real, UInt8

from ..._check import check_nonnegative
from ..._guidance import CFG, ConditionalNetwork
from ..._path import Flow
from ..._predictor import AbstractPredictor, Predictor
from .._weights import (
    Checkpoint,
    check_sizes,
    load_into,
    make_config,
    parameter_paths,
    read_config,
    read_json,
)


#: The number of classes; label `N_CLASSES` (= 10) is the null label of classifier-free guidance.
N_CLASSES = 10
NULL_LABEL = N_CLASSES
#: The image size of scikit-learn's digits.
IMAGE_SHAPE = (8, 8)


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """The architecture of [`DigitsUNet`][diffuse_eqx.models.digits.DigitsUNet].

    **Arguments:**

    - `channels`: the channels at 8x8, 4x4 and 2x2.
    - `emb_dim`: the width of the time + label embedding.
    - `groups`: the groups of every GroupNorm (dividing every channel count).
    """

    channels: tuple[int, ...] = (32, 64, 96)
    emb_dim: int = 128
    groups: int = 8

    def __post_init__(self):
        check_sizes(self, "emb_dim", "groups")
        if len(self.channels) != 3 or any(
            isinstance(c, bool) or not isinstance(c, int) for c in self.channels
        ):
            raise ValueError(f"DigitsConfig.channels must be 3 ints (8x8, 4x4, 2x2); got {self.channels!r}.")
        bad = [c for c in self.channels if c < 1 or c % self.groups]
        if bad:
            raise ValueError(
                f"DigitsConfig.channels must be positive multiples of groups={self.groups}; "
                f"got {self.channels}."
            )


class _ResBlock(eqx.Module):
    """GroupNorm-SiLU-conv, the embedding as a scale and shift, GroupNorm-SiLU-conv, plus the input."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, config: DigitsConfig, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(config.groups, c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k1)
        self.emb = eqx.nn.Linear(config.emb_dim, 2 * c_out, key=k2)
        self.norm2 = eqx.nn.GroupNorm(config.groups, c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k3)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k4)

    def __call__(self, x: Float[Array, "c h w"], emb: Float[Array, " e"]) -> Float[Array, "c2 h w"]:
        h = _conv(self.conv1, jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb(emb), 2)
        h = self.norm2(h) * (1 + scale[:, None, None]) + shift[:, None, None]
        h = _conv(self.conv2, jax.nn.silu(h))
        return (x if self.skip is None else _conv(self.skip, x)) + h


def _conv(layer: eqx.nn.Conv2d, x: Float[Array, "c h w"], stride: int = 1) -> Float[Array, "c2 h2 w2"]:
    """`layer(x)` (a 1x1 conv, or a 3x3 one padded by 1) as one matrix product of the layer's weight
    with the patches of `x`, taken every `stride` pixels. XLA's CPU convolution (channels first) is
    about 20x slower inside a loop, the `lax.scan` of every sampler, than on its own (jax#12868); a
    dot is not. The same as `layer(x)` to float rounding (`tests/test_digits.py`)."""
    c_out, c_in, k, _ = layer.weight.shape
    if k == 1:
        out = jnp.einsum("oi,ihw->ohw", layer.weight[:, :, 0, 0], x[:, ::stride, ::stride])
    else:
        h, w = x.shape[1:]
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
        patches = jnp.stack(
            [padded[:, i : i + h : stride, j : j + w : stride] for i in range(3) for j in range(3)], 1
        )
        out = jnp.einsum("oik,ikhw->ohw", layer.weight.reshape(c_out, c_in, 9), patches)
    return out + layer.bias


def _time_features(t: Real[Array, ""], dim: int) -> Float[Array, " dim"]:
    """Sinusoidal features of $1000\\,t$ (periods from 1 to 10 000), as in DDPM and FLUX."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    angles = 1000.0 * t * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)])


def _upsample(x: Float[Array, "c h w"]) -> Float[Array, "c 2*h 2*w"]:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class DigitsUNet(eqx.Module):
    """A three-level UNet (8x8, 4x4, 2x2) with one residual block per level on the way down, two in
    the middle and one per level on the way up (its input the upsampled features concatenated with
    the skip connection); the time and the label (10 classes and a null label) enter every block as
    a scale and shift. Call it on one image: `net(x, t, label)` is the velocity $dx_t/dt$ of
    $x_t = (1 - t)\\,x_0 + t\\,\\varepsilon$."""

    config: DigitsConfig = eqx.field(static=True)
    time_mlp: eqx.nn.MLP
    label_emb: eqx.nn.Embedding
    conv_in: eqx.nn.Conv2d
    down: tuple[_ResBlock, ...]
    downsample: tuple[eqx.nn.Conv2d, ...]
    mid: tuple[_ResBlock, ...]
    up: tuple[_ResBlock, ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(self, config: DigitsConfig = DigitsConfig(), *, key):
        c0, c1, c2 = config.channels
        keys = iter(jr.split(key, 12))
        self.config = config
        e = config.emb_dim
        self.time_mlp = eqx.nn.MLP(e, e, e, depth=1, activation=jax.nn.silu, key=next(keys))
        self.label_emb = eqx.nn.Embedding(N_CLASSES + 1, e, key=next(keys))
        self.conv_in = eqx.nn.Conv2d(1, c0, 3, padding=1, key=next(keys))
        self.down = (_ResBlock(c0, c0, config, key=next(keys)), _ResBlock(c1, c1, config, key=next(keys)))
        self.downsample = (
            eqx.nn.Conv2d(c0, c1, 3, stride=2, padding=1, key=next(keys)),
            eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=next(keys)),
        )
        self.mid = (_ResBlock(c2, c2, config, key=next(keys)), _ResBlock(c2, c2, config, key=next(keys)))
        self.up = (
            _ResBlock(c2 + c1, c1, config, key=next(keys)),
            _ResBlock(c1 + c0, c0, config, key=next(keys)),
        )
        self.norm_out = eqx.nn.GroupNorm(config.groups, c0)
        self.conv_out = eqx.nn.Conv2d(c0, 1, 3, padding=1, key=next(keys))

    def __call__(
        self, x: Float[Array, "8 8"], t: Real[Array, ""], label: Int[Array, ""]
    ) -> Float[Array, "8 8"]:
        emb = jax.nn.silu(self.time_mlp(_time_features(t, self.config.emb_dim)) + self.label_emb(label))
        h = _conv(self.conv_in, x[None])
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = _conv(down, h, stride=2)
        for block in self.mid:
            h = block(h, emb)
        for block, skip in zip(self.up, reversed(skips)):
            h = block(jnp.concatenate([_upsample(h), skip]), emb)
        return _conv(self.conv_out, jax.nn.silu(self.norm_out(h)))[0]


class DigitsModel(eqx.Module):
    """The pretrained digits model: a class-conditional velocity network on the
    [`Flow`][diffuse_eqx.Flow] path, for 8x8 images with pixels in $[-1, 1]$ (scikit-learn's
    `load_digits`, 0 to 16, mapped by $x = p/8 - 1$).

    Build it with [`pretrained`][diffuse_eqx.models.digits.pretrained] (the shipped weights) or
    [`DigitsModel.load`][diffuse_eqx.models.digits.DigitsModel.load] (a folder written by
    `examples/train_digits.py`).

    **Arguments:**

    - `net`: the [`DigitsUNet`][diffuse_eqx.models.digits.DigitsUNet].
    """

    net: DigitsUNet

    @property
    def x0_shape(self) -> tuple[int, int]:
        """`(8, 8)`."""
        return IMAGE_SHAPE

    @property
    def path(self) -> Flow:
        """The path the network was trained on, [`Flow`][diffuse_eqx.Flow]:
        $x_t = (1 - t)\\,x_0 + t\\,\\varepsilon$."""
        return Flow()

    def __call__(
        self, x: Float[Array, "8 8"], t: Real[Array, ""], label: Int[Array, ""]
    ) -> Float[Array, "8 8"]:
        """The velocity at `(x, t)` for `label` (0 to 9, or `NULL_LABEL` = 10 for none), in `x`'s dtype."""
        return self.net(x, t, label).astype(x.dtype)

    def predictor(self, label: int | None = None, guidance: float = 1.0) -> AbstractPredictor:
        """The predictor to sample from.

        **Arguments:**

        - `label`: the digit, 0 to 9; `None` for the unconditional model (the null label).
        - `guidance`: the classifier-free guidance scale $w \\ge 0$
          ([`CFG`][diffuse_eqx.CFG] on a [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] of
          the label and the null label, 2 evaluations per step); `1` is the conditional model alone
          (1 evaluation). Needs a `label`.

        **Returns:** a [`Predictor`][diffuse_eqx.Predictor] (`guidance == 1` or no label) or a
        [`CFG`][diffuse_eqx.CFG].
        """
        check_nonnegative("guidance", guidance)
        if label is None:
            if not (isinstance(guidance, int | float) and guidance == 1):
                raise ValueError(
                    f"guidance={guidance} needs a label: the unconditional model has nothing to guide."
                )
            return Predictor(Labelled(self, jnp.int32(NULL_LABEL)), self.path)
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < N_CLASSES:
            raise ValueError(f"label must be an int from 0 to {N_CLASSES - 1} (or None); got {label!r}.")
        if isinstance(guidance, int | float) and guidance == 1:
            return Predictor(Labelled(self, jnp.int32(label)), self.path)
        return guided(self, jnp.int32(label), guidance)

    @staticmethod
    def to_uint8(samples: Real[ArrayLike, "*batch 8 8"]) -> UInt8[np.ndarray, "*batch 8 8"]:
        """Images in $[-1, 1]$ as uint8 grey levels 0 to 255 (clipped), for saving or showing."""
        x = np.clip((np.asarray(samples, np.float64) + 1) * 127.5, 0, 255)
        return np.rint(x).astype(np.uint8)

    @staticmethod
    def to_pixels(samples: Real[ArrayLike, "*batch 8 8"]) -> Float[np.ndarray, "*batch 8 8"]:
        """Images in $[-1, 1]$ on scikit-learn's scale, 0 to 16 (not rounded, not clipped)."""
        return (np.asarray(samples, np.float64) + 1) * 8

    @classmethod
    def load(cls, folder: str | Path) -> "DigitsModel":
        """Loads `config.json` and `weights.safetensors` from `folder`, checking every tensor;
        raises a `CheckpointError` naming a missing, unexpected or mis-shaped one."""
        folder = Path(folder)
        file = folder / "config.json"
        raw = read_json(file)
        values = read_config(raw.get("architecture"), DigitsConfig, {}, f"{file}: 'architecture'")
        config = make_config(DigitsConfig, values, file)
        ckpt = Checkpoint(folder / "weights.safetensors", jnp.float32)
        skeleton = eqx.filter_eval_shape(DigitsUNet, config, key=jr.key(0))
        state = {name: ckpt.take(name, leaf.shape) for name, leaf in parameter_paths(skeleton).items()}
        ckpt.finish()
        return cls(load_into(skeleton, state, str(folder)))


class Labelled(eqx.Module):
    """The model at one label, a network `(x, t) -> velocity`; the label is an array leaf, so that
    predictors of different labels share one compiled program (and a traced label works)."""

    model: DigitsModel
    label: Int[Array, ""]

    def __call__(self, x: Float[Array, "8 8"], t: Real[Array, ""]) -> Float[Array, "8 8"]:
        return self.model(x, t, self.label)


def guided(model: DigitsModel, label: Int[Array, ""], guidance) -> CFG:
    """[`CFG`][diffuse_eqx.CFG] with scale `guidance` between `label` and the null label (`label`
    may be traced)."""
    null = jnp.int32(NULL_LABEL)
    return CFG(ConditionalNetwork(model, model.path, cond=jnp.asarray(label, jnp.int32), null=null), guidance)
