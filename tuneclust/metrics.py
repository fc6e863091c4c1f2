"""Clustering metrics: ACC (Hungarian), NMI, ARI with labels; silhouette, Calinski-Harabasz and Davies-Bouldin
without. Plus the k-means used by every method's evaluation (methods.md, "Common to all four")."""

from __future__ import annotations

import numpy as np
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
}


def metric_mode(name: str) -> str:
    """A metric's natural direction: ``max`` for scores, ``min`` for Davies-Bouldin, losses and critic estimates."""
    if name in MODES:
        return MODES[name]
    return "min" if name.startswith("loss") or "critic" in name or "distance" in name else "max"


SILHOUETTE_SAMPLE = 2000
"""Silhouette is O(N^2): computed on this many points, a fixed random subsample (seed 0) of the evaluation set."""


def kmeans_fit(x: np.ndarray, k: int, n_init: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means with ``n_init`` restarts; returns (labels (N,), centres (k, d))."""
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(x, dtype=np.float64))
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


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


def score_evaluation(
    ev, labels: np.ndarray | None, k: int, n_init: int = 10, seed: int = 0
) -> dict[str, float]:
    """All metrics of one :class:`tuneclust.methods.Evaluation`.

    The method's own assignment is scored if it has one, else k-means (``k`` clusters) on its embedding.
    Each extra view is clustered by k-means and reported as ``<view>_acc`` / ``_nmi`` / ``_ari``.
    """
    out: dict[str, float] = {k_: float(v) for k_, v in ev.scores.items()}
    assignment = ev.assignment
    if assignment is None:
        if ev.embedding is None:
            raise ValueError("an evaluation needs an embedding or an assignment")
        assignment = kmeans_fit(ev.embedding, k, n_init, seed)[0]
    assignment = np.asarray(assignment, dtype=np.int64)
    out["clusters_used"] = float(len(np.unique(assignment)))
    if labels is not None:
        out.update(labelled_scores(labels, assignment))
    if ev.embedding is not None:
        out.update(label_free_scores(ev.embedding, assignment))
    for view, emb in ev.views.items():
        if labels is None or emb is None or np.asarray(emb).shape[1] == 0:
            continue
        view_labels = kmeans_fit(emb, k, n_init, seed)[0]
        out.update({f"{view}_{m}": v for m, v in labelled_scores(labels, view_labels).items()})
    return out
