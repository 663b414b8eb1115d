"""Hardening of checkpoint loading (issue 12): no code and no file from outside the checkpoint, typed
configs and floating weights only, token ids inside the vocabulary, a bounded wait for the hub, and
FLUX.1-schnell's unshifted schedule."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flux_helpers import CLIP, FLUX_VAE, PROMPT, T5, TRANSFORMER, clip, save, tiny_tokenizer
from safetensors.numpy import load_file, save_file

from diffuse_eqx.models._weights import Checkpoint, CheckpointError
from diffuse_eqx.models.flux import (
    Autoencoder,
    AutoencoderConfig,
    CLIPTextConfig,
    CLIPTextEncoder,
    FluxPipeline,
    FluxTransformer,
    FluxTransformerConfig,
    T5Config,
    T5Encoder,
)
from diffuse_eqx.models.flux.pipeline import load_tokenizer


ROOT = Path(__file__).resolve().parents[1]


def _tensors():
    rng = np.random.default_rng(0)
    return {"proj.weight": rng.normal(size=(2, 3)).astype(np.float32), "scale": np.ones(2, np.float32)}


def _index(folder: Path, text: str) -> None:
    (folder / "model.safetensors.index.json").write_text(text)


# ------------------------------------------------------------------------ 1. no code from a checkpoint


def _evil_tokenizer(folder: Path, marker: Path, tokenizer_class: str = "TokenizersBackend") -> Path:
    """The tests' tiny tokenizer with an `auto_map` pointing at a module of the folder that writes
    `marker` when imported."""
    tiny_tokenizer(77).save_pretrained(folder)
    (folder / "tokenization_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"auto_map": {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}}
    config |= {"tokenizer_class": tokenizer_class}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_tokenizer_auto_map_is_not_followed(tmp_path):
    marker = tmp_path / "marker"
    folder = _evil_tokenizer(tmp_path / "tokenizer", marker)
    ids = load_tokenizer(folder)(PROMPT)["input_ids"]
    assert ids == tiny_tokenizer(77)(PROMPT)["input_ids"]
    assert not marker.exists()


def test_tokenizer_class_outside_the_allowlist(tmp_path):
    marker = tmp_path / "marker"
    folder = _evil_tokenizer(tmp_path / "tokenizer", marker, tokenizer_class="EvilTokenizer")
    with pytest.raises(
        CheckpointError, match=r"tokenizer_config.json: tokenizer_class='EvilTokenizer'.*CLIPTokenizer"
    ):
        load_tokenizer(folder)
    assert not marker.exists()


def test_tokenize_never_runs_checkpoint_code(tmp_path):
    """`FluxPipeline.tokenize` on tokenizer folders of a custom class with an `auto_map`, in a process
    whose stdin answers "y": transformers' `AutoTokenizer` would ask whether to run the folder's code,
    read the "y", and run it."""
    marker = tmp_path / "marker"
    for name in ("tokenizer", "tokenizer_2"):
        _evil_tokenizer(tmp_path / name, marker, tokenizer_class="EvilTokenizer")
    script = (
        "import pathlib, types\n"
        "from diffuse_eqx.models.flux import FluxPipeline\n"
        f"pipe = types.SimpleNamespace(root=pathlib.Path({str(tmp_path)!r}), max_sequence_length=8)\n"
        "try:\n"
        f"    FluxPipeline.tokenize(pipe, {PROMPT!r})\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input="y\ny\n", capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert not marker.exists(), out.stdout + out.stderr
    assert "CheckpointError" in out.stdout and "EvilTokenizer" in out.stdout, out.stdout + out.stderr


def test_models_never_unpickle_or_load_by_auto_class():
    """No loader in `diffuse_eqx.models` unpickles, calls `torch.load`, evaluates code or goes through
    transformers' `Auto*` classes (which follow a checkpoint's `auto_map`)."""
    forbidden = re.compile(
        r"\bimport pickle|\bpickle\.|torch\.load|\beval\(|\bexec\(|trust_remote_code=True|DiffusionPipeline|"
        r"\bAuto(Tokenizer|Model\w*|Config|Processor)(\.from_pretrained|,|$)"
    )
    hits = [
        f"{file.relative_to(ROOT)}: {line.strip()}"
        for file in sorted((ROOT / "diffuse_eqx" / "models").rglob("*.py"))
        for line in file.read_text().splitlines()
        if forbidden.search(line)
    ]
    assert not hits, hits


# ----------------------------------------------------------------------- 2. no file outside the folder


@pytest.mark.parametrize("entry", ["absolute", "dotdot", "symlink"])
def test_shard_outside_the_folder_is_refused(tmp_path, entry):
    folder, outside = tmp_path / "ckpt", tmp_path / "outside.safetensors"
    folder.mkdir()
    save_file(_tensors(), outside)
    name = {"absolute": str(outside), "dotdot": "../outside.safetensors", "symlink": "link.safetensors"}[
        entry
    ]
    if entry == "symlink":
        (folder / name).symlink_to(outside)
    _index(folder, json.dumps({"weight_map": {"proj.weight": name, "scale": name}}))
    with pytest.raises(CheckpointError, match=f"entry {re.escape(repr(name))} points outside"):
        Checkpoint(folder)


def test_single_file_symlink_outside_is_refused(tmp_path):
    folder, outside = tmp_path / "ckpt", tmp_path / "elsewhere" / "weights.safetensors"
    folder.mkdir()
    outside.parent.mkdir()
    save_file(_tensors(), outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="'model.safetensors' points outside"):
        Checkpoint(folder)


def test_hugging_face_cache_symlinks_into_blobs_are_allowed(tmp_path):
    """The cache's layout: snapshot files are symlinks `../../../blobs/<hash>` into the same repository;
    a link into another repository's blobs is refused."""
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / ("a" * 40) / "transformer"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    t = _tensors()
    save_file({"proj.weight": t["proj.weight"]}, repo / "blobs" / "1111")
    save_file({"scale": t["scale"]}, repo / "blobs" / "2222")
    (repo / "blobs" / "3333").write_text(
        json.dumps({"weight_map": {"proj.weight": "a.safetensors", "scale": "b.safetensors"}})
    )
    for name, blob in [
        ("a.safetensors", "1111"),
        ("b.safetensors", "2222"),
        ("x.safetensors.index.json", "3333"),
    ]:
        (snapshot / name).symlink_to(Path("../../../blobs") / blob)
    ckpt = Checkpoint(snapshot)
    np.testing.assert_array_equal(ckpt.take("proj.weight", (2, 3)), t["proj.weight"])
    np.testing.assert_array_equal(ckpt.take("scale", (2,)), t["scale"])
    # a link into the blobs of another cached repository
    other = tmp_path / "hub" / "models--someone--else" / "blobs"
    other.mkdir(parents=True)
    save_file(t, other / "9999")
    (snapshot / "b.safetensors").unlink()
    (snapshot / "b.safetensors").symlink_to(other / "9999")
    with pytest.raises(CheckpointError, match="'b.safetensors' points outside"):
        Checkpoint(snapshot)


