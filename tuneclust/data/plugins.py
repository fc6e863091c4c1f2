"""Datasets from outside the package: ``data.name`` as an import path ``mypkg.data:load_cells`` or the name of an
entry point in the group ``tuneclust.datasets`` (:mod:`tuneclust.plugins`).

The contract (public, stable): the loader is called as ``loader(cfg)`` with the spec's
:class:`~tuneclust.data.registry.DataConfig` (``cfg.root``, ``cfg.split`` and any field it wants to honour) and
returns ``(x, y)``:

- ``x``: images ``(N, C, H, W)`` with C = 1 or 3, float in [0, 1] or uint8 in 0..255; or vectors ``(N, D)``
  (float, or uint8 scaled to [0, 1]); a numpy array or a torch tensor; N >= 2, every value finite;
- ``y``: ``(N,)`` integer labels (any values: remapped to 0..K-1), or None for unlabelled data.

tuneclust then applies ``imbalance_r_min``, ``subsample`` and ``image_size`` like for a built-in dataset. Without
labels, ``data.num_classes`` is required and only label-free objectives are allowed (validation says so).
The loader runs once at validation (:func:`probe`, remembered per data config in the process) and once when the
sweep loads the data into Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tuneclust.plugins import (
    DATA_GROUP,
    PluginError,
    entry_points,
    is_import_path,
    load_entry_point,
    load_ref,
)


@dataclass(frozen=True)
class Probe:
    """What validation learns from one call of a loader."""

    n: int
    shape: tuple[int, ...]
    labelled: bool


_PROBES: dict[str, Probe] = {}


def is_plugin(name: str) -> bool:
    """Whether ``data.name`` refers to a loader outside the registry (import path or entry point)."""
    return is_import_path(name) or name in entry_points(DATA_GROUP)


def plugin_names() -> list[str]:
    return sorted(entry_points(DATA_GROUP))


def loader(name: str) -> Any:
    """The callable ``name`` refers to (a PluginError naming the module and the error otherwise)."""
    what = f"data.name {name!r}"
    if not is_plugin(name):
        raise PluginError(
            f"unknown dataset {name!r}; expected a registry name, package.module:loader or an entry point"
        )
    obj = load_ref(name, what) if is_import_path(name) else load_entry_point(DATA_GROUP, name, what)
    if not callable(obj):
        raise PluginError(
            f"{what}: {type(obj).__name__} object is not callable (expected loader(cfg) -> (x, y))"
        )
    return obj


def _array(a: Any, what: str, part: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        raise PluginError(f"{what}: {part} must be a numpy array or a torch tensor, got {type(a).__name__}")
    return a


def _images(a: np.ndarray, what: str) -> torch.Tensor:
    """Checked (N, C, H, W) or (N, D) -> float32 tensor in [0, 1] (uint8 divided by 255)."""
    shape = tuple(a.shape)
    if a.ndim not in (2, 4) or (a.ndim == 4 and a.shape[1] not in (1, 3)) or a.shape[0] < 2:
        raise PluginError(
            f"{what}: x has shape {shape}; expected images (N, C, H, W) with C in (1, 3) or vectors (N, D), N >= 2"
        )
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).div_(255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise PluginError(f"{what}: x has dtype {a.dtype}; expected float32/float64 in [0, 1] or uint8")
    if not np.isfinite(a).all():
        raise PluginError(f"{what}: x holds NaN or infinite values")
    if a.ndim == 4 and (a.min() < 0 or a.max() > 1):
        raise PluginError(f"{what}: float images must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(y: Any, n: int, what: str) -> np.ndarray | None:
    if y is None:
        return None
    y = _array(y, what, "y")
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise PluginError(
            f"{what}: y must be None or ({n},) integers, got shape {tuple(y.shape)} dtype {y.dtype}"
        )
    return np.unique(y, return_inverse=True)[1].astype(np.int64).reshape(-1)


def load(cfg: Any) -> tuple[torch.Tensor, np.ndarray | None]:
    """Call the loader ``cfg.name`` refers to and check what it returns (the registry's loader signature)."""
    what = f"data.name {cfg.name!r}"
    fn = loader(cfg.name)
    try:
        out = fn(cfg)
    except Exception as e:
        text = str(e).strip().splitlines()
        raise PluginError(
            f"{what}: the loader raised {type(e).__name__}: {text[0][:160] if text else ''}"
        ) from None
    if not isinstance(out, tuple) or len(out) != 2:
        raise PluginError(f"{what}: the loader must return a tuple (x, y_or_None), got {type(out).__name__}")
    x = _images(_array(out[0], what, "x"), what)
    y = _labels(out[1], len(x), what)
    _PROBES[cfg.model_dump_json()] = Probe(len(x), tuple(x.shape), y is not None)
    return x, y


def probe(cfg: Any) -> Probe:
    """Load once (remembered per data config in this process) and say what the data is."""
    key = cfg.model_dump_json()
    if key not in _PROBES:
        load(cfg)
    return _PROBES[key]
