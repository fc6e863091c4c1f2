"""Each trial's partition of one evaluation subset shared by the whole sweep, kept on the sweep's storage.

At every evaluation a trial stores which cluster each image of a fixed, seeded subset of the evaluation set fell
in (and, for the first ``embedding_points`` of them, its embedding in float16), so that settings can be compared
across trials after the fact: agreement between seeds, agreement with every other trial, a partition scored in
another trial's space (:mod:`tuneclust.criteria`), and a confusion matrix of the chosen trial (the report).

Layout under ``<sweep>/partitions/``::

    subset.npz                       index (sorted positions in the evaluation set), labels (if any), n
    epoch_000015/<trial_id>.npz      assignment (int32 over the subset), setting (the trial's searched values
                                     without the seed, canonical JSON), seed
    epoch_000015/<trial_id>.emb.npz  embedding (float16, the first ``embedding_points`` subset images)

Sizes: 4 bytes per subset image (10,000 images: 40 KB) plus 2 x d bytes per embedded point (1,000 points of a
128-d embedding: 256 KB) per trial and evaluation. A partition is written once per (trial, epoch); a trial
restored from a checkpoint rewrites the same file with the same content.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneclust.storage import Location, locate

SUBSET = 10_000
"""Default ``evaluation.subset``: images of the shared subset."""
EMBEDDING_POINTS = 1000
"""Default ``evaluation.embedding_points``: subset images whose embedding is stored too."""
DIR = "partitions"
SUBSET_FILE = "subset.npz"
EMB = ".emb.npz"
_EPOCH_DIR = re.compile(r"epoch_(\d+)$")


def subset_index(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of the shared evaluation subset: all ``n`` when ``size >= n``, else a seeded draw."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def setting_key(point: dict[str, Any]) -> str:
    """What identifies a trial's setting: its searched values (and arm) without the seed, as canonical JSON."""
    return json.dumps({k: point[k] for k in sorted(point) if k != "seed"}, sort_keys=True, default=str)


@dataclass
class Partition:
    """One trial's partition of the subset at one evaluation."""

    trial_id: str
    epoch: int
    assignment: np.ndarray
    """(S,) cluster of each subset image."""
    embedding: np.ndarray | None = None
    """(E, d) float16 embedding of the first E subset images (E = ``evaluation.embedding_points``), or None."""
    setting: str = ""
    seed: int = 0


def _epoch_dir(root: Location, epoch: int) -> Location:
    return root / DIR / f"epoch_{int(epoch):06d}"


def _npz(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _load(loc: Location) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(loc.read_bytes()), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_subset(sweep_dir: Location | str, index: np.ndarray, labels: np.ndarray | None, n: int) -> None:
    """Record the subset (every trial writes the same content; the first one's copy is kept)."""
    loc = locate(sweep_dir) / DIR / SUBSET_FILE
    if loc.exists():
        return
    arrays: dict[str, Any] = {"index": index.astype(np.int64), "n": np.int64(n)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)[index]
    loc.write_bytes(_npz(arrays))


def read_subset(sweep_dir: Location | str) -> dict[str, np.ndarray] | None:
    """``{"index", "n", "labels"?}`` of a sweep's subset, or None when no trial stored one."""
    loc = locate(sweep_dir) / DIR / SUBSET_FILE
    return _load(loc) if loc.exists() else None


def write(sweep_dir: Location | str, p: Partition) -> None:
    """Store one partition (its embedding in a file of its own, so that agreement reads only the labels)."""
    folder = _epoch_dir(locate(sweep_dir), p.epoch)
    if p.embedding is not None:
        (folder / f"{p.trial_id}{EMB}").write_bytes(_npz({"embedding": p.embedding.astype(np.float16)}))
    arrays = {
        "assignment": p.assignment.astype(np.int32),
        "setting": np.array(p.setting),
        "seed": np.int64(p.seed),
    }
    (folder / f"{p.trial_id}.npz").write_bytes(_npz(arrays))


def read(
    sweep_dir: Location | str,
    epoch: int,
    trials: list[str] | None = None,
    embeddings: bool = True,
    limit: int | None = None,
) -> dict[str, Partition]:
    """The partitions stored at ``epoch`` (``trial_id -> Partition``), only of ``trials`` if given, at most
    ``limit`` of them (the first by trial id). Unreadable files (a write in progress elsewhere) are skipped."""
    folder = _epoch_dir(locate(sweep_dir), epoch)
    out: dict[str, Partition] = {}
    for loc in folder.files(".npz"):
        if loc.name.endswith(EMB):
            continue
        tid = loc.name[: -len(".npz")]
        if trials is not None and tid not in trials:
            continue
        if limit is not None and len(out) >= limit:
            break
        try:
            z = _load(loc)
            emb = z.get("embedding") if embeddings else None  # stored beside the labels before 2026-12-06
            if embeddings and emb is None and (folder / f"{tid}{EMB}").exists():
                emb = _load(folder / f"{tid}{EMB}")["embedding"]
        except (OSError, ValueError, EOFError, KeyError):
            continue
        out[tid] = Partition(tid, epoch, z["assignment"], emb, str(z["setting"]), int(z["seed"]))
    return out


def epochs(sweep_dir: Location | str) -> list[int]:
    """The epochs at which partitions were stored (sorted)."""
    root = locate(sweep_dir) / DIR
    import pyarrow.fs as pafs

    infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    found = [_EPOCH_DIR.search(i.base_name) for i in infos if i.type == pafs.FileType.Directory]
    return sorted(int(m.group(1)) for m in found if m)
