"""The library imports no application or reference package: what `import diffuse_eqx` loads, and what
the sources outside `diffuse_eqx/cli/` import."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "diffuse_eqx"
HEAVY = ("matplotlib", "transformers", "huggingface_hub", "torch", "safetensors", "diffusers", "tqdm")
APPLICATION_ONLY = ("argparse", "matplotlib")  # the `diffuse-eqx` command's business


def _loaded_after(statement: str) -> set[str]:
    """The top-level packages in `sys.modules` after `statement`, in a fresh interpreter."""
    report = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    code = f"import json, sys\n{statement}\n{report}"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"`{statement}` failed:\n{run.stderr}"
    return set(json.loads(run.stdout.splitlines()[-1]))


STATEMENTS = {"core": "import diffuse_eqx", "flux": "import diffuse_eqx.models.flux"}


@pytest.fixture(scope="module")
def loaded():
    return {name: _loaded_after(statement) for name, statement in STATEMENTS.items()}


@pytest.mark.parametrize("package", HEAVY)
def test_import_diffuse_eqx_is_light(loaded, package):
    assert package not in loaded["core"], f"`{STATEMENTS['core']}` loads {package}"


@pytest.mark.parametrize("package", ("matplotlib", "torch"))
def test_import_flux_models_is_light(loaded, package):
    assert package not in loaded["flux"], f"`{STATEMENTS['flux']}` loads {package}"


def _imports(source: str, module: str) -> set[str]:
    """The absolute names of everything the source of `module` imports, at any depth: `import a.b` gives
    `a.b`, `from a import b` gives `a` and `a.b`; relative imports are resolved."""
    package = module.split(".")[:-1]  # `a.b.c` lives in `a.b`; `a.b.__init__` is `a.b` itself
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            origin = ".".join(base + (node.module.split(".") if node.module else []))
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def _library_modules() -> dict[str, str]:
    """Module name -> source, for every module of the package outside `diffuse_eqx/cli/`."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[1:2] != ("cli",):
            modules[".".join(parts)] = path.read_text()
    return modules


def test_library_sources_import_no_application_package():
    modules = _library_modules()
    assert len(modules) > 20 and "diffuse_eqx.__init__" in modules
    offenders = {}
    for name, source in modules.items():
        found = {n.split(".")[0] for n in _imports(source, name)} & set(APPLICATION_ONLY)
        if found:
            offenders[name] = sorted(found)
    assert offenders == {}


def test_library_sources_do_not_import_the_cli():
    offenders = [
        name
        for name, source in _library_modules().items()
        if any(n == "diffuse_eqx.cli" or n.startswith("diffuse_eqx.cli.") for n in _imports(source, name))
    ]
    assert offenders == []


def test_the_checker_sees_imports():
    source = "import argparse\ndef f():\n    from matplotlib import pyplot\n    from ..cli import demo\n"
    found = _imports(source, "diffuse_eqx.models.flux")
    assert {"argparse", "matplotlib", "matplotlib.pyplot", "diffuse_eqx.cli", "diffuse_eqx.cli.demo"} <= found
    assert "diffuse_eqx.cli" in _imports("from . import cli\n", "diffuse_eqx.__init__")
