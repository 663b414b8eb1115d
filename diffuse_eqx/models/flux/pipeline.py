"""FLUX.1 pipeline: loading, prompt encoding, latent packing and a conditioned velocity network.

FLUX is one model among others here: the pipeline turns a prompt into a velocity network
`network(x, t)` over packed latents, to give to [`Predictor`][diffuse_eqx.Predictor] with the
[`Flow`][diffuse_eqx.Flow] path, exactly like any other network.
"""

import dataclasses
import os
import threading
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real

from ..._check import check_int, check_positive
from ..._custom_types import Key
from ..._denoiser import Denoiser
from ..._edit import Blended, FlowEdit, InversionOutput, RFInversion, SDEdit, invert
from ..._guidance import ConditionalNetwork
from ..._integrator import AbstractIntegrator, Euler
from ..._path import Flow
from ..._predictor import Predictor
from ..._timer import FluxTimer
from .._weights import CheckpointError, floating_dtype, read_json
from .autoencoder import Autoencoder
from .clip import CLIPTextEncoder
from .t5 import T5Encoder
from .transformer import FluxTransformer


#: The files of a diffusers FLUX repository the pipeline reads (the BFL single files are skipped).
PIPELINE_FILES = [
    "model_index.json",
    "transformer/*",
    "vae/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
]


