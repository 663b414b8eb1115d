import os

import jax
import pytest
from hypothesis import HealthCheck, settings


# Exactness and order tests need float64; everything in the suite runs in x64.
jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "ci",
    deadline=None,  # JIT compilation makes the first example slow
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "10")),
    derandomize=True,  # the same examples on every run: CI results are reproducible
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: one long pytest process otherwise keeps
    thousands of CPU executables alive (an XLA compile crashed once late in a full run). The suite
    also runs in parallel worker processes (pytest-xdist, `--dist=loadfile` in pyproject.toml), so
    each process compiles only its share."""
    yield
    jax.clear_caches()
