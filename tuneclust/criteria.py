"""Label-free selection criteria that can be compared across trials.

Own-embedding scores (``silhouette``, ``calinski_harabasz``, ``davies_bouldin``) rank a trial's partition in the
trial's own embedding, and a hyperparameter such as IDFD's tau changes that space's geometry: on the quickstart's
tau grid they rank the settings in the reverse order of ACC (Spearman -0.96). The criteria here score partitions
on ground that does not move with the hyperparameters (docs: README "Choosing without labels"):

``seed_agreement``  mean ARI between the trial's partition and those of the other seeds of its setting, on the
                    sweep's shared evaluation subset (:mod:`tuneclust.partitions`). Needs >= 2 seeds per setting.
                    Fails on a degenerate solution that every seed reproduces (e.g. one cluster): check
                    ``clusters_used``; on the reduced mnist5k tau grid it preferred the reproducibly mediocre tau 5.
``consensus``       mean ARI with the partitions of every other trial at the same epoch (ensemble agreement).
                    The default label-free objective (evidence: README "Choosing without labels"). Rewards the
                    majority's answer: it fails when most settings are poor in the same way.
``pooled_silhouette``  the trial's partition scored by silhouette in each *other* trial's stored embedding and
                    averaged (the pooled scores of Wang & Ye, arXiv:2403.14830). Final selection only.
``reference_silhouette``  silhouette of the partition in a fixed reference space, the first 50 principal
                    components of the input images of the subset (computed by the trial itself). Works on digits
                    and MNIST; raw pixels are known to fail on natural images.

Online (under early stopping) a trial reports ``seed_agreement`` and ``consensus`` against the partitions its peers
have already stored at the same epoch; the first trial to reach an epoch has none and reports NaN, which Ray's
ASHA, HyperBand and median rule read as "continue". The final selection recomputes both with every trial that
reached the compared epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score

from tuneclust.partitions import Partition

ONLINE = ("seed_agreement", "consensus")
"""Cross-trial criteria every trial also reports at each evaluation (against the peers stored so far)."""
CROSS_TRIAL = (*ONLINE, "pooled_silhouette")
"""Criteria computed from several trials' stored partitions at one epoch."""
REFERENCE = ("reference_silhouette",)
"""Trial-local criteria in a fixed space (reported by every trial)."""
SELECTION = (*CROSS_TRIAL, *REFERENCE)
FINAL_ONLY = ("pooled_silhouette",)
"""Not reported by trials: an objective for the final selection only (``scheduler: fifo``)."""
DEFAULT = "consensus"
"""The default label-free objective, chosen by the evidence in README "Choosing without labels"."""
REFERENCE_POINTS = 2000
"""Subset images (the first ones) on which ``reference_silhouette`` is computed."""
REFERENCE_DIMS = 50
ONLINE_PEERS = 256
"""A trial's online agreement reads at most this many peers' partitions at its epoch."""
POOLED_SPACES = 32
"""At most this many trials' embeddings (evenly spread over the trials) serve as spaces of the pooled score."""


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    return float(adjusted_rand_score(a, b))


def online(own: Partition, peers: Mapping[str, Partition]) -> dict[str, float]:
    """``seed_agreement`` and ``consensus`` of ``own`` against the ``peers`` stored at the same epoch (NaN: none)."""
    others = [
        p for tid, p in peers.items() if tid != own.trial_id and len(p.assignment) == len(own.assignment)
    ]
    siblings = [p for p in others if p.setting == own.setting and p.seed != own.seed]
    mean = lambda ps: float(np.mean([_ari(own.assignment, p.assignment) for p in ps])) if ps else float("nan")  # noqa: E731
    return {"seed_agreement": mean(siblings), "consensus": mean(others)}


def agreement(parts: Mapping[str, Partition], setting_of: Mapping[str, str]) -> pd.DataFrame:
    """Per trial (index ``trial_id``): ``seed_agreement`` (mean ARI with the other trials of its setting) and
    ``consensus`` (mean ARI with every other trial), over the partitions ``parts`` of one epoch."""
    ids = [t for t in parts if t in setting_of]
    ari = {t: {} for t in ids}
    for a, b in itertools.combinations(ids, 2):
        ari[a][b] = ari[b][a] = _ari(parts[a].assignment, parts[b].assignment)
    rows = {}
    for t in ids:
        sib = [v for u, v in ari[t].items() if setting_of[u] == setting_of[t]]
        rows[t] = {
            "seed_agreement": float(np.mean(sib)) if sib else float("nan"),
            "consensus": float(np.mean(list(ari[t].values()))) if ari[t] else float("nan"),
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(ONLINE))


def pooled_silhouette(parts: Mapping[str, Partition], max_spaces: int = POOLED_SPACES) -> pd.Series:
    """Per trial: the mean silhouette of its partition in the other trials' stored embeddings (NaN without any)."""
    with_emb = [t for t, p in parts.items() if p.embedding is not None and len(p.embedding) > 2]
    spaces = with_emb
    if len(spaces) > max_spaces:
        spaces = [spaces[i] for i in np.linspace(0, len(spaces) - 1, max_spaces).round().astype(int)]
    scores: dict[str, list[float]] = {t: [] for t in parts}
    for s in spaces:
        emb = parts[s].embedding.astype(np.float32)
        d = pairwise_distances(emb)
        for t, p in parts.items():
            if t == s:
                continue
            labels = p.assignment[: len(emb)]
            if 1 < len(np.unique(labels)) < len(labels):
                scores[t].append(float(silhouette_score(d, labels, metric="precomputed")))
    return pd.Series({t: float(np.mean(v)) if v else float("nan") for t, v in scores.items()}, dtype=float)


def reference_space(images: np.ndarray, dims: int = REFERENCE_DIMS) -> np.ndarray:
    """The fixed reference space: the first ``dims`` principal components of the flattened images."""
    from sklearn.decomposition import PCA

    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    k = max(1, min(dims, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=0).fit_transform(x)


def reference_silhouette(space: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of ``labels`` (one per row of ``space``); NaN for fewer than two clusters."""
    if not 1 < len(np.unique(labels)) < len(labels):
        return float("nan")
    return float(silhouette_score(space, labels))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of the pairs where both are finite (NaN with fewer than 3 such pairs)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)