def test_tensor_in_two_shards(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "a.safetensors")
    save_file({"scale": t["scale"]}, tmp_path / "b.safetensors")
    _index(tmp_path, json.dumps({"weight_map": {"proj.weight": "a.safetensors", "scale": "b.safetensors"}}))
    with pytest.raises(
        CheckpointError, match=r"'scale' is stored twice, in \S*a.safetensors and in \S*b.safetensors"
    ):
        Checkpoint(tmp_path)


def test_tensor_listed_twice_in_the_index(tmp_path):
    t = _tensors()
    save_file({"proj.weight": t["proj.weight"]}, tmp_path / "a.safetensors")
    save_file({"scale": t["scale"]}, tmp_path / "b.safetensors")
    text = (
        '{"weight_map": {"proj.weight": "a.safetensors", "scale": "b.safetensors", "scale": "a.safetensors"}}'
    )
    _index(tmp_path, text)
    with pytest.raises(
        CheckpointError, match=r"'scale' is listed twice, for \['b.safetensors', 'a.safetensors'\]"
    ):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("shard", [5, None, ["a.safetensors"]])
def test_weight_map_values_must_be_strings(tmp_path, shard):
    save_file(_tensors(), tmp_path / "a.safetensors")
    _index(tmp_path, json.dumps({"weight_map": {"proj.weight": "a.safetensors", "scale": shard}}))
    with pytest.raises(CheckpointError, match="the shard of 'scale' must be a file name"):
        Checkpoint(tmp_path)


# ------------------------------------------------------------------ 3. tensor kinds, dtypes and configs


