"""Clustering metrics: ACC (Hungarian), NMI, ARI with labels; silhouette, Calinski-Harabasz and Davies-Bouldin
without. Plus the k-means used by every method's evaluation (methods.md, "Common to all four"): sklearn's on
the CPU, :func:`kmeans_torch` (the same algorithm in torch, restarts batched) on a GPU so that evaluation does not
stall a packed GPU while the host crunches."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

LABELLED = ("acc", "nmi", "ari")
LABEL_FREE = ("silhouette", "calinski_harabasz", "davies_bouldin")
MODES = {
    "acc": "max",
    "nmi": "max",
    "ari": "max",
    "silhouette": "max",
    "calinski_harabasz": "max",
    "davies_bouldin": "min",
    "seed_agreement": "max",
    "consensus": "max",
    "pooled_silhouette": "max",
    "reference_silhouette": "max",
}


def metric_mode(name: str) -> str:
    """A metric's natural direction: ``max`` for scores, ``min`` for Davies-Bouldin, losses and critic estimates."""
    if name in MODES:
        return MODES[name]
    return "min" if name.startswith("loss") or "critic" in name or "distance" in name else "max"


SILHOUETTE_SAMPLE = 2000
"""Silhouette is O(N^2): computed on this many points, a fixed random subsample (seed 0) of the evaluation set."""


KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
"""Lloyd stops when every restart's centres moved (squared, summed) by less than this times the mean feature
variance (sklearn's rule and defaults)."""


