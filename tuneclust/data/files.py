"""Datasets from files: ``imagefolder`` (a folder of class subfolders, e.g. ImageNet-10) and ``npz`` (features or
images in a ``.npz``/``.npy``/``.pkl`` file, e.g. Reuters-10K of the DEC code or CDC's extracted features)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneclust.data.base import DataConfig, DataError, no_split, uint8_images

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


def load_imagefolder(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """ImageNet-10 / ImageNet-Dogs style: root/<class>/<image>; decoded once with PIL; labels = sorted folders.

    Non-square images are resized to ``image_size`` x ``image_size`` directly (like torchvision's
    ``Resize((s, s))``); without ``image_size`` every image must have the same size. Grayscale images are kept
    1-channel when all are grayscale, else repeated to RGB.
    """
    no_split(cfg)
    root = check_path(cfg, want_dir=True)
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
    return uint8_images(x), y


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
        return uint8_images(a.astype(np.uint8))
    if a.min() < 0 or a.max() > 1:
        raise DataError(f"dataset 'npz': float images in {path} must lie in [0, 1] (divide by 255?)")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def load_npz(cfg: DataConfig) -> tuple[torch.Tensor, np.ndarray | None]:
    """A feature or image file: ``X`` (N, D) vectors (kept as is; uint8 scaled to [0, 1]) or images, optional ``y``.

    Also the Reuters-10K layout of public DEC code: a dict with ``data`` and ``label`` (np.save'd or pickled).
    Labels are remapped to 0..K-1 in sorted order.
    """
    no_split(cfg)
    path = check_path(cfg, want_dir=False)
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


def check_path(cfg: DataConfig, want_dir: bool) -> Path:
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
