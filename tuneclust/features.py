"""``python -m tuneclust features``: ImageNet ResNet50 features of a dataset, saved as an ``.npz`` for CDC.

CDC (Trinh & Pham, Sec. 4.1, following EDESC) clusters CIFAR-10 and STL-10 through 2048-d ResNet50 features.
Preprocessing (torchvision's ImageNet recipe rather than the public code's Keras/caffe one): gray images repeated to
3 channels, bilinear (antialiased) resize to 224 x 224 of the whole image (no crop), ImageNet mean/std
normalisation; the output is the global-average-pooled 2048-d vector before ``fc``. By default every feature is
then min-max scaled to [0, 1] over the dataset, as the CDC public code does (``MinMaxScaler`` in ``data_cdc.py``).
The file holds ``X`` (N, 2048) float32 and ``y`` (N,) int64 when the dataset has labels; load it with
``data: {name: npz, root: FILE}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneclust features", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset registry name (cifar10, stl10, imagefolder, ...)")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--root", help="data root (default: $TUNECLUST_DATA or ~/.tuneclust/data)")
    p.add_argument("--split", default="all", choices=["all", "train", "test"])
    p.add_argument("--subsample", type=int, help="keep a seeded random subset of this many images")
    p.add_argument(
        "--weights", help="a ResNet50 state_dict file (default: torchvision IMAGENET1K_V2, downloaded)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resize", type=int, default=224, help="square input size of the network")
    p.add_argument("--scale", default="minmax", choices=["minmax", "none"],
                   help="per-feature min-max scaling to [0, 1] (CDC public code) or raw features")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def build_resnet50(weights: str | None) -> torch.nn.Module:
    """ResNet50 with ``fc`` replaced by the identity (2048-d pooled output).

    Args:
        weights: path to a state_dict, or None for torchvision's ImageNet ``IMAGENET1K_V2`` weights (downloaded
            on first use, then cached by torch hub).

    Raises:
        OSError, RuntimeError: the weights cannot be read or downloaded.
    """
    from torchvision.models import ResNet50_Weights, resnet50

    if weights is None:
        model = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
    else:
        model = resnet50(weights=None)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    return model.eval()


def preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 3, size, size) ImageNet-normalised; gray is repeated to 3 channels."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def extract(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int, size: int
) -> np.ndarray:
    """Features of every image of ``x`` (kept on the CPU, moved to ``device`` one batch at a time)."""
    model = model.to(device)
    out = [
        model(preprocess(x[i : i + batch_size].to(device), size)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()


def minmax(x: np.ndarray) -> np.ndarray:
    """Each column to [0, 1] (constant columns to 0), like scikit-learn's ``MinMaxScaler``."""
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code (2 with one error line when data or weights are unavailable)."""
    args = _parser().parse_args(argv)
    from tuneclust.data.registry import DataConfig, DataError, load_dataset

    try:
        data = load_dataset(
            DataConfig(name=args.data, root=args.root, split=args.split, subsample=args.subsample)
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not data.is_image:
        print(
            f"error: dataset {args.data!r} holds vectors {tuple(data.x.shape)}; features need images",
            file=sys.stderr,
        )
        return 2
    try:
        model = build_resnet50(args.weights)
    except Exception as e:  # offline download (URLError), missing/corrupt file: one line, not a traceback
        src = args.weights or "torchvision ResNet50_Weights.IMAGENET1K_V2 (download)"
        print(f"error: cannot load ResNet50 weights from {src}: {type(e).__name__}: {e}. "
              "Run once online, or pass --weights PATH to a resnet50 state_dict.", file=sys.stderr)  # fmt: skip
        return 2
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    feats = extract(model, data.x, torch.device(dev), args.batch_size, args.resize)
    feats = minmax(feats) if args.scale == "minmax" else feats.astype(np.float32)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"X": feats} if data.y is None else {"X": feats, "y": np.asarray(data.y, dtype=np.int64)}
    with out.open("wb") as fh:  # a file handle keeps np.savez from appending ".npz" to the name
        np.savez(fh, **arrays)
    print(f"wrote {out}: X {feats.shape} float32" + ("" if data.y is None else f", y {data.y.shape}"))
    return 0
