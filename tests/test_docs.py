"""The API pages cover the public API: every public name has a `::: name` block on a page under
`docs/api/`, and every `:::` block of the site names an object that exists (with the members it lists).
No mkdocs build: the pages are read as text and the names imported."""

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

import diffuse_eqx
import diffuse_eqx.models.flux as flux


DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^::: *(\S+)[ \t]*$", re.MULTILINE)
MEMBERS = re.compile(r"^ {4,}members:[ \t]*\n((?:^ {6,}- *\S+[ \t]*\n)+)", re.MULTILINE)


def _public(module: types.ModuleType) -> set[str]:
    """The names a module exports: not private, not `__version__`, not a submodule."""
    return {
        f"{module.__name__}.{name}"
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


PUBLIC = sorted(_public(diffuse_eqx) | _public(flux))


def _blocks(pages) -> dict[str, list[tuple[str, list[str]]]]:
    """Page name -> the `:::` blocks on it, each as (object path, the members its options list)."""
    found = {}
    for page in pages:
        text = page.read_text()
        starts = [m.start() for m in BLOCK.finditer(text)] + [len(text)]
        blocks = []
        for match, end in zip(BLOCK.finditer(text), starts[1:]):
            options = MEMBERS.search(text, match.end(), end)
            members = re.findall(r"- *(\S+)", options.group(1)) if options else []
            blocks.append((match.group(1), members))
        found[str(page.relative_to(DOCS))] = blocks
    return found


API_BLOCKS = _blocks(sorted((DOCS / "api").glob("*.md")))
ALL_BLOCKS = _blocks(sorted(DOCS.rglob("*.md")))


def _resolve(dotted: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def _has_member(obj, member: str) -> bool:
    """An attribute, or a field declared without a class value (an `eqx.AbstractVar`, a field without
    default)."""
    if hasattr(obj, member):
        return True
    return inspect.isclass(obj) and any(member in vars(c).get("__annotations__", {}) for c in obj.__mro__)


def test_the_public_api_is_collected():
    assert len(PUBLIC) > 90
    assert {"diffuse_eqx.Denoiser", "diffuse_eqx.models.flux.FluxPipeline"} <= set(PUBLIC)
    assert "diffuse_eqx.__version__" not in PUBLIC and "diffuse_eqx.models" not in PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_an_api_entry(name):
    pages = [page for page, blocks in API_BLOCKS.items() if any(path == name for path, _ in blocks)]
    assert pages, f"{name} has no `::: {name}` block on any page under docs/api/"


def test_no_object_is_documented_twice():
    # Two blocks of one object give two anchors, and autorefs cannot tell which one a link means.
    seen = {}
    for page, blocks in ALL_BLOCKS.items():
        for path, _ in blocks:
            seen.setdefault(path, []).append(page)
    assert {path: pages for path, pages in seen.items() if len(pages) > 1} == {}


BLOCKS = [(page, path, members) for page, blocks in ALL_BLOCKS.items() for path, members in blocks]


@pytest.mark.parametrize(("page", "path", "members"), BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_every_block_names_an_existing_object(page, path, members):
    assert path.startswith("diffuse_eqx."), f"{page}: `::: {path}` is outside the package"
    obj = _resolve(path)
    missing = [member for member in members if not _has_member(obj, member)]
    assert missing == [], f"{page}: `::: {path}` lists members it does not have: {missing}"
