"""Methods and datasets from outside the package: import paths (``module:attr``) and entry points.

A spec's ``method`` and ``data.name`` are each one of:

- a registry name (``idfd``, ``digits``, ...: ``python -m tuneclust list``);
- an import path ``package.module:Attr``, imported with the working directory first on ``sys.path`` (like
  ``python -m``), so a module next to the spec's working directory needs no install;
- the name of an entry point in the group :data:`METHOD_GROUP` / :data:`DATA_GROUP` of an installed
  distribution (``[project.entry-points."tuneclust.methods"] mine = "mypkg.mine:Mine"``).

Every failure is a :class:`PluginError`: one line naming the reference, the module and what went wrong.
:func:`runtime_env` says what a sweep ships to Ray workers so that the same references import there.
This module never imports Ray.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METHOD_GROUP = "tuneclust.methods"
"""Entry-point group of methods: each entry point's value is ``module:MethodSubclass``."""
DATA_GROUP = "tuneclust.datasets"
"""Entry-point group of datasets: each entry point's value is ``module:loader`` (see :mod:`tuneclust.data.plugins`)."""
SHIP_EXCLUDES = [
    ".git", ".venv", "venv", "runs", "mlruns", "mlartifacts", "mlflow.db", "data", ".tuneclust-cache",
    "__pycache__", "*.pyc", "*.parquet", "*.pt", "*.ckpt",
]  # fmt: skip
"""Left out of the working directory a sweep ships to Ray workers (Ray also honours its ``.gitignore``)."""


class PluginError(ValueError):
    """A method or dataset reference cannot be resolved or breaks the contract; ``str(err)`` is one line."""


def is_import_path(name: str) -> bool:
    """``module:attr`` (a registry or entry-point name has no colon)."""
    return ":" in name


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of ``group`` in the distributions on ``sys.path``, by name (read afresh each call)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


@contextlib.contextmanager
def cwd_on_path() -> Iterator[None]:
    """The working directory first on ``sys.path`` while importing (as ``python -m`` has it)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _where(e: BaseException) -> str:
    """`` (file:line)`` of the innermost frame of ``e`` outside importlib, or ``""``."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def import_module(module: str, what: str) -> Any:
    """Import ``module`` (working directory on the path); a PluginError naming it and the error otherwise."""
    with cwd_on_path():
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                raise PluginError(
                    f"{what}: no module named {e.name!r} (looked in the working directory {os.getcwd()}, "
                    "PYTHONPATH and the installed packages)"
                ) from None
            raise PluginError(f"{what}: importing {module!r} failed: {_first_line(e)}{_where(e)}") from None
        except Exception as e:  # anything the user's module raises at import time: one line
            raise PluginError(f"{what}: importing {module!r} failed: {_first_line(e)}{_where(e)}") from None


def load_ref(ref: str, what: str) -> Any:
    """The object an import path ``module:attr.sub`` names."""
    module, _, attr = ref.partition(":")
    if not module or not attr or not all(p.isidentifier() for p in (*module.split("."), *attr.split("."))):
        raise PluginError(f"{what}: expected an import path package.module:Name, got {ref!r}")
    obj = import_module(module, what)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_entry_point(group: str, name: str, what: str) -> Any:
    """The object the entry point ``name`` of ``group`` names (its module imported like an import path)."""
    ep = entry_points(group)[name]
    return load_ref(ep.value.split("[")[0].strip(), f"{what} (entry point {group}:{name})")


# shipping to Ray workers --------------------------------------------------------------------------------


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("purelib", "platlib", "stdlib", "platstdlib") if k in paths}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return [Path(r).resolve() for r in roots]


def module_source(ref: str) -> Path | None:
    """Where the top-level package of an import path lives when it is not installed (a folder or a ``.py``
    file outside site-packages and the standard library); None when installed or not found."""
    top = ref.split(":")[0].split(".")[0]
    with cwd_on_path():
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))).resolve()
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        path = Path(spec.origin).resolve()
    else:
        return None
    if any(path.is_relative_to(root) for root in _installed_roots()):
        return None
    return path


def plugin_refs(method: str, data_names: list[str], builtin: set[str]) -> list[str]:
    """The import paths behind a spec's method and data names (entry points resolved to their values); names in
    ``builtin`` (the registries' own) are not plugins."""
    refs = []
    for name, group in [(method, METHOD_GROUP)] + [(d, DATA_GROUP) for d in data_names]:
        if name in builtin:
            continue
        if is_import_path(name):
            refs.append(name)
        elif name in (eps := entry_points(group)):
            refs.append(eps[name].value)
    return refs


def runtime_env(method: str, data_names: list[str], builtin: set[str]) -> dict[str, Any] | None:
    """Ray's runtime environment that makes a spec's plugins importable on every worker, or None.

    A plugin under the working directory ships the working directory (``working_dir``, without
    :data:`SHIP_EXCLUDES`): workers import it as the driver does. One elsewhere and not installed (a PYTHONPATH
    entry) ships its top-level package or module (``py_modules``). An installed one ships nothing: install it
    on every node, like tuneclust itself.
    """
    cwd = Path(os.getcwd()).resolve()
    env: dict[str, Any] = {}
    modules: list[str] = []
    for ref in plugin_refs(method, data_names, builtin):
        path = module_source(ref)
        if path is None:
            continue
        if path.is_relative_to(cwd):
            env["working_dir"] = str(cwd)
            env["excludes"] = list(SHIP_EXCLUDES)
        elif str(path) not in modules:
            modules.append(str(path))
    if modules:
        env["py_modules"] = modules
    return env or None