def kmeans_fit(
    x: np.ndarray, k: int, n_init: int = 10, seed: int = 0, device: torch.device | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k-means with ``n_init`` restarts; returns (labels (N,), centres (k, d)).

    On a CUDA ``device`` this is :func:`kmeans_torch` there; otherwise sklearn's ``KMeans`` (float64).
    """
    if device is not None and torch.device(device).type == "cuda":
        labels, centres, _ = kmeans_torch(x, k, n_init, seed, device=device)
        return labels, centres
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(x, dtype=np.float64))
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (R, N, k) of points ``x`` (N, d) to each restart's centres ``c`` (R, k, d)."""
    d = x_sq[None, :, None] - 2 * torch.matmul(x[None], c.transpose(1, 2)) + (c * c).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def _kmeans_pp(
    x: torch.Tensor, x_sq: torch.Tensor, k: int, n_init: int, gen: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeding (sklearn's: 2 + log k candidates per centre), for ``n_init`` restarts at once."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    rows = torch.arange(n_init, device=x.device)
    first = torch.randint(n, (n_init,), generator=gen, device=x.device)
    centres = x[first][:, None, :].repeat(1, k, 1)
    closest = _sq_dists(x, x_sq, centres[:, :1])[..., 0]  # (R, N)
    for c in range(1, k):
        weights = closest + 1e-12 * (closest.sum(1, keepdim=True) == 0)
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen)  # (R, L)
        d_cand = _sq_dists(x, x_sq, x[cand])  # (R, N, L)
        new_closest = torch.minimum(closest[:, :, None], d_cand)  # (R, N, L)
        best = new_closest.sum(1).argmin(1)  # (R,)
        closest = new_closest[rows, :, best]
        centres[:, c] = x[cand[rows, best]]
    return centres


def kmeans_torch(
    x: np.ndarray | torch.Tensor,
    k: int,
    n_init: int = 10,
    seed: int = 0,
    max_iter: int = KMEANS_MAX_ITER,
    tol: float = KMEANS_TOL,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded k-means in torch: k-means++ seeding, then Lloyd iterations, ``n_init`` restarts batched as one
    (n_init, k, d) tensor; the restart with the least inertia wins.

    Computes in float32 on ``device`` (default: ``x``'s device, else the CPU). An empty cluster keeps its previous
    centre (sklearn relocates it to a far point; with k-means++ seeding this is rare). Same seed, device and input
    give the same result.

    Returns:
        labels (N,) int64, centres (k, d) float32, inertia (sum of squared distances to the assigned centre).
    """
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    xt = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    n, d = xt.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means: k={k} clusters for {n} points")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    with torch.no_grad():
        mean = xt.mean(0)
        xc = xt - mean  # centred, as sklearn does, for accurate distances
        x_sq = (xc * xc).sum(1)
        tol_abs = tol * float(xc.var(0, unbiased=False).mean())
        centres = _kmeans_pp(xc, x_sq, k, n_init, gen)
        offsets = (torch.arange(n_init, device=device) * k)[:, None]
        for _ in range(max_iter):
            labels = _sq_dists(xc, x_sq, centres).argmin(2)  # (R, N)
            flat = (labels + offsets).reshape(-1)
            sums = torch.zeros(n_init * k, d, device=device).index_add_(0, flat, xc.repeat(n_init, 1))
            counts = torch.zeros(n_init * k, device=device).index_add_(
                0, flat, torch.ones_like(flat, dtype=xc.dtype)
            )
            new = torch.where(
                counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres.reshape(-1, d)
            ).reshape(n_init, k, d)
            shift = ((new - centres) ** 2).sum((1, 2))
            centres = new
            if bool((shift <= tol_abs).all()):
                break
        dists = _sq_dists(xc, x_sq, centres)
        best_d, labels = dists.min(2)
        inertia = best_d.sum(1)
        r = int(inertia.argmin())
        return (
            labels[r].cpu().numpy().astype(np.int64),
            (centres[r] + mean).cpu().numpy().astype(np.float32),
            float(inertia[r]),
        )


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unsupervised clustering accuracy: the best one-to-one map of clusters to classes (Hungarian algorithm)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = max(y_true.max(), y_pred.max()) + 1
    w = np.zeros((n, n), dtype=np.int64)
    np.add.at(w, (y_pred, y_true), 1)
    rows, cols = linear_sum_assignment(-w)
    return float(w[rows, cols].sum() / y_true.size)


def labelled_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ACC, NMI (arithmetic mean, sklearn's default) and ARI."""
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def label_free_scores(x: np.ndarray, y_pred: np.ndarray, sample: int = SILHOUETTE_SAMPLE) -> dict[str, float]:
    """Silhouette (on a fixed subsample), Calinski-Harabasz and Davies-Bouldin of an assignment of ``x``.

    With fewer than two clusters used, the scores are undefined and reported as NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(np.unique(y_pred)) < 2 or len(np.unique(y_pred)) >= len(y_pred):
        return dict.fromkeys(LABEL_FREE, float("nan"))
    if len(x) > sample:
        idx = np.random.default_rng(0).choice(len(x), size=sample, replace=False)
        xs, ys = x[idx], y_pred[idx]
        sil = float(silhouette_score(xs, ys)) if len(np.unique(ys)) > 1 else float("nan")
    else:
        sil = float(silhouette_score(x, y_pred))
    return {
        "silhouette": sil,
        "calinski_harabasz": float(calinski_harabasz_score(x, y_pred)),
        "davies_bouldin": float(davies_bouldin_score(x, y_pred)),
    }


def assign(
    ev, k: int, n_init: int = 10, seed: int = 0, device: torch.device | str | None = None
) -> tuple[np.ndarray, float]:
    """(cluster of each sample, seconds in k-means): the method's own assignment if it has one, else k-means
    (``k`` clusters) on its embedding (:func:`kmeans_fit`: on ``device`` if that is a GPU)."""
    if ev.assignment is not None:
        return np.asarray(ev.assignment, dtype=np.int64), 0.0
    if ev.embedding is None:
        raise ValueError("an evaluation needs an embedding or an assignment")
    t0 = time.perf_counter()
    labels = kmeans_fit(ev.embedding, k, n_init, seed, device)[0]
    return np.asarray(labels, dtype=np.int64), time.perf_counter() - t0


def score_evaluation(
    ev,
    labels: np.ndarray | None,
    k: int,
    n_init: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
    assignment: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one :class:`tuneclust.methods.Evaluation`.

    ``assignment`` is scored if given, else :func:`assign`'s. Each extra view is clustered by k-means and reported
    as ``<view>_acc`` / ``_nmi`` / ``_ari``. ``eval_kmeans_s`` is the seconds spent in k-means.
    """
    out: dict[str, float] = {k_: float(v) for k_, v in ev.scores.items()}
    kmeans_s = 0.0
    if assignment is None:
        assignment, kmeans_s = assign(ev, k, n_init, seed, device)
    assignment = np.asarray(assignment, dtype=np.int64)
    out["clusters_used"] = float(len(np.unique(assignment)))
    if labels is not None:
        out.update(labelled_scores(labels, assignment))
    if ev.embedding is not None:
        out.update(label_free_scores(ev.embedding, assignment))
    for view, emb in ev.views.items():
        if labels is None or emb is None or np.asarray(emb).shape[1] == 0:
            continue
        t1 = time.perf_counter()
        view_labels = kmeans_fit(emb, k, n_init, seed, device)[0]
        kmeans_s += time.perf_counter() - t1
        out.update({f"{view}_{m}": v for m, v in labelled_scores(labels, view_labels).items()})
    out["eval_kmeans_s"] = kmeans_s
    return out