@pytest.mark.parametrize(
    "load",
    [
        lambda p: Checkpoint(p, dtype=jnp.int8),
        lambda p: FluxTransformer.from_pretrained(p, dtype=jnp.int8),
        lambda p: Autoencoder.from_pretrained(p, dtype=jnp.int8),
        lambda p: CLIPTextEncoder.from_pretrained(p, dtype=jnp.int8),
        lambda p: T5Encoder.from_pretrained(p, dtype=jnp.int8),
        lambda p: FluxPipeline.from_pretrained(p, dtype=jnp.int8),
        lambda p: FluxPipeline.from_pretrained(p, dtype=jnp.bool_),
    ],
    ids=["Checkpoint", "transformer", "autoencoder", "clip", "t5", "pipeline", "pipeline-bool"],
)
def test_non_floating_dtype_is_refused_at_once(tmp_path, load):
    """Before anything is read: the path does not even exist."""
    with pytest.raises(ValueError, match=r"dtype=(int8|bool) is not a floating-point dtype"):
        load(tmp_path / "nothing-here")


@pytest.mark.parametrize("stored, code", [(np.int8, "I8"), (np.bool_, "BOOL"), (np.int64, "I64")])
def test_integer_tensor_where_floats_are_expected(tmp_path, stored, code):
    t = _tensors()
    save_file({**t, "proj.weight": t["proj.weight"].astype(stored)}, tmp_path / "model.safetensors")
    ckpt = Checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=f"'proj.weight' is stored as {code}; the model expects floating"
    ):
        ckpt.take("proj.weight", (2, 3))
    assert ckpt.take("proj.weight", (2, 3), floating=False).dtype == stored  # read as stored on request


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save(clip(**CLIP), tmp_path_factory.mktemp("clip"))


def test_clip_position_ids_are_the_one_integer_buffer(clip_folder, tmp_path):
    tensors = load_file(clip_folder / "model.safetensors")
    save_file(
        {**tensors, "text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None]},
        tmp_path / "model.safetensors",
    )
    shutil.copy(clip_folder / "config.json", tmp_path)
    model = CLIPTextEncoder.from_pretrained(tmp_path)
    assert model.token_embedding.dtype == jnp.float32
    (name,) = [k for k in tensors if k.endswith("embeddings.token_embedding.weight")]
    save_file({**tensors, name: tensors[name].astype(np.int32)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="'embeddings.token_embedding.weight' is stored as I32"):
        CLIPTextEncoder.from_pretrained(tmp_path)


_VAE = FLUX_VAE | dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
_BASE = {
    "clip": (CLIPTextEncoder, CLIP),
    "t5": (T5Encoder, T5),
    "vae": (Autoencoder, _VAE),
    "transformer": (FluxTransformer, TRANSFORMER | dict(_class_name="FluxTransformer2DModel")),
}


def _folder_with_config(tmp_path: Path, model: str, edit) -> tuple[type, Path]:
    """A folder holding `config.json` (the model's test config, edited) and one placeholder tensor."""
    cls, config = _BASE[model]
    config = dict(config)
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"placeholder": np.zeros(1, np.float32)}, tmp_path / "model.safetensors")
    return cls, tmp_path


def _set(**changes):
    return lambda config: config.update(changes)


def _drop(key):
    return lambda config: config.pop(key)


