"""Method registry and the one resolver of a spec's ``method``.

``METHODS`` maps the built-in names to ``module:Class`` (imported on first use, so listing is cheap).
:func:`get_method` also resolves an import path ``mypkg.mine:Mine`` and the name of an entry point in the group
``tuneclust.methods`` (:mod:`tuneclust.plugins`), and checks the class against the contract
(:func:`check_method_class`), so a method from outside the package is validated, listed and run like a built-in.
"""

from __future__ import annotations

import importlib
import inspect

from tuneclust.methods.base import Evaluation, Method, MethodConfig, NonFiniteError
from tuneclust.plugins import (
    METHOD_GROUP,
    PluginError,
    entry_points,
    is_import_path,
    load_entry_point,
    load_ref,
)

METHODS: dict[str, str] = {
    "idfd": "tuneclust.methods.idfd:IDFD",
    "dccs": "tuneclust.methods.dccs:DCCS",
    "cdc": "tuneclust.methods.cdc:CDC",
    "ics": "tuneclust.methods.ics:ICS",
}


class UnknownMethodError(PluginError, KeyError):
    """A method name that is neither built in, an import path nor an entry point."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def method_names() -> list[str]:
    """The built-in names, then the entry-point names of installed plugins."""
    return [*METHODS, *(n for n in sorted(entry_points(METHOD_GROUP)) if n not in METHODS)]


def get_method(name: str) -> type[Method]:
    """The method class ``name`` refers to: a built-in name, ``module:Class`` or an entry-point name.

    Raises:
        UnknownMethodError: (a KeyError) for a name that is none of these, listing the valid ones.
        PluginError: one line when the module cannot be imported or the class breaks the contract.
    """
    if name in METHODS:
        module, cls = METHODS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    what = f"method {name!r}"
    if is_import_path(name):
        obj = load_ref(name, what)
    elif name in entry_points(METHOD_GROUP):
        obj = load_entry_point(METHOD_GROUP, name, what)
    else:
        raise UnknownMethodError(
            f"unknown method {name!r}; expected one of {method_names()}, an import path package.module:Class "
            f"or an entry point of group {METHOD_GROUP!r}"
        )
    return check_method_class(obj, what)


def check_method_class(obj: object, what: str) -> type[Method]:
    """``obj`` if it is a complete :class:`Method` subclass whose ``Config`` has a default for every key."""
    from pydantic import ValidationError

    if not (inspect.isclass(obj) and issubclass(obj, Method)):
        raise PluginError(
            f"{what}: {getattr(obj, '__name__', repr(obj)[:60])} is not a subclass of tuneclust.methods.Method"
        )
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise PluginError(f"{what}: {obj.__name__} does not implement {missing}")
    config = getattr(obj, "Config", None)
    if not (inspect.isclass(config) and issubclass(config, MethodConfig)):
        raise PluginError(
            f"{what}: {obj.__name__}.Config must be a subclass of tuneclust.methods.MethodConfig"
        )
    try:
        config()
    except ValidationError as e:
        keys = sorted({str(err["loc"][0]) for err in e.errors() if err["loc"]})
        raise PluginError(
            f"{what}: {config.__name__} has keys without a valid default: {', '.join(keys)} (every key needs one)"
        ) from None
    if not isinstance(getattr(obj, "name", None), str):
        raise PluginError(f"{what}: {obj.__name__} must set the class attribute name (a str)")
    return obj


def config_reference(method: str) -> str:
    """A Markdown table of a method's config keys: type, default and the documented reason."""
    cls = get_method(method)
    rows = [
        f"### `{method}` ({cls.__name__})",
        "",
        "| key | type | default | meaning (source) |",
        "|---|---|---|---|",
    ]
    for name, f in cls.Config.model_fields.items():
        kind = (
            str(f.annotation)
            .replace("typing.", "")
            .replace("<class '", "")
            .replace("'>", "")
            .replace("|", "\\|")
        )
        desc = " ".join((f.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | `{f.default!r}` | {desc} |")
    return "\n".join(rows) + "\n"


__all__ = [
    "METHODS",
    "Evaluation",
    "Method",
    "MethodConfig",
    "NonFiniteError",
    "PluginError",
    "UnknownMethodError",
    "check_method_class",
    "config_reference",
    "get_method",
    "method_names",
]
