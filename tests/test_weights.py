"""The shared checkpoint reader: every tensor checked, clear errors naming the tensor."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from diffuse_eqx.models._weights import Checkpoint, CheckpointError, load_into, parameter_paths


class Tiny(eqx.Module):
    lin: eqx.nn.Linear
    scale: jax.Array

    def __init__(self, key):
        self.lin = eqx.nn.Linear(3, 2, key=key)
        self.scale = jnp.ones(2)


def convert(ckpt: Checkpoint) -> dict:
    state = {
        "lin.weight": ckpt.take("proj.weight", (2, 3)),
        "lin.bias": ckpt.take("proj.bias", (2,)),
        "scale": ckpt.take("scale", (2,)),
    }
    ckpt.finish()
    return state


def tensors():
    rng = np.random.default_rng(0)
    return {
        "proj.weight": rng.normal(size=(2, 3)).astype(np.float32),
        "proj.bias": rng.normal(size=(2,)).astype(np.float32),
        "scale": rng.normal(size=(2,)).astype(np.float32),
    }


def skeleton():
    return eqx.filter_eval_shape(Tiny, jax.random.key(0))


def test_round_trip(tmp_path):
    save_file(tensors(), tmp_path / "model.safetensors")
    model = load_into(skeleton(), convert(Checkpoint(tmp_path)))
    np.testing.assert_array_equal(model.lin.weight, tensors()["proj.weight"])
    assert sorted(parameter_paths(model)) == ["lin.bias", "lin.weight", "scale"]


def test_prefix_and_dtype(tmp_path):
    save_file({"model.diffusion_model." + k: v for k, v in tensors().items()}, tmp_path / "m.safetensors")
    ckpt = Checkpoint(tmp_path / "m.safetensors", dtype=jnp.bfloat16, strip_prefix="model.diffusion_model.")
    model = load_into(skeleton(), convert(ckpt))
    assert model.lin.weight.dtype == jnp.bfloat16


def test_sharded_folder(tmp_path):
    t = tensors()
    save_file({"proj.weight": t["proj.weight"]}, tmp_path / "a.safetensors")
    save_file({"proj.bias": t["proj.bias"], "scale": t["scale"]}, tmp_path / "b.safetensors")
    index = {
        "weight_map": {"proj.weight": "a.safetensors", "proj.bias": "b.safetensors", "scale": "b.safetensors"}
    }
    (tmp_path / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    model = load_into(skeleton(), convert(Checkpoint(tmp_path)))
    # every tensor comes from its own shard, with its values
    np.testing.assert_array_equal(model.lin.weight, t["proj.weight"])
    np.testing.assert_array_equal(model.lin.bias, t["proj.bias"])
    np.testing.assert_array_equal(model.scale, t["scale"])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.pop("proj.bias"), "missing tensor 'proj.bias'"),
        (lambda t: t.update(extra=np.zeros(1, np.float32)), "unexpected tensors.*'extra'"),
        (lambda t: t.update(scale=np.zeros(3, np.float32)), "'scale' has shape \\(3,\\)"),
    ],
)
def test_bad_checkpoints_name_the_tensor(tmp_path, edit, match):
    t = tensors()
    edit(t)
    save_file(t, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=match):
        convert(Checkpoint(tmp_path))


def test_corrupt_file(tmp_path):
    save_file(tensors(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        convert(Checkpoint(tmp_path))


def test_load_into_checks_the_state():
    good = {"lin.weight": jnp.zeros((2, 3)), "lin.bias": jnp.zeros(2), "scale": jnp.zeros(2)}
    with pytest.raises(CheckpointError, match="lin.bias"):
        load_into(skeleton(), {k: v for k, v in good.items() if k != "lin.bias"})
    with pytest.raises(CheckpointError, match="extra"):
        load_into(skeleton(), {**good, "extra": jnp.zeros(1)})
    with pytest.raises(CheckpointError, match="'scale' needs shape"):
        load_into(skeleton(), {**good, "scale": jnp.zeros(5)})