@pytest.mark.parametrize(
    "model, edit, match",
    [
        ("clip", _set(num_hidden_layers="2"), "'num_hidden_layers' must be int; got '2'"),
        ("clip", _set(hidden_size=3.5), "'hidden_size' must be int; got 3.5"),
        ("clip", _set(intermediate_size=[64]), "'intermediate_size' must be int; got \\[64\\]"),
        ("clip", _set(num_attention_heads=True), "'num_attention_heads' must be int; got True"),
        ("clip", _drop("vocab_size"), "no 'vocab_size'"),
        ("clip", _set(num_hidden_layers=0), "num_hidden_layers must be a positive integer; got 0"),
        ("clip", _set(num_attention_heads=0), "num_attention_heads must be a positive integer; got 0"),
        ("clip", _set(layer_norm_eps="1e-5"), "'layer_norm_eps' must be float"),
        ("t5", _set(num_layers=0), "num_layers must be a positive integer; got 0"),
        ("t5", _set(d_model="32"), "'d_model' must be int"),
        ("t5", _drop("d_kv"), "no 'd_kv'"),
        ("t5", _set(num_heads=True), "'num_heads' must be int; got True"),
        ("t5", _drop("feed_forward_proj"), "feed_forward_proj='relu' is not supported"),
        ("t5", _set(relative_attention_num_buckets=2), "relative_attention_num_buckets >= 4"),
        ("vae", _set(layers_per_block=0), "layers_per_block must be a positive integer; got 0"),
        ("vae", _set(block_out_channels=[]), "block_out_channels must be a non-empty tuple"),
        ("vae", _set(block_out_channels=[32, "32", 64, 64]), "'block_out_channels'\\[1\\] must be int"),
        ("vae", _set(latent_channels=True), "'latent_channels' must be int; got True"),
        ("vae", _set(norm_num_groups=0), "norm_num_groups must be a positive integer; got 0"),
        ("vae", _drop("block_out_channels"), "no 'block_out_channels'"),
        ("vae", _set(use_quant_conv=1), "'use_quant_conv' must be bool; got 1"),
        ("transformer", _set(num_layers=0, num_single_layers=0), "num_layers and num_single_layers"),
        ("transformer", _set(num_attention_heads=0), "num_attention_heads=0 must be >= 1"),
        ("transformer", _set(attention_head_dim="16"), "'attention_head_dim' must be int"),
        ("transformer", _set(axes_dims_rope=[4, 6.0, 6]), "'axes_dims_rope'\\[1\\] must be int"),
        ("transformer", _set(guidance_embeds=1), "'guidance_embeds' must be bool"),
        ("transformer", _drop("joint_attention_dim"), "no 'joint_attention_dim'"),
        ("transformer", _set(in_channels=None), "no 'in_channels'"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path, model, edit, match):
    cls, folder = _folder_with_config(tmp_path, model, edit)
    with pytest.raises(CheckpointError, match="config.json: .*" + match):
        cls.from_pretrained(folder)


@pytest.mark.parametrize("model", sorted(_BASE))
def test_good_configs_get_past_the_config(tmp_path, model):
    """The unedited test configs are read; loading then stops at the placeholder tensor."""
    cls, folder = _folder_with_config(tmp_path, model, lambda config: None)
    with pytest.raises(CheckpointError, match="missing tensor|expected one autoencoder"):
        cls.from_pretrained(folder)


def test_vae_config_without_scaling_factor(tmp_path):
    config = {k: v for k, v in _VAE.items() if k != "scaling_factor"}
    with pytest.raises(CheckpointError, match="no 'scaling_factor'.*config=AutoencoderConfig"):
        AutoencoderConfig.from_diffusers(config)
    # diffusers reads an absent shift_factor as none: 0
    no_shift = {k: v for k, v in _VAE.items() if k != "shift_factor"}
    assert AutoencoderConfig.from_diffusers(no_shift).shift_factor == 0.0
    assert AutoencoderConfig.from_diffusers(_VAE) == AutoencoderConfig(**FLUX_VAE)


_CLIP_CONFIG = CLIPTextConfig(**{k: v for k, v in CLIP.items() if k != "bos_token_id"})
_T5_CONFIG = T5Config(**T5)


@pytest.mark.parametrize("model", ["clip", "t5"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("bad", [-1, CLIP["vocab_size"]])
def test_token_ids_outside_the_vocabulary(model, jit, bad):
    encoder = (
        CLIPTextEncoder(_CLIP_CONFIG, key=jr.key(0))
        if model == "clip"
        else T5Encoder(_T5_CONFIG, key=jr.key(0))
    )
    call = eqx.filter_jit(encoder) if jit else encoder
    ids = jnp.array([3, 7, CLIP["vocab_size"] - 1], jnp.int32)
    jax.block_until_ready(call(ids))  # in range: fine
    with pytest.raises(
        RuntimeError, match=r"input_ids must be token ids in \[0, 100\) \(vocabulary size 100\)"
    ):
        jax.block_until_ready(call(ids.at[1].set(bad)))


# ------------------------------------------------------------------------- 4. a hub that never answers


class BlackHole:
    """A server on 127.0.0.1 that accepts connections and never replies, counting them; its thread
    stops by itself after `lifetime` seconds."""

    def __init__(self, lifetime: float = 90.0):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port, self.connections, self._held = self.sock.getsockname()[1], 0, []
        self._deadline = time.monotonic() + lifetime
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while time.monotonic() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(conn)  # kept open, never answered
        for conn in self._held:
            conn.close()
        self.sock.close()


def _resolve_in_subprocess(hf_home: Path, endpoint_port: int, timeout: float, offline: bool = False):
    """`resolve_checkpoint("org/name", timeout=...)` in a fresh process whose hub is the given port;
    returns (return code, output, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    env |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": f"http://127.0.0.1:{endpoint_port}", "NO_PROXY": "*"}
    env |= {"HF_HUB_OFFLINE": "1"} if offline else {}
    script = (
        "from diffuse_eqx.models.flux import resolve_checkpoint\n"
        f"print('RESOLVED', resolve_checkpoint('org/name', timeout={timeout}))\n"
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    return out.returncode, out.stdout + out.stderr, time.monotonic() - start


def test_unanswering_hub_is_a_clear_error_in_time(tmp_path):
    hole = BlackHole()
    code, output, seconds = _resolve_in_subprocess(tmp_path / "hf", hole.port, timeout=2.0)
    assert code != 0 and "RESOLVED" not in output
    assert "Could not fetch 'org/name'" in output and "HF_HUB_OFFLINE=1" in output, output
    assert hole.connections >= 1  # it did ask the (silent) hub
    assert seconds < 30


def _fake_cache(hf_home: Path) -> Path:
    """`org/name` in the Hugging Face cache layout: refs/main, a snapshot linking into blobs/."""
    repo, sha = hf_home / "hub" / "models--org--name", "b" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "0000").write_text("{}")
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").symlink_to(Path("../../blobs/0000"))
    return snapshot


def test_cached_repo_resolves_without_the_network(tmp_path):
    snapshot = _fake_cache(tmp_path / "hf")
    hole = BlackHole()
    code, output, seconds = _resolve_in_subprocess(tmp_path / "hf", hole.port, timeout=25.0)
    assert code == 0 and f"RESOLVED {snapshot}" in output, output
    assert hole.connections == 0 and seconds < 25  # no request, so no wait for the 25 s timeout


def test_offline_mode_never_goes_online(tmp_path):
    hole = BlackHole()
    code, output, _ = _resolve_in_subprocess(tmp_path / "hf", hole.port, timeout=25.0, offline=True)
    assert code != 0 and "'org/name' is not in the local cache and HF_HUB_OFFLINE is set" in output, output
    assert hole.connections == 0


# ------------------------------------------------------------------------ 12. FLUX.1-schnell's schedule


def _pipeline(guidance_embed: bool) -> FluxPipeline:
    """A pipeline with FLUX.1's autoencoder geometry (8x) and parameter-free skeletons."""
    sizes = dict(in_channels=64, hidden_size=32, num_heads=2, depth=1, depth_single=1, axes_dim=(4, 6, 6))
    config = FluxTransformerConfig(**sizes, context_in_dim=8, vec_in_dim=8, guidance_embed=guidance_embed)
    transformer = eqx.filter_eval_shape(FluxTransformer, config, key=jr.key(0))
    vae = eqx.filter_eval_shape(Autoencoder, AutoencoderConfig.flux(), key=jr.key(0))
    return FluxPipeline(Path("."), transformer, vae)


@pytest.mark.parametrize("n_steps", [1, 4, 28])
def test_schnell_schedule_is_unshifted(n_steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    times = np.asarray(_pipeline(guidance_embed=False).timer(n_steps, 1024, 1024).times())
    np.testing.assert_allclose(times, np.linspace(1, 0, n_steps + 1), rtol=0, atol=1e-12)  # BFL, shift=False
    # diffusers' FLUX.1-schnell scheduler, with the sigmas its FluxPipeline passes
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n_steps, n_steps))
    np.testing.assert_allclose(times, scheduler.sigmas.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size, mu", [(512, 0.63), (1024, 1.15)])
def test_dev_schedule_keeps_the_dynamic_shift(size, mu):
    n_steps = 20
    timer = _pipeline(guidance_embed=True).timer(n_steps, size, size)
    tokens = (size // 16) ** 2
    m = (1.15 - 0.5) / (4096 - 256)
    exact_mu = 0.5 + m * (tokens - 256)  # BFL's get_lin_function(x1=256, y1=0.5, x2=4096, y2=1.15)
    assert round(exact_mu, 2) == mu
    u = np.linspace(1, 0, n_steps + 1)
    with np.errstate(divide="ignore"):
        expected = np.exp(exact_mu) / (np.exp(exact_mu) + (1 / u - 1))  # BFL's time_shift, sigma = 1
    np.testing.assert_allclose(np.asarray(timer.times()), expected, rtol=0, atol=1e-12)
