"""Reading safetensors checkpoints into Equinox modules, checking every tensor.

A model's converter reads checkpoint tensors with [`Checkpoint.take`][] (which names any missing or
mis-shaped tensor), builds a flat `{parameter path: array}` state for the Equinox model, and
[`load_into`][] puts it into a skeleton made with `eqx.filter_eval_shape` (so no random weights are
allocated first). Tensors the converter did not take are reported by [`Checkpoint.finish`][].
bf16 tensors are read as bf16 (`safetensors`' flax backend), never through a float32 host copy.
Nothing outside the checkpoint's folder is opened, and configs are read by one typed reader,
[`read_config`][].
"""

import collections
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from .._check import check_int


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: corrupt, missing, unexpected or mis-shaped tensors."""


def safetensors_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: a `.safetensors` file itself, or a folder holding a
    sharded checkpoint (`*.safetensors.index.json` listing its shards) or a single `.safetensors` file.
    Every file of a folder must lie inside it, symlinks resolved (the Hugging Face cache's links into
    its `blobs/` excepted), and every tensor of an index must name its shard once, by a file name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint at {path}: expected a .safetensors file or a folder.")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        index = _file_in(path, indexes[0].name)
        try:
            weight_map = json.loads(index.read_text(), object_pairs_hook=_unique_keys)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e}).") from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: 'weight_map' must be an object {{tensor name: shard file}}.")
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str):
                raise CheckpointError(f"{index}: the shard of {tensor!r} must be a file name; got {shard!r}.")
        files = [_file_in(path, name) for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are not in {path}: {missing}.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(
            f"{path}: expected one .safetensors file or a *.safetensors.index.json; found {len(files)} "
            f"safetensors files."
        )
    return [_file_in(path, files[0].name)]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict, refusing a key given twice (`json` would keep the last)."""
    twice = [k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1]
    if twice:
        raise ValueError(f"{twice[0]!r} is listed twice, for {[v for k, v in pairs if k == twice[0]]}")
    return dict(pairs)


def _file_in(folder: Path, name: str) -> Path:
    """`folder / name`, refused with a [`CheckpointError`][] naming `name` unless it resolves (symlinks
    followed) inside `folder`, or, for a folder in a Hugging Face cache snapshot
    (`models--org--name/snapshots/<revision>/...`, whose files link to `../../blobs/<hash>`), inside
    that repository's `blobs/`."""
    root, file = folder.resolve(), (folder / name).resolve()
    allowed = [root] + [
        snapshot.parent.parent / "blobs"
        for snapshot in (root, *root.parents)
        if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--")
    ][:1]
    if not any(file.is_relative_to(a) for a in allowed):
        raise CheckpointError(f"{folder}: entry {name!r} points outside the checkpoint folder (to {file}).")
    return folder / name


