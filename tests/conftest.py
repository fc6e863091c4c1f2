"""Shared fixtures: one Ray session for the whole test run, MLflow on sqlite in a temp dir, no network."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))

os.environ.setdefault("TUNECLUST_DATA", str(ROOT / ".test-data-root-unused"))
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that sweeps (starting Ray takes seconds; share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny nets and tensors: faster than oversubscribing a shared
    CPU. The previous count is restored after the module.

    Use it in a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def benchmark_script(name: str, module: str | None = None) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as the module ``module`` (default ``name``); benchmarks/ is not a package,
    so its folder is put on ``sys.path`` (spawned workers import the script by name) and taken off afterwards."""
    path = ROOT / "benchmarks" / f"{name}.py"
    module = module or name
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(module, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(module, None)
        sys.path.remove(str(path.parent))
