"""The abstract/final pattern across the package: a class is either abstract (its name starts with
`Abstract`) or final (never subclassed), and a subclass overrides only the abstract members of its
bases."""

import importlib
import inspect
import pkgutil

import equinox as eqx
import pytest

import diffuse_eqx


def _modules():
    names = [diffuse_eqx.__name__]
    for info in pkgutil.walk_packages(diffuse_eqx.__path__, prefix="diffuse_eqx."):
        if info.name.startswith("diffuse_eqx.cli"):
            continue  # the application
        names.append(info.name)
    return [importlib.import_module(n) for n in names]


def _classes():
    found = {}
    for module in _modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith("diffuse_eqx") and issubclass(cls, eqx.Module):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


CLASSES = _classes()


def _abstract_in(base, name) -> bool:
    """Whether `name` is an abstract member of `base` (an abstract method or property, or an
    `eqx.AbstractVar` / `eqx.AbstractClassVar`)."""
    if name in getattr(base, "__abstractmethods__", ()):
        return True
    annotation = base.__dict__.get("__annotations__", {}).get(name)
    return annotation is not None and (
        "AbstractVar" in str(annotation) or "AbstractClassVar" in str(annotation)
    )


def _own_members(cls):
    fields = set(cls.__dict__.get("__annotations__", {}))
    for name, value in cls.__dict__.items():
        if name.startswith("__") or name in fields or name.startswith("_abc"):
            continue
        if callable(value) or isinstance(value, property | classmethod | staticmethod):
            yield name


def test_there_are_classes_to_check():
    assert len(CLASSES) > 40


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_only_abstract_members_are_overridden(name):
    cls = CLASSES[name]
    for member in _own_members(cls):
        for base in cls.__mro__[1:]:
            if base in (eqx.Module, object) or member not in base.__dict__:
                continue
            assert _abstract_in(base, member), (
                f"{name}.{member} overrides the concrete {base.__qualname__}.{member}"
            )


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_concrete_classes_are_final(name):
    cls = CLASSES[name]
    if cls.__name__.startswith("Abstract"):
        return
    subclasses = [c for c in CLASSES.values() if cls in c.__mro__[1:]]
    assert not subclasses, f"{name} is concrete but subclassed by {subclasses}"
