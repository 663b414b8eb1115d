"""Reading safetensors checkpoints into Equinox modules, checking every tensor.

A model's converter reads checkpoint tensors with [`Checkpoint.take`][] (which names any missing or
mis-shaped tensor), builds a flat `{parameter path: array}` state for the Equinox model, and
[`load_into`][] puts it into a skeleton made with `eqx.filter_eval_shape` (so no random weights are
allocated first). Tensors the converter did not take are reported by [`Checkpoint.finish`][].
bf16 tensors are read as bf16 (`safetensors`' flax backend), never through a float32 host copy.
"""

import json
from collections.abc import Iterable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from tqdm.auto import tqdm


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: corrupt, missing, unexpected or mis-shaped tensors."""


def safetensors_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: a `.safetensors` file itself, or a folder holding a
    sharded checkpoint (`*.safetensors.index.json` listing its shards) or a single `.safetensors` file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint at {path}: expected a .safetensors file or a folder.")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{indexes[0]}: not a valid safetensors index ({e}).") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{indexes[0]} lists shards that are not in {path}: {missing}.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(
            f"{path}: expected one .safetensors file or a *.safetensors.index.json; found {len(files)} "
            f"safetensors files."
        )
    return files


class Checkpoint:
    """The tensors of one checkpoint, read on demand and cast to `dtype`.

    **Arguments:**

    - `path`: a `.safetensors` file or a folder (see [`safetensors_files`][]).
    - `dtype`: the dtype every floating tensor is cast to (on the device).
    - `strip_prefix`: a key prefix to drop where present (e.g. BFL's `model.diffusion_model.`).
    """

    def __init__(self, path: str | Path, dtype=jnp.float32, strip_prefix: str = ""):
        from safetensors import SafetensorError, safe_open

        self.source, self.dtype = str(path), jnp.dtype(dtype)
        self._handles, self._where = [], {}
        for file in safetensors_files(path):
            try:
                handle = safe_open(str(file), framework="flax")
                keys = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{file}: not a readable safetensors file ({e}).") from e
            self._handles.append(handle)
            for key in keys:
                name = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
                self._where[name] = (handle, key)
        self._taken: set[str] = set()
        self._progress = tqdm(
            total=len(self._where),
            desc=f"loading {Path(path).name}",
            unit="tensor",
            leave=False,
            disable=None,
        )

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name`, without reading it."""
        handle, key = self._lookup(name)
        return tuple(handle.get_slice(key).get_shape())

    def _lookup(self, name):
        if name not in self._where:
            raise CheckpointError(f"{self.source}: missing tensor {name!r}.")
        return self._where[name]

    def take(self, name: str, shape: Iterable[int] | None = None) -> jax.Array:
        """Reads tensor `name` (cast to the checkpoint's dtype), checking its shape when given."""
        handle, key = self._lookup(name)
        if shape is not None and self.shape(name) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: tensor {name!r} has shape {self.shape(name)}; the model expects "
                f"{tuple(shape)}."
            )
        try:
            array = handle.get_tensor(key)
        except Exception as e:  # a truncated file fails here, not at open
            raise CheckpointError(f"{self.source}: tensor {name!r} could not be read ({e}).") from e
        if name not in self._taken:
            self._taken.add(name)
            self._progress.update(1)
        if jnp.issubdtype(array.dtype, jnp.floating) and array.dtype != self.dtype:
            array = array.astype(self.dtype)
        return array

    def finish(self) -> None:
        """Raises if the converter left tensors it did not understand (an unexpected tensor)."""
        self._progress.close()
        unused = sorted(set(self._where) - self._taken)
        if unused:
            shown = ", ".join(repr(n) for n in unused[:5]) + (
                f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            )
            raise CheckpointError(f"{self.source}: unexpected tensors the model has no place for: {shown}.")


def parameter_paths(module: eqx.Module) -> dict[str, jax.Array | jax.ShapeDtypeStruct]:
    """`{"blocks.attn.qkv.weight": leaf, ...}` for every array leaf of `module`."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(module, _is_param))[0]
    return {".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _is_param(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct) or eqx.is_array(x)


def _key_name(k) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def load_into(skeleton: eqx.Module, state: dict[str, jax.Array], source: str = "checkpoint") -> eqx.Module:
    """Returns `skeleton` with every array leaf replaced by `state[path]` (paths as in
    [`parameter_paths`][]). Raises [`CheckpointError`][] naming any parameter that is missing from
    `state`, any entry of `state` the model has no parameter for, and any shape mismatch."""
    params, arrays = eqx.partition(skeleton, _is_param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [".".join(_key_name(k) for k in path) for path, _ in leaves]
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(f"{source}: no tensor for the model's parameters {missing[:5]}.")
    extra = sorted(set(state) - set(names))
    if extra:
        raise CheckpointError(f"{source}: converted tensors with no model parameter: {extra[:5]}.")
    new = []
    for name, (_, leaf) in zip(names, leaves):
        value = state[name]
        if tuple(value.shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"{source}: parameter {name!r} needs shape {tuple(leaf.shape)}; the checkpoint gives "
                f"{tuple(value.shape)}."
            )
        new.append(value)
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), arrays)
