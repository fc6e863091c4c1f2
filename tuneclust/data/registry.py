"""Dataset registry: every dataset becomes one float tensor in memory, moved to the trial's device once.

Images are ``(N, C, H, W)`` float32 in [0, 1]; vector data (feature files) is ``(N, D)`` float32. Labels are
int64 numpy arrays (used only for the labelled metrics). Normalisation statistics travel with the dataset so
methods normalise on the device after augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field


class DataError(ValueError):
    """A dataset cannot be loaded (missing files offline, bad path, bad layout). The message says what to do."""


class DataConfig(BaseModel):
    """The ``data:`` section of a spec."""

    model_config = ConfigDict(extra="forbid")

    name: str = "digits"
    """Registry name, see ``python -m tuneclust list``."""
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


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if x.ndim == 4:
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    return (float(x.mean()),), (float(x.std().clamp_min(1e-6)),)


def _load_digits(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes, values 0..16): the offline default."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, d.target.astype(np.int64)


Loader = Callable[[DataConfig], tuple[torch.Tensor, np.ndarray | None]]
DATASETS: dict[str, Loader] = {"digits": _load_digits}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` into memory (CPU), applying split, imbalance, subsample and resize."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r}; expected one of {sorted(DATASETS)}")
    x, y = DATASETS[cfg.name](cfg)
    n_classes = cfg.num_classes or (int(len(np.unique(y))) if y is not None else None)
    if n_classes is None:
        raise DataError(f"dataset {cfg.name!r} has no labels: set data.num_classes")
    mean, std = _stats(x)
    return Dataset(name=cfg.name, x=x.contiguous(), y=y, num_classes=n_classes, mean=mean, std=std)
