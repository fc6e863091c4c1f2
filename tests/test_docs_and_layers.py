"""The README documents every spec key, method config key and CLI flag; the layers only look down."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import ROOT
from pydantic import BaseModel

from tuneclust import spec as spec_mod
from tuneclust.cli import _parser, main
from tuneclust.methods import METHODS, get_method

README = (ROOT / "README.md").read_text()


def _model_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        ann = field.annotation
        for sub in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                keys |= _model_keys(sub)
    return keys


def test_readme_documents_every_spec_key():
    keys = _model_keys(spec_mod.Spec)
    for sched in (spec_mod.Asha, spec_mod.Hyperband, spec_mod.Median, spec_mod.Pbt, spec_mod.SearcherSpec):
        keys |= _model_keys(sched)
    missing = sorted(k for k in keys if k not in README)
    assert not missing, f"README does not document spec keys {missing}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_readme_documents_every_method_key(method, capsys):
    missing = [k for k in get_method(method).Config.model_fields if f"`{k}`" not in README]
    assert not missing, f"README lacks {method} keys {missing}: run python -m tuneclust list --keys"
    assert main(["list", "--keys", method]) == 0
    table = capsys.readouterr().out.strip()
    assert table in README, f"README's {method} key table is stale: paste python -m tuneclust list --keys"
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(get_method(method).Config.model_fields)
    empty = [ln.split("|")[1].strip() for ln in rows if not ln.rstrip(" |").split("|")[-1].strip()]
    assert not empty, f"{method} keys without a meaning (add an attribute docstring with its source): {empty}"


def test_readme_documents_every_cli_flag():
    flags = set()
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags.add(name)
                flags |= {
                    o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"
                }
    missing = sorted(f for f in flags if f not in README)
    assert not missing, f"README does not document {missing}"


@pytest.mark.parametrize(
    "module,forbidden",
    [
        ("tuneclust.losses.idfd", ("ray", "mlflow", "yaml", "pandas")),
        ("tuneclust.losses.dccs", ("ray", "mlflow", "yaml", "pandas")),
        ("tuneclust.losses.cdc", ("ray", "mlflow", "yaml", "pandas")),
        ("tuneclust.losses.ics", ("ray", "mlflow", "yaml", "pandas")),
        ("tuneclust.losses.dec", ("ray", "mlflow", "yaml", "pandas")),
        ("tuneclust.methods.idfd", ("ray", "mlflow", "yaml")),
        ("tuneclust.methods.dccs", ("ray", "mlflow", "yaml")),
        ("tuneclust.methods.cdc", ("ray", "mlflow", "yaml")),
        ("tuneclust.methods.ics", ("ray", "mlflow", "yaml")),
        ("tuneclust.trainable", ("mlflow", "yaml")),
    ],
)
def test_layers_only_look_down(module, forbidden):
    code = f"import sys, {module}; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing {module} pulled in {out}"


def _imports_of(path, modules) -> set[str]:
    """Every tuneclust module ``path`` imports: at the top, inside functions and under TYPE_CHECKING alike
    (``from pkg import sub`` imports the module ``pkg.sub``; ``from pkg import name`` the package)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneclust"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuneclust")}
    return found


def test_no_import_circle_in_tuneclust():
    """The structure drawing is a tree of layers: no module reaches back, not even for a type."""
    modules = {}
    for path in (ROOT / "tuneclust").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {m: (_imports_of(p, modules) & modules.keys()) - {m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module) :] + (module,)))
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, path + (module,))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert {"tuneclust.spec", "tuneclust.space", "tuneclust.plan"} <= graph.keys()