def resolve_checkpoint(repo_id_or_path: str | Path, *, timeout: float = 10.0) -> Path:
    """A local folder as it is, or a Hugging Face repository id: looked up in the local cache first,
    and only then (never with `HF_HUB_OFFLINE=1`) fetched from the hub, only the files the pipeline
    needs.

    **Arguments:**

    - `repo_id_or_path`: a folder in the diffusers FLUX layout, or a repository id such as
      `"black-forest-labs/FLUX.1-dev"`.
    - `timeout`: the seconds the hub has to answer a first request (name resolution and connection
      included) and each later metadata request. Reads during the download wait up to
      `HF_HUB_DOWNLOAD_TIMEOUT` (huggingface_hub's setting, 10 s by default).

    Raises a `RuntimeError` naming the repository and how to work offline when it is not cached and
    the hub cannot be asked (offline mode), does not answer in time, or refuses.
    """
    check_positive("timeout", timeout)
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        return path
    looks_like_a_path = str(repo_id_or_path).startswith(("/", ".", "~")) or "\\" in str(repo_id_or_path)
    if path.exists() or looks_like_a_path or str(repo_id_or_path).count("/") != 1:
        raise FileNotFoundError(
            f"{repo_id_or_path!r} is neither a folder in the diffusers FLUX layout nor a Hugging Face "
            "repository id such as 'black-forest-labs/FLUX.1-dev'."
        )
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = str(repo_id_or_path)
    try:
        return Path(snapshot_download(repo, allow_patterns=PIPELINE_FILES, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached, or cached in part
        pass
    offline_help = (
        "To work offline, download it once where the hub is reachable (gated models need `hf auth login` "
        "and the licence accepted) and set HF_HUB_OFFLINE=1, or pass a local folder."
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline or constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"{repo!r} is not in the local cache and HF_HUB_OFFLINE is set. {offline_help}")
    try:
        _within(timeout, lambda: HfApi().model_info(repo, timeout=timeout))  # the hub answers in time
        return Path(snapshot_download(repo, allow_patterns=PIPELINE_FILES, etag_timeout=timeout))
    except Exception as e:
        raise RuntimeError(
            f"Could not fetch {repo!r} from the Hugging Face hub ({type(e).__name__}: {e}), and it is not "
            f"in the local cache. {offline_help}"
        ) from e


def _within(seconds: float, fn):
    """`fn()`, run in a daemon thread and given up (`TimeoutError`) after `seconds`: a bound on the
    whole call, where socket timeouts bound each read only (and name resolution not at all)."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


#: `tokenizer_class` (a tokenizer folder's `tokenizer_config.json`) -> the transformers class that loads it.
TOKENIZER_CLASSES = {
    "CLIPTokenizer": "CLIPTokenizer",
    "CLIPTokenizerFast": "CLIPTokenizer",
    "T5Tokenizer": "T5Tokenizer",
    "T5TokenizerFast": "T5Tokenizer",
    "PreTrainedTokenizerFast": "PreTrainedTokenizerFast",  # reads tokenizer.json: data only
    "TokenizersBackend": "PreTrainedTokenizerFast",
}


def load_tokenizer(folder: Path):
    """The tokenizer saved in `folder`, loaded by the concrete transformers class its
    `tokenizer_config.json` names (see `TOKENIZER_CLASSES`), never through `AutoTokenizer`: an
    `auto_map` is not followed and no code from the folder runs. Raises `CheckpointError` for
    another class."""
    config = folder / "tokenizer_config.json"
    name = read_json(config).get("tokenizer_class")
    if name not in TOKENIZER_CLASSES:
        raise CheckpointError(
            f"{config}: tokenizer_class={name!r} is not one this pipeline loads; it loads "
            f"{sorted(TOKENIZER_CLASSES)} (no code from a checkpoint is run)."
        )
    import transformers

    cls = getattr(transformers, TOKENIZER_CLASSES[name])
    return cls.from_pretrained(folder, trust_remote_code=False, local_files_only=True)


class FluxConditionedNetwork(eqx.Module):
    """The FLUX transformer with a prompt baked in: `network(x, t)` over one particle of packed
    latents `x` of shape `(L_img, 4 C)`, returning the velocity $dx_t/dt$ of the `Flow` path
    $x_t = (1 - t) x_0 + t \\varepsilon$.

    **Arguments:**

    - `transformer`: the [`FluxTransformer`][diffuse_eqx.models.flux.FluxTransformer].
    - `txt`: T5 hidden states `(L_txt, 4096)`; `pooled`: CLIP pooled output `(768,)`.
    - `img_ids`, `txt_ids`: the position ids, `(L_img, 3)` and `(L_txt, 3)`.
    - `guidance`: the distilled guidance scale of FLUX.1-dev (`None` for schnell).
    """

    transformer: FluxTransformer
    txt: Float[Array, "L_txt d_txt"]
    pooled: Float[Array, " d_vec"]
    img_ids: Float[Array, "L_img 3"]
    txt_ids: Float[Array, "L_txt 3"]
    guidance: Float[Array, ""] | None = None

    def __call__(self, x: Float[Array, "L_img c"], t: Float[Array, ""] | float) -> Float[Array, "L_img c"]:
        v = self.transformer(x, self.txt, self.pooled, t, self.guidance, self.img_ids, self.txt_ids)
        return v.astype(x.dtype)


class FluxPromptNetwork(eqx.Module):
    """The FLUX transformer at one resolution with the prompt given at each call:
    `network(x, t, (txt, pooled))`, the network of a
    [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] that evaluates a prompt and a negative
    prompt in one transformer call of batch 2 (FLUX.1-dev's "true CFG").

    **Arguments:** `transformer`, `img_ids`, `txt_ids` and `guidance` as for
    [`FluxConditionedNetwork`][diffuse_eqx.models.flux.FluxConditionedNetwork]; the distilled
    guidance embedding is given to both prompts, as diffusers does.
    """

    transformer: FluxTransformer
    img_ids: Float[Array, "L_img 3"]
    txt_ids: Float[Array, "L_txt 3"]
    guidance: Float[Array, ""] | None = None

    def __call__(
        self,
        x: Float[Array, "L_img c"],
        t: Float[Array, ""] | float,
        prompt: tuple[Float[Array, "L_txt d_txt"], Float[Array, " d_vec"]],
    ) -> Float[Array, "L_img c"]:
        txt, pooled = prompt
        v = self.transformer(x, txt, pooled, t, self.guidance, self.img_ids, self.txt_ids)
        return v.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class FluxPipeline:
    """A FLUX.1 checkpoint in the diffusers layout: the transformer and autoencoder on the device,
    the text encoders read from disk only while a prompt is encoded, then released.

    **Arguments:**

    - `root`: the checkpoint folder.
    - `transformer`, `vae`: the loaded models.
    - `dtype`: the dtype of every model and of the latents.
    - `max_sequence_length`: T5 tokens (512 for dev, 256 for schnell).
    """

    root: Path
    transformer: FluxTransformer
    vae: Autoencoder
    dtype: jnp.dtype = jnp.float32
    max_sequence_length: int = 512

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | Path,
        dtype=jnp.float32,
        max_sequence_length: int | None = None,
        *,
        timeout: float = 10.0,
    ) -> "FluxPipeline":
        """Loads the transformer and the autoencoder of a diffusers-layout FLUX checkpoint (a folder,
        or a repository id found in the local cache or fetched: see
        [`resolve_checkpoint`][diffuse_eqx.models.flux.resolve_checkpoint], which `timeout` is given to)."""
        dtype = floating_dtype(dtype)
        root = resolve_checkpoint(repo_id_or_path, timeout=timeout)
        for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"{root} is not a diffusers FLUX checkpoint: no {sub}/ folder.")
        transformer = FluxTransformer.from_pretrained(root / "transformer", dtype=dtype)
        vae = Autoencoder.from_pretrained(root / "vae", dtype=dtype)
        if max_sequence_length is None:
            max_sequence_length = 512 if transformer.config.guidance_embed else 256
        return cls(root, transformer, vae, dtype, max_sequence_length)

    # --- text -------------------------------------------------------------------------------------

    def tokenize(self, prompt: str) -> tuple[Int[np.ndarray, " 77"], Int[np.ndarray, " L_txt"]]:
        """CLIP ids (77,) and T5 ids (`max_sequence_length`,), padded to full length as FLUX does (the
        tokenizers are loaded by `load_tokenizer`: no code from the checkpoint runs)."""
        clip_tok = load_tokenizer(self.root / "tokenizer")
        t5_tok = load_tokenizer(self.root / "tokenizer_2")
        clip_ids = clip_tok(
            prompt, padding="max_length", max_length=clip_tok.model_max_length, truncation=True
        )
        t5_ids = t5_tok(prompt, padding="max_length", max_length=self.max_sequence_length, truncation=True)
        return np.asarray(clip_ids["input_ids"], np.int32), np.asarray(t5_ids["input_ids"], np.int32)

    def encode_prompt(self, prompt: str) -> tuple[Float[Array, "L_txt d_txt"], Float[Array, " d_vec"]]:
        """T5 hidden states and the CLIP pooled embedding of `prompt`. Each encoder is loaded, run and
        released in turn, so at most one of them is on the device next to the transformer."""
        clip_ids, t5_ids = self.tokenize(prompt)
        clip = CLIPTextEncoder.from_pretrained(self.root / "text_encoder", dtype=self.dtype)
        _, pooled = eqx.filter_jit(clip)(jnp.asarray(clip_ids))
        pooled = jax.block_until_ready(pooled)
        del clip
        t5 = T5Encoder.from_pretrained(self.root / "text_encoder_2", dtype=self.dtype)
        txt = jax.block_until_ready(eqx.filter_jit(t5)(jnp.asarray(t5_ids)))
        del t5
        return txt, pooled

    # --- latents ----------------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for FLUX)."""
        return self.vae.config.downsampling

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The autoencoder latent's (h, w) for an image: even, as packing takes 2x2 patches."""
        f = 2 * self.vae_scale_factor
        if height < f or width < f or height % f or width % f:
            raise ValueError(
                f"height and width must be multiples of {f} (at least {f}); got {height}x{width}. Use e.g. "
                f"{max(f, height // f * f)}x{max(f, width // f * f)}."
            )
        return 2 * (height // f), 2 * (width // f)

    def image_seq_len(self, height: int, width: int) -> int:
        """Packed image tokens: (h/2)(w/2) (1024 at 512x512, 4096 at 1024x1024)."""
        h, w = self.latent_size(height, width)
        return (h // 2) * (w // 2)

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape of one particle of packed latents, `(image_seq_len, 4 * latent_channels)`."""
        return self.image_seq_len(height, width), 4 * self.latent_channels

    def image_ids(self, height: int, width: int) -> Float[Array, "L_img 3"]:
        """Position ids of the packed image tokens: (0, row, column)."""
        h, w = self.latent_size(height, width)
        rows, cols = jnp.meshgrid(jnp.arange(h // 2), jnp.arange(w // 2), indexing="ij")
        ids = jnp.stack([jnp.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
        return ids.astype(jnp.float32)

    @staticmethod
    def pack(latents: Float[Array, "c h w"]) -> Float[Array, "L_img c4"]:
        """(C, h, w) -> (h/2 * w/2, 4C): 2x2 patches, channel-major within a patch (as diffusers)."""
        c, h, w = latents.shape
        x = latents.reshape(c, h // 2, 2, w // 2, 2).transpose(1, 3, 0, 2, 4)
        return x.reshape((h // 2) * (w // 2), 4 * c)

    def unpack(self, packed: Float[Array, "L_img c4"], height: int, width: int) -> Float[Array, "c h w"]:
        """Inverse of [`pack`][diffuse_eqx.models.flux.FluxPipeline.pack]."""
        h, w = self.latent_size(height, width)
        c = packed.shape[-1] // 4
        x = packed.reshape(h // 2, w // 2, c, 2, 2).transpose(2, 0, 3, 1, 4)
        return x.reshape(c, h, w)

    # --- sampling ---------------------------------------------------------------------------------

    def network(
        self,
        txt: Float[Array, "L_txt d_txt"],
        pooled: Float[Array, " d_vec"],
        height: int,
        width: int,
        guidance: float | None = 3.5,
    ) -> FluxConditionedNetwork:
        """The velocity network for these prompt embeddings at this resolution. `guidance` is the
        distilled guidance scale of FLUX.1-dev; it must be `None` for models without it (schnell)."""
        if self.transformer.config.guidance_embed and guidance is None:
            raise ValueError("This FLUX transformer has a guidance embedding (dev): give `guidance`.")
        if not self.transformer.config.guidance_embed:
            guidance = None
        return FluxConditionedNetwork(
            transformer=self.transformer,
            txt=txt.astype(self.dtype),
            pooled=pooled.astype(self.dtype),
            img_ids=self.image_ids(height, width),
            txt_ids=jnp.zeros((txt.shape[0], 3), jnp.float32),
            guidance=None if guidance is None else jnp.asarray(guidance, jnp.float32),
        )

    def condition(self, prompt: str, height: int, width: int, guidance: float | None = 3.5):
        """[`encode_prompt`][diffuse_eqx.models.flux.FluxPipeline.encode_prompt] then
        [`network`][diffuse_eqx.models.flux.FluxPipeline.network]."""
        txt, pooled = self.encode_prompt(prompt)
        return self.network(txt, pooled, height, width, guidance)

    def network_with_negative(
        self,
        txt: Float[Array, "L_txt d_txt"],
        pooled: Float[Array, " d_vec"],
        negative_txt: Float[Array, "L_txt d_txt"],
        negative_pooled: Float[Array, " d_vec"],
        height: int,
        width: int,
        guidance: float | None = 3.5,
    ) -> ConditionalNetwork:
        """The velocity networks of a prompt and a negative prompt, evaluated together (one
        transformer call of batch 2), for [`CFG`][diffuse_eqx.CFG] and the other guidance modules:
        `dx.CFG(pipe.network_with_negative(...), true_cfg)` is diffusers' `true_cfg_scale`
        ($v^- + w(v^+ - v^-)$), beside the distilled `guidance` embedding of FLUX.1-dev given to both."""
        single = self.network(txt, pooled, height, width, guidance)
        network = FluxPromptNetwork(single.transformer, single.img_ids, single.txt_ids, single.guidance)
        cond = (single.txt, single.pooled)
        null = (negative_txt.astype(self.dtype), negative_pooled.astype(self.dtype))
        return ConditionalNetwork(network, Flow(), cond=cond, null=null, prediction="velocity")

    def condition_with_negative(
        self, prompt: str, negative_prompt: str, height: int, width: int, guidance: float | None = 3.5
    ) -> ConditionalNetwork:
        """[`encode_prompt`][diffuse_eqx.models.flux.FluxPipeline.encode_prompt] of both prompts,
        then [`network_with_negative`][diffuse_eqx.models.flux.FluxPipeline.network_with_negative]."""
        txt, pooled = self.encode_prompt(prompt)
        negative_txt, negative_pooled = self.encode_prompt(negative_prompt)
        return self.network_with_negative(txt, pooled, negative_txt, negative_pooled, height, width, guidance)

    def timer(self, n_steps: int, height: int, width: int) -> FluxTimer:
        """FLUX's own schedule for this model and resolution, as in BFL's reference
        (`get_schedule(..., shift=name != "flux-schnell")`): for dev (a guidance embedding) the dynamic
        shift from the image tokens; for schnell (none) no shift, $t_i = 1 - i/N$."""
        if not self.transformer.config.guidance_embed:
            return FluxTimer(n_steps=n_steps, shift=1.0)
        return FluxTimer(n_steps=n_steps, image_seq_len=self.image_seq_len(height, width))

    # --- images -----------------------------------------------------------------------------------

    def decode(self, packed: Float[Array, "L_img c4"], height: int, width: int) -> Float[Array, "3 H W"]:
        """Packed latents of one sample -> an image in [-1, 1] (not clipped), shape (3, H, W)."""
        return self.vae.decode(self.unpack(packed, height, width))

    def encode(self, image: Float[Array, "3 H W"]) -> Float[Array, "L_img c4"]:
        """An image in [-1, 1] -> packed latents (the autoencoder's posterior mean), for inverse
        problems."""
        return self.pack(self.vae.encode(image))

    # --- editing ----------------------------------------------------------------------------------

    def predictor(self, prompt: str, height: int, width: int, guidance: float | None = 3.5) -> Predictor:
        """The velocity [`Predictor`][diffuse_eqx.Predictor] of `prompt` on the `Flow` path (the
        distilled `guidance` of FLUX.1-dev; `None` for schnell)."""
        return Predictor(self.condition(prompt, height, width, guidance), Flow(), "velocity")

    def _image(self, image, owner: str) -> tuple[Float[Array, "3 H W"], int, int]:
        image = jnp.asarray(image)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"{owner}: image must have shape (3, H, W), values in [-1, 1]; got {image.shape}."
            )
        height, width = int(image.shape[1]), int(image.shape[2])
        if height % 16 or width % 16:
            raise ValueError(
                f"{owner}: the image's height and width must be multiples of 16; got {height}x{width}."
            )
        if not bool(jnp.all(jnp.isfinite(image))):
            raise ValueError(f"{owner}: the image has NaN or infinite values.")
        return image.astype(self.dtype), height, width

    def _decode_all(self, packed, height: int, width: int) -> Float[Array, "n 3 H W"]:
        decode = eqx.filter_jit(jax.vmap(lambda z: self.decode(z.astype(self.dtype), height, width)))
        return decode(packed)

    def invert(
        self,
        image: Float[Array, "3 H W"],
        prompt: str,
        steps: int = 28,
        *,
        integrator: AbstractIntegrator | None = None,
        guidance: float | None = 1.0,
        fixed_point: int = 0,
    ) -> InversionOutput:
        """Inverts an image to FLUX's noise: encodes it, then [`invert`][diffuse_eqx.invert]s the
        probability-flow ODE of `prompt` over the model's own grid of `steps` steps.
        `Denoiser.generate(key, 1, x_init=out.latents)` with the same predictor, integrator and grid
        regenerates it.

        **Arguments:**

        - `image`: shape (3, H, W), values in [-1, 1], H and W multiples of 16.
        - `prompt`: the source prompt.
        - `steps`: grid steps ([`timer`][diffuse_eqx.models.flux.FluxPipeline.timer]).
        - `integrator`: a deterministic integrator (default [`Euler`][diffuse_eqx.Euler]).
        - `guidance`: FLUX.1-dev's distilled guidance (default 1: inversion is usually run with
          little guidance; `None` for schnell).
        - `fixed_point`: refinement iterations of [`invert`][diffuse_eqx.invert].

        **Returns:** an [`InversionOutput`][diffuse_eqx.InversionOutput] of one particle, packed
        latents."""
        image, height, width = self._image(image, "invert")
        x = self.encode(image)[None].astype(jnp.float32)
        pred = self.predictor(prompt, height, width, guidance)
        return invert(
            integrator or Euler(), pred, self.timer(steps, height, width), x, fixed_point=fixed_point
        )

    def edit(
        self,
        image: Float[Array, "3 H W"],
        source_prompt: str,
        target_prompt: str,
        method: str = "flowedit",
        steps: int = 28,
        *,
        key: Key | None = None,
        n: int = 1,
        source_guidance: float | None = 1.5,
        target_guidance: float | None = 5.5,
        **options,
    ) -> Float[Array, "n 3 H W"]:
        """Edits an image from `source_prompt` to `target_prompt` and decodes the result.

        **Arguments:**

        - `image`: shape (3, H, W), values in [-1, 1], H and W multiples of 16.
        - `source_prompt`, `target_prompt`: the prompts (SDEdit uses the target only).
        - `method`: `"flowedit"` ([`FlowEdit`][diffuse_eqx.FlowEdit]), `"rf-inversion"`
          ([`RFInversion`][diffuse_eqx.RFInversion]) or `"sdedit"` ([`SDEdit`][diffuse_eqx.SDEdit]).
        - `steps`: grid steps of the model's own schedule.
        - `key`: a PRNG key (default `jr.key(0)`); `n` edits are drawn (different noise).
        - `source_guidance`, `target_guidance`: FLUX.1-dev's distilled guidance of each prompt
          (FlowEdit's FLUX defaults 1.5 and 5.5; `None` for schnell).
        - `options`: the method's parameters (e.g. `strength=0.85, n_avg=1` for FlowEdit,
          `gamma=0.5, eta=0.9, stop=0.25` for RF-Inversion, `strength=0.6` for SDEdit).

        **Returns:** the edited images, shape (n, 3, H, W), in [-1, 1] (not clipped)."""
        methods = {"flowedit": FlowEdit, "rf-inversion": RFInversion, "sdedit": SDEdit}
        if method not in methods:
            raise ValueError(f"edit: unknown method {method!r}; choose one of {sorted(methods)}.")
        edit = methods[method](**options)
        image, height, width = self._image(image, "edit")
        key = jr.key(0) if key is None else key
        x = jnp.repeat(self.encode(image)[None].astype(jnp.float32), check_int("n", n), axis=0)
        timer = self.timer(steps, height, width)
        target = self.predictor(target_prompt, height, width, target_guidance)
        if method == "sdedit":
            out = edit.edit(key, x, target, timer)
        else:
            source = self.predictor(source_prompt, height, width, source_guidance)
            out = edit.edit(key, x, source, target, timer)
        return self._decode_all(out.samples, height, width)

    def latent_mask(self, mask: Real[ArrayLike, "H W"]) -> Float[Array, "L_img c4"]:
        """A pixel mask (1: regenerate, 0: keep) as a mask of the packed latents: a latent pixel is
        regenerated where any of its 8x8 pixels is (the mask grows to the latent grid, so that no
        kept latent depends on a regenerated pixel)."""
        mask = jnp.asarray(mask, jnp.float32)
        f = self.vae_scale_factor
        if mask.ndim != 2 or mask.shape[0] % 16 or mask.shape[1] % 16:
            raise ValueError(f"the mask must have shape (H, W), multiples of 16; got {mask.shape}.")
        h, w = mask.shape[0] // f, mask.shape[1] // f
        cells = mask.reshape(h, f, w, f).max(axis=(1, 3))
        return self.pack(jnp.broadcast_to(cells, (self.latent_channels, h, w)))

    def inpaint(
        self,
        image: Float[Array, "3 H W"],
        mask: Real[ArrayLike, "H W"],
        prompt: str,
        steps: int = 28,
        *,
        key: Key | None = None,
        n: int = 1,
        guidance: float | None = 3.5,
        integrator: AbstractIntegrator | None = None,
    ) -> Float[Array, "n 3 H W"]:
        """Regenerates the masked part of an image (mask 1) with `prompt`, keeping the rest: blended
        latent diffusion ([`Blended`][diffuse_eqx.Blended]) with the latent mask of
        [`latent_mask`][diffuse_eqx.models.flux.FluxPipeline.latent_mask]. Returns `n` decoded
        images (n, 3, H, W)."""
        image, height, width = self._image(image, "inpaint")
        mask = jnp.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(
                f"inpaint: the mask must have the image's shape {(height, width)}; got {mask.shape}."
            )
        original = self.encode(image).astype(jnp.float32)
        blended = Blended(integrator or Euler(), original, self.latent_mask(mask))
        den = Denoiser(
            self.predictor(prompt, height, width, guidance),
            blended,
            self.timer(steps, height, width),
            original.shape,
        )
        out = den.generate(jr.key(0) if key is None else key, check_int("n", n))
        return self._decode_all(out.samples, height, width)

    def outpaint(
        self,
        image: Float[Array, "3 H W"],
        pad: tuple[int, int, int, int],
        prompt: str,
        steps: int = 28,
        **options,
    ) -> Float[Array, "n 3 H2 W2"]:
        """Extends an image by `pad = (top, bottom, left, right)` pixels (multiples of 16), generated
        with `prompt`: the image on a larger canvas,
        [`inpaint`][diffuse_eqx.models.flux.FluxPipeline.inpaint]ed outside it. `options` go to
        `inpaint` (`key`, `n`, `guidance`, `integrator`)."""
        image, height, width = self._image(image, "outpaint")
        if len(pad) != 4 or any(
            isinstance(p, bool) or not isinstance(p, int) or p < 0 or p % 16 for p in pad
        ):
            raise ValueError(
                f"outpaint: pad must be 4 non-negative multiples of 16 (top, bottom, left, right); got {pad}."
            )
        top, bottom, left, right = pad
        canvas = jnp.pad(image, ((0, 0), (top, bottom), (left, right)))
        mask = jnp.pad(jnp.zeros((height, width)), ((top, bottom), (left, right)), constant_values=1.0)
        return self.inpaint(canvas, mask, prompt, steps, **options)

    @staticmethod
    def to_uint8(images: Float[Array, "*batch 3 H W"]) -> np.ndarray:
        """Images in [-1, 1], channels first -> uint8 arrays, channels last."""
        x = np.asarray(jnp.clip((images.astype(jnp.float32) + 1) * 127.5, 0, 255).round(), np.uint8)
        return np.moveaxis(x, -3, -1)