def floating_dtype(dtype) -> jnp.dtype:
    """`dtype` as a `jnp.dtype`; a `ValueError` naming it unless it is floating point (weights are
    never loaded as integers or bools)."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"dtype={dtype} is not a floating-point dtype; load weights as jnp.float32, jnp.bfloat16 or "
            "jnp.float16."
        )
    return dtype


class Checkpoint:
    """The tensors of one checkpoint, read on demand and cast to `dtype`.

    **Arguments:**

    - `path`: a `.safetensors` file or a folder (see [`safetensors_files`][]).
    - `dtype`: the floating dtype every floating tensor is cast to (on the device).
    - `strip_prefix`: a key prefix to drop where present (e.g. BFL's `model.diffusion_model.`).

    A tensor stored twice (in two shards, or with and without the prefix) is a `CheckpointError`.
    """

    def __init__(self, path: str | Path, dtype=jnp.float32, strip_prefix: str = ""):
        from safetensors import SafetensorError, safe_open

        self.source, self.dtype = str(path), floating_dtype(dtype)
        self._handles, self._where, file_of = [], {}, {}
        for file in safetensors_files(path):
            try:
                handle = safe_open(str(file), framework="flax")
                keys = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{file}: not a readable safetensors file ({e}).") from e
            self._handles.append(handle)
            for key in keys:
                name = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
                if name in self._where:
                    raise CheckpointError(
                        f"{self.source}: tensor {name!r} is stored twice, in {file_of[name]} and in {file}."
                    )
                self._where[name], file_of[name] = (handle, key), file
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

    def take(self, name: str, shape: Iterable[int] | None = None, *, floating: bool = True) -> jax.Array:
        """Reads tensor `name`, checking its shape when given. With `floating` (the default) the tensor
        must be floating point (an int or bool tensor is refused before it is read) and is cast to the
        checkpoint's dtype; `floating=False` reads it as stored (an integer buffer)."""
        handle, key = self._lookup(name)
        if shape is not None and self.shape(name) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: tensor {name!r} has shape {self.shape(name)}; the model expects "
                f"{tuple(shape)}."
            )
        stored = handle.get_slice(key).get_dtype()  # "F32", "BF16", "F8_E4M3", "I64", "BOOL", ...
        if floating and not stored.startswith(("F", "BF")):
            raise CheckpointError(
                f"{self.source}: tensor {name!r} is stored as {stored}; the model expects floating-point "
                "weights."
            )
        try:
            array = handle.get_tensor(key)
        except Exception as e:  # a truncated file fails here, not at open
            raise CheckpointError(f"{self.source}: tensor {name!r} could not be read ({e}).") from e
        if name not in self._taken:
            self._taken.add(name)
            self._progress.update(1)
        if floating and array.dtype != self.dtype:
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


# ------------------------------------------------------------------------------------------- configs


def read_json(file: str | Path) -> dict[str, Any]:
    """The JSON object in `file` (a checkpoint's `config.json`); a [`CheckpointError`][] naming the file
    when it cannot be read or is not an object."""
    try:
        raw = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read the config ({e}).") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: the config is not a JSON object.")
    return raw


def read_config(raw, fields, defaults: dict[str, Any], source, hint: str = "") -> dict[str, Any]:
    """The typed values of a checkpoint's config `raw` (a parsed `config.json`).

    `fields` is a config class (its field annotations are used) or a `{key: type}` dict, with types
    among `int`, `float`, `bool`, `str`, `tuple[T, ...]` and `T | None`. Each key's value must have
    its type (a bool is not an int; an int is a float; a JSON list is a tuple). A key absent from
    `raw`, or `null` where the type does not admit `None`, takes `defaults[key]` (the file format's
    own default, as transformers / diffusers read it); without one it is required. Raises a
    [`CheckpointError`][] naming `source` and the key, followed by `hint` for a missing key.
    """
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: the config is not a JSON object.")
    if isinstance(fields, type):
        fields = typing.get_type_hints(fields)
    values = {}
    for key, kind in fields.items():
        if raw.get(key) is not None or (key in raw and _admits_none(kind)):
            values[key] = _typed(raw[key], kind, f"{source}: {key!r}")
        elif key in defaults:
            values[key] = defaults[key]
        else:
            raise CheckpointError(f"{source}: the config has no {key!r}, which the model needs.{hint}")
    return values


def _admits_none(kind) -> bool:
    return type(None) in typing.get_args(kind)


def _typed(value, kind, where: str):
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):  # T | None
        return None if value is None else _typed(value, next(a for a in args if a is not type(None)), where)
    if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
        return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if type(value) is kind:  # exact: a JSON `true` is not an int
        return value
    name = str(kind) if typing.get_args(kind) else kind.__name__
    raise CheckpointError(f"{where} must be {name}; got {value!r} ({type(value).__name__}).")


def check_sizes(config, *names: str) -> None:
    """For a config's `__check_init__`: an error naming the first of the fields `names` that is not a
    positive int (a zero layer count or head count would fail later, and obscurely)."""
    for name in names:
        check_int(f"{type(config).__name__}.{name}", getattr(config, name))


def make_config(cls, values: dict[str, Any], source):
    """`cls(**values)`, with the config's own checks (`__check_init__`: sizes, divisibility, supported
    options) raised as a [`CheckpointError`][] naming `source`."""
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e
