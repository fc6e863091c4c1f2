"""The dataset form every loader produces (:class:`Dataset`: one float tensor and optional labels), the spec's
``data:`` section (:class:`DataConfig`) and :class:`DataError`; shared by the registry and its loaders."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field


class DataError(ValueError):
    """A dataset cannot be loaded (missing files offline, bad path, bad layout). The message says what to do."""


class DataConfig(BaseModel):
    """The ``data:`` section of a spec."""

    model_config = ConfigDict(extra="forbid")

    name: str = "digits"
    """Registry name (``python -m tuneclust list``), an import path ``package.module:loader`` or the name of an
    entry point of group ``tuneclust.datasets`` (README "Your own data")."""
    root: str | None = None
    """Where the files live (torchvision datasets: download dir; ``imagefolder``/``npz``: the folder or file).
    Default: ``$TUNECLUST_DATA`` or ``~/.tuneclust/data``."""
    split: Literal["all", "train", "test"] = "all"
    """Clustering uses train+test together by default (methods.md)."""
    download: bool = True
    """Download torchvision datasets when missing (needs internet)."""
    subsample: int | None = Field(default=None, ge=2)
    """Keep a seeded random subset of this many samples (quick looks, smoke runs)."""
    image_size: int | None = Field(default=None, ge=4)
    """Resize images to this square size once at load time (e.g. ImageNet subsets to 96 or 32)."""
    num_classes: int | None = Field(default=None, ge=2)
    """Number of clusters; default: the number of distinct labels."""
    imbalance_r_min: float | None = Field(default=None, gt=0, le=1)
    """ICS Table 2: keep class c with probability rising linearly from r_min (first class) to 1 (last)."""
    imbalance_seed: int = 0
    """Seed of the imbalance draw, so every trial of a study sees the same subset."""
    object_store_max_mb: float = Field(default=2048, ge=0)
    """A sweep's driver loads the dataset once and shares it with every node through Ray's object store, up to
    this many MiB of decoded data; above it, each trial loads from ``root`` (then a path every node can read)."""


def dataset_key(data: dict[str, Any]) -> str:
    """The identity of a data config (after defaults): which shared dataset a trial's data section names."""
    return DataConfig.model_validate(data).model_dump_json()


@dataclass
class Dataset:
    """A whole dataset in memory."""

    name: str
    x: torch.Tensor
    y: np.ndarray | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def channels(self) -> int:
        return int(self.x.shape[1]) if self.is_image else 0

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1]) if self.is_image else 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device) -> Dataset:
        return replace(self, x=self.x.to(device, non_blocking=True))


def default_root() -> Path:
    return Path(os.environ.get("TUNECLUST_DATA", Path.home() / ".tuneclust" / "data")).expanduser()


def stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if x.ndim == 4:
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    return (float(x.mean()),), (float(x.std().clamp_min(1e-6)),)


def no_split(cfg: DataConfig) -> None:
    """Datasets without an official train/test split use every sample; say so if a split was asked for."""
    if cfg.split != "all":
        warnings.warn(
            f"dataset {cfg.name!r} has no train/test split: data.split={cfg.split!r} ignored", stacklevel=3
        )


def uint8_images(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) array -> float32 tensor in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a.contiguous())
    return t.to(torch.float32).div_(255.0)
