"""The contract every clustering method implements.

A method owns its networks, losses and optimisers and exposes one epoch of training, an evaluation and its
state. It knows nothing about Ray, MLflow or YAML: the trainable (``tuneclust.trainable``) drives it, and the
spec layer validates its config through :attr:`Method.Config`.

Loss toggles are plain config keys, so an ablation arm is just a dict of overrides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from tuneclust.data.registry import Dataset


class MethodConfig(BaseModel):
    """Keys shared by every method. Subclasses add their own, each default with its source."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    seed: int = 0
    """Seeds torch, numpy, python, data order and augmentation of the trial. May be a grid dimension."""
    kmeans_n_init: int = 10
    """k-means restarts at evaluation (methods.md: configurable, default 10)."""


@dataclass
class Evaluation:
    """What a method hands to ``tuneclust.metrics`` at an evaluation.

    Attributes:
        embedding: (N, d) features of the whole evaluation set; clustered by k-means when ``assignment`` is
            None, and used for the label-free scores (silhouette, Calinski-Harabasz, Davies-Bouldin).
        assignment: (N,) the method's own cluster labels (e.g. argmax of a cluster head), or None.
        views: extra named embeddings, each clustered by k-means and reported as ``<view>_acc`` etc.
        scores: the method's own label-free scalars (e.g. DCCS's critic loss), reported under their names.
    """

    embedding: np.ndarray | None = None
    assignment: np.ndarray | None = None
    views: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the trial stops with this error, the sweep goes on."""


class Method(ABC):
    """Base class of the four methods. See DESIGN.md, "A method is".

    Subclasses set ``name``, ``Config`` and implement the five abstract members. They count the images they
    train on in ``self.images_seen`` (the trainable reports images/s from it) and optimisation steps in
    ``self.steps``. ``self.epoch`` is the number of completed epochs: the trainable increments it after each
    ``train_epoch()`` returns, so inside ``train_epoch`` it is the 0-based index of the running epoch.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    """Metric names this method reports beyond the generic ones (so specs may use them as objective)."""
    smoke_overrides: ClassVar[dict[str, Any]] = {}
    """Config changes ``--smoke`` applies so that an epoch on the bundled digits takes seconds on a CPU."""

    def __init__(self, cfg: MethodConfig, data: Dataset, device: torch.device, epochs: int) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.epochs = epochs
        self.epoch = 0
        self.steps = 0
        self.images_seen = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)

    @abstractmethod
    def train_epoch(self) -> dict[str, float]:
        """Train one epoch; return the epoch's mean of every loss term (unweighted) and the total."""

    @abstractmethod
    def evaluate(self) -> Evaluation:
        """Embed / assign the whole evaluation set in eval mode, without augmentation."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training: networks, optimisers, banks, generator state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

    def progress(self) -> dict[str, float]:
        """Extra per-report fields describing where training is (e.g. phase); empty by default."""
        return {}

    # helpers for subclasses -------------------------------------------------------------------------
    def base_state(self) -> dict[str, Any]:
        """Counters and the augmentation/data-order generator, for subclasses' ``state_dict``."""
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "images_seen": self.images_seen,
            "generator": self.generator.get_state(),
        }

    def load_base_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.steps = int(state["steps"])
        self.images_seen = int(state["images_seen"])
        self.generator.set_state(
            state["generator"].cpu() if hasattr(state["generator"], "cpu") else state["generator"]
        )

    def permutation(self, n: int) -> torch.Tensor:
        """A seeded random permutation of ``range(n)`` on the method's device (data order)."""
        return torch.randperm(n, generator=self.generator, device=self.device)
