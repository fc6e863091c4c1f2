"""metrics.kmeans_torch (the GPU evaluation's k-means) against sklearn's KMeans: same quality, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs

from tuneclust import metrics
from tuneclust.metrics import cluster_accuracy, kmeans_fit, kmeans_torch

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits(return_X_y=True)


@pytest.mark.parametrize("which", ["digits", "blobs"])
def test_torch_kmeans_matches_sklearn_quality(which: str, digits) -> None:
    """Per seed, inertia within 0.5% of sklearn's; ACC over 3 seeds within 0.02 of sklearn's mean."""
    if which == "digits":
        x, y, k = *digits, 10
    else:
        x, y = make_blobs(3000, centers=8, n_features=16, cluster_std=2.0, random_state=0)
        k = 8
    acc_sk, acc_t = [], []
    for seed in SEEDS:
        km = KMeans(k, n_init=10, random_state=seed).fit(x)
        labels, centres, inertia = kmeans_torch(x, k, n_init=10, seed=seed)
        assert labels.shape == (len(x),) and labels.dtype == np.int64 and centres.shape == (k, x.shape[1])
        assert inertia == pytest.approx(km.inertia_, rel=5e-3)
        recomputed = ((x - centres[labels]) ** 2).sum()
        assert recomputed == pytest.approx(inertia, rel=1e-3)
        acc_sk.append(cluster_accuracy(y, km.labels_))
        acc_t.append(cluster_accuracy(y, labels))
    assert np.mean(acc_t) == pytest.approx(np.mean(acc_sk), abs=0.02)
    if which == "blobs":
        assert min(acc_t) == 1.0


def test_torch_kmeans_is_deterministic_per_seed(digits) -> None:
    x = digits[0]
    a = kmeans_torch(x, 10, n_init=4, seed=3)
    b = kmeans_torch(torch.as_tensor(x), 10, n_init=4, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    c = kmeans_torch(x, 10, n_init=1, seed=4)
    assert not np.array_equal(a[1], c[1])


def test_bad_k_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k=5 clusters for 3 points"):
        kmeans_torch(np.zeros((3, 2)), 5)


def test_kmeans_fit_keeps_sklearn_on_the_cpu(digits) -> None:
    x = digits[0]
    labels, _ = kmeans_fit(x, 10, 2, 0, device="cpu")
    np.testing.assert_array_equal(labels, KMeans(10, n_init=2, random_state=0).fit(x).labels_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is present")
def test_kmeans_fit_on_a_gpu_uses_torch(digits) -> None:
    x, y = digits
    labels, _ = kmeans_fit(x, 10, 10, 0, device="cuda")
    assert cluster_accuracy(y, labels) > 0.7
    assert metrics.kmeans_torch(x, 10, 10, 0, device="cuda")[2] > 0
