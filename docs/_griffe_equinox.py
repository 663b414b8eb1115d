"""A griffe extension for the API pages: gives `eqx.Module` classes their `__init__` signature.

Equinox modules are dataclasses (through `typing.dataclass_transform`), which griffe does not see
statically, so without this a class such as `FluxTimer` would be documented without its arguments.
For every concrete (not `Abstract*`) subclass of `equinox.Module` that does not define `__init__`,
this adds one built from its annotated fields, as `dataclasses` would: class variables, properties
and `eqx.AbstractVar` declarations are not fields; an `eqx.field(default=...)` gives the default.
Used by `mkdocs.yml` only; not part of the package.
"""

from typing import Any

import griffe


_MODULE_BASES = {"equinox.Module", "equinox._module.Module"}
_FIELD_CALLS = {"equinox.field", "equinox._module.field"}
_ABSTRACT_VARS = {"equinox.AbstractVar", "equinox.AbstractClassVar"}


def _is_module(cls: griffe.Class) -> bool:
    try:
        mro = [cls, *cls.mro()]
    except ValueError:
        mro = [cls]
    for c in mro:
        for base in c.bases:
            if isinstance(base, griffe.Expr) and base.canonical_path in _MODULE_BASES:
                return True
    return False


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    params = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels:
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue  # ClassVar
        ann = member.annotation
        if isinstance(ann, griffe.ExprSubscript) and ann.canonical_path in _ABSTRACT_VARS:
            continue
        default = member.value
        if isinstance(default, griffe.ExprCall) and default.canonical_path in _FIELD_CALLS:
            kwargs = {a.name: a.value for a in default.arguments if isinstance(a, griffe.ExprKeyword)}
            default = kwargs.get("default")
        params.append(
            griffe.Parameter(
                member.name,
                annotation=ann,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=default,
            )
        )
    return params


def _apply(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in obj.members.values():
        if member.is_alias or not (member.is_class or member.is_module):
            continue
        _apply(member, seen)
    if not isinstance(obj, griffe.Class) or "__init__" in obj.members:
        return
    if obj.name.startswith("Abstract") or not _is_module(obj):
        return
    params = []
    try:
        parents = list(reversed(obj.mro()))
    except ValueError:
        parents = []
    for parent in [*parents, obj]:
        if isinstance(parent, griffe.Class) and "__init__" not in parent.members:
            params.extend(_fields(parent))
    by_name = {p.name: p for p in params}  # a redefinition replaces the inherited field
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=obj,
        parameters=griffe.Parameters(
            griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
            *by_name.values(),
        ),
        returns="None",
    )
    obj.set_member("__init__", init)


class EquinoxModuleInit(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _apply(pkg, set())
