"""Method registry: a plain dict from name to ``module:Class`` (imported on first use, so listing is cheap)."""

from __future__ import annotations

import importlib

from tuneclust.methods.base import Evaluation, Method, MethodConfig, NonFiniteError

METHODS: dict[str, str] = {
    "idfd": "tuneclust.methods.idfd:IDFD",
    "dccs": "tuneclust.methods.dccs:DCCS",
    "cdc": "tuneclust.methods.cdc:CDC",
    "ics": "tuneclust.methods.ics:ICS",
}


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name raises KeyError listing the valid ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = [
    "METHODS",
    "Evaluation",
    "Method",
    "MethodConfig",
    "NonFiniteError",
    "get_method",
]
