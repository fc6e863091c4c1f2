"""The contract every clustering method implements; the base class owns the training loop.

A method adds its networks, one optimisation ``step`` on a batch that returns its named loss terms, and its
``evaluate``. The base owns everything else, once for all four methods:

- the epoch loop over a seeded permutation (:meth:`Method.batches`), calling :meth:`Method.step` under the
  trial's runtime (precision), accumulating each term's mean on the device and reading it back once per epoch;
  a method whose updates alternate (a GAN's critic and generator steps) says which step takes which batch in
  :meth:`Method.schedule` instead of keeping a flag for ``step`` to read;
- one non-finite check (:meth:`Method.check_finite`: which quantity, which epoch, which trial);
- optimisers built from the config (:meth:`Method.add_optimizer`) and the config re-applied to them at every
  epoch and after :meth:`load_state_dict`, so a PBT mutation, a ``--set`` or a resume with a changed config trains
  at the configured values (nanoGPT's rule: the config wins over restored state);
- eval-mode embedding in chunks with one chunk policy (:meth:`Method.map_chunks`);
- compilation: a method hands the pure part of its step (augmentation applied with parameters drawn from the
  trial's generator just before, networks, loss; no generator, no optimiser) to ``self.runtime.compile_fn``,
  which compiles it as one graph where the runtime compiles (CUDA graphs on a GPU) and returns it unchanged
  in eager; the draws, backward and optimiser step stay outside (:meth:`Method.descend`);
- checkpoint state: counters, the data-order/augmentation generator, registered networks, optimisers and the
  attributes named in ``state_attrs``.

Loss terms: each ``losses/<m>.py`` has one weighted combination ``<m>_loss(..., weights) -> LossTerms``; a term
is off iff its weight is 0, and an off term is neither computed nor logged (absent from the epoch's results).

A method knows nothing about Ray, MLflow or YAML. Minimal example::

    class Mine(Method):
        name, Config = "mine", MineConfig

        def build(self) -> None:
            self.net = self.add_net("net", MyNet(self.data.channels))
            self.add_optimizer("opt", "sgd", self.net.parameters(), lambda c: {"lr": c.lr})

        def step(self, idx):
            out = mine_loss(self.net(self.x[idx]), weights=self.cfg.weights())
            self.descend("opt", out.total)
            return out.logged()

        def evaluate(self) -> Evaluation:
            return Evaluation(embedding=self.map_chunks(self.net, self.x).cpu().numpy())
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from tuneclust.data.registry import Dataset
from tuneclust.runtime import NoScaler

EVAL_CHUNK_ELEMENTS = 2**22
"""Eval-mode chunk policy: about this many input elements per forward pass (256 to 8192 samples)."""


class MethodConfig(BaseModel):
    """Keys shared by every method. Subclasses add their own, each default with its source."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, allow_inf_nan=False
    )

    seed: int = 0
    """Seeds torch, numpy, python, data order and augmentation of the trial. May be a grid dimension."""
    kmeans_n_init: int = 30
    """k-means restarts at evaluation: 30, where a one-ulp nudge of an embedding moved ACC by up to .0014 (.022 with 10; benchmarks/kmeans_restarts.py)."""

    def weights(self) -> dict[str, float]:
        """The loss-term weights this config implies (a term is off iff its weight is 0). Methods override."""
        return {}


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


class NonFiniteError(RuntimeError):
    """A loss, an embedding or an assignment became NaN or infinite: the trial stops, the sweep goes on."""


@dataclass
class _Optimizer:
    """A registered optimiser and how the config sets its hyperparameters."""

    optimizer: torch.optim.Optimizer
    hparams: Callable[[Any], dict[str, Any]]
    """config -> param-group values (lr, momentum, weight_decay, betas, ...)."""
    schedule: Callable[[Any, int], float] | None = None
    """(config, epoch) -> learning rate of that epoch; None: ``hparams(cfg)["lr"]`` throughout."""


class Exact:
    """The default runtime: fp32, eager, no scaling. ``tuneclust.runtime.resolve`` gives the configured one
    (precision, channels_last, compile) with the same members."""

    scaler = NoScaler()
    fused_optimizers = False
    """True on a GPU runtime: optimisers built with ``fused=True``."""
    static_shapes = False
    """True when every training batch must be full-sized (a compiled step, or ``runtime.static_shapes``)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare_module(self, net: torch.nn.Module) -> torch.nn.Module:
        return net

    def compile_net(self, net: torch.nn.Module, entry_points: tuple[str, ...]) -> torch.nn.Module:
        return net

    def compile_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def step_begin(self) -> None:
        return None


OptimizerKind = Literal["sgd", "adam"]
_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


class Method(ABC):
    """Base class of the methods: see the module docstring (and the README's "The method contract").

    Subclasses set ``name`` and ``Config`` and implement :meth:`build`, :meth:`step` and :meth:`evaluate`.
    ``self.epoch`` is the number of completed epochs (the trial loop increments it after :meth:`train_epoch`),
    so inside an epoch it is the 0-based index of the running epoch.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    """Metric names this method reports beyond the generic ones (so specs may use them as objective)."""
    smoke_overrides: ClassVar[dict[str, Any]] = {}
    """Config changes ``--smoke`` applies so that an epoch on the bundled digits takes seconds on a CPU."""
    state_attrs: ClassVar[tuple[str, ...]] = ()
    """Attributes saved in checkpoints besides networks, optimisers and counters (tensors, numbers, None)."""
    drop_last: ClassVar[bool] = False
    """Drop the last partial batch of an epoch (always dropped when it holds a single sample)."""

    def __init__(
        self, cfg: MethodConfig, data: Dataset, device: torch.device, epochs: int, runtime: Any = None
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.epochs = epochs
        self.runtime = runtime or Exact()
        self.label = ""
        """Names the trial in error messages (set by the trial loop)."""
        self.epoch = 0
        self.steps = 0
        self.images_seen = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)
        self.nets: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, _Optimizer] = {}
        self.build()

    # what a method implements ------------------------------------------------------------------------
    @abstractmethod
    def build(self) -> None:
        """Create networks (:meth:`add_net`), optimisers (:meth:`add_optimizer`) and buffers."""

    @abstractmethod
    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One optimisation step on the samples ``idx``; return the named loss terms (``loss`` = the total).

        Runs under the trial's runtime (autocast). Return None for a step that logs nothing.
        """

    @abstractmethod
    def evaluate(self) -> Evaluation:
        """Embed / assign the whole evaluation set in eval mode, without augmentation."""

    def on_epoch_start(self) -> None:  # noqa: B027 (an optional hook)
        """Hook before an epoch's first step (e.g. phase switches, target updates)."""

    def on_epoch_end(self) -> None:  # noqa: B027 (an optional hook)
        """Hook after an epoch's last step."""

    def on_load(self, state: dict[str, Any]) -> None:  # noqa: B027 (an optional hook)
        """Hook after counters and ``state_attrs`` are restored, before optimisers are (build lazy ones here)."""

    def progress(self) -> dict[str, float]:
        """Extra per-report fields describing where training is (e.g. phase); ``lr`` by default."""
        return {"lr": self.current_lr()} if self.optimizers else {}

    def schedule(self) -> Iterable[tuple[Callable[[torch.Tensor], Any], torch.Tensor]]:
        """The epoch's steps as (step function, sample indices) pairs: :meth:`step` on each of :meth:`batches`.

        A method with several kinds of update (DCCS: n_critic critic steps, then one encoder step) overrides this;
        each function runs under the trial's runtime and returns its named terms (or None), as :meth:`step`.
        """
        return ((self.step, idx) for idx in self.batches())

    def batches(self) -> Iterable[torch.Tensor]:
        """The epoch's batches of sample indices: a seeded permutation in ``cfg.batch_size`` chunks."""
        n = len(self.data)
        b = min(int(getattr(self.cfg, "batch_size", n)), n)
        parts = list(self.permutation(n).split(b))
        drop = self.drop_last or self.runtime.static_shapes
        if len(parts) > 1 and (parts[-1].numel() < 2 or (drop and parts[-1].numel() < b)):
            parts.pop()
        cap = getattr(self.cfg, "max_steps_per_epoch", None)
        return parts[:cap] if cap else parts

    # registration ----------------------------------------------------------------------------------
    def add_net(
        self, name: str, net: torch.nn.Module, entry_points: tuple[str, ...] = ("forward",)
    ) -> torch.nn.Module:
        """Register a network: moved to the device, prepared by the runtime (memory format), saved in checkpoints.

        Args:
            name: key in checkpoints.
            net: the module.
            entry_points: the methods of ``net`` the step calls; where the runtime compiles, each is compiled in
                place (:meth:`tuneclust.runtime.Runtime.compile_net`). ``()`` keeps the net eager (a net that is
                differentiated twice, such as a WGAN-GP critic: compiled graphs have no double backward).

        Returns:
            ``net`` itself (its entry points compiled where compilation is on).
        """
        net = self.runtime.prepare_module(net.to(self.device))
        self.nets[name] = net
        return self.runtime.compile_net(net, entry_points)

    def add_optimizer(
        self,
        name: str,
        kind: OptimizerKind,
        params: Iterable[torch.nn.Parameter],
        hparams: Callable[[Any], dict[str, Any]],
        schedule: Callable[[Any, int], float] | None = None,
    ) -> torch.optim.Optimizer:
        """Build and register an optimiser whose hyperparameters come from the config.

        Args:
            name: key in checkpoints and in :meth:`descend`.
            kind: ``sgd`` or ``adam`` (fused kernels where the runtime says so: on a GPU).
            params: the parameters it updates.
            hparams: config -> param-group values; re-applied at every epoch and after a restore.
            schedule: (config, epoch) -> that epoch's learning rate (e.g. step decay); None: constant.
        """
        fused = {"fused": True} if self.runtime.fused_optimizers else {}
        opt = _OPTIMIZERS[kind](params, **hparams(self.cfg), **fused)
        self.optimizers[name] = _Optimizer(opt, hparams, schedule)
        self.apply_hparams()
        return opt

    def apply_hparams(self) -> None:
        """Write the configured hyperparameters (and this epoch's scheduled lr) into every optimiser."""
        for entry in self.optimizers.values():
            values = dict(entry.hparams(self.cfg))
            if entry.schedule is not None:
                values["lr"] = entry.schedule(self.cfg, self.epoch)
            for group in entry.optimizer.param_groups:
                group.update(values)

    def current_lr(self) -> float:
        """The learning rate of the first registered optimiser (the one the method's ``lr`` key sets)."""
        return float(next(iter(self.optimizers.values())).optimizer.param_groups[0]["lr"])

    # the loop ----------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One epoch: hyperparameters from the config, each batch's step, the terms' means (one read-back)."""
        self.set_train(True)
        self.apply_hparams()
        self.on_epoch_start()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for step, idx in self.schedule():
            self.runtime.step_begin()
            with self.runtime.autocast():
                terms = step(idx)
            self.steps += 1
            self.images_seen += int(idx.numel())
            for key, value in (terms or {}).items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
                counts[key] = counts.get(key, 0) + 1
        self.on_epoch_end()
        if not sums:
            return {}
        values = torch.stack([sums[k] / counts[k] for k in sums]).tolist()  # the epoch's one host sync
        means = dict(zip(sums, values))
        self.check_finite(means, "loss")
        return means

    def descend(self, optimizer: str, loss: torch.Tensor) -> None:
        """Zero the optimiser's gradients, back-propagate ``loss`` (scaled under fp16) and step."""
        opt = self.optimizers[optimizer].optimizer
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            scaler = self.runtime.scaler
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    def check_finite(self, values: dict[str, Any], quantity: str, epoch: int | None = None) -> None:
        """Raise :class:`NonFiniteError` naming the quantity, the epoch and the trial if a value is NaN/inf.

        Args:
            values: name -> a float, an array or a tensor (any non-finite element fails).
            quantity: what the values are (``loss``, ``embedding``, ``assignment``), for the message.
            epoch: the 1-based epoch to name (default: the running epoch).
        """
        bad = [k for k, v in values.items() if not _all_finite(v)]
        if bad:
            shown = ", ".join(f"{k}={values[k]:.4g}" if isinstance(values[k], float) else k for k in bad[:4])
            trial = f" ({self.label})" if self.label else ""
            raise NonFiniteError(
                f"{self.name}: non-finite {quantity} at epoch {epoch or self.epoch + 1}: {shown}{trial}; "
                "lower the learning rate or the loss weights"
            )

    # helpers for subclasses ------------------------------------------------------------------------
    def permutation(self, n: int) -> torch.Tensor:
        """A seeded random permutation of ``range(n)`` on the method's device (data order)."""
        return torch.randperm(n, generator=self.generator, device=self.device)

    def set_train(self, mode: bool) -> None:
        for net in self.nets.values():
            net.train(mode)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Networks in eval mode, no gradients; training mode restored afterwards."""
        self.set_train(False)
        try:
            with torch.no_grad(), self.runtime.autocast():
                yield
        finally:
            self.set_train(True)

    def map_chunks(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``x`` in eval mode in chunks (one policy: :data:`EVAL_CHUNK_ELEMENTS`), as fp32."""
        per_sample = max(1, x[0].numel()) if len(x) else 1
        chunk = int(min(8192, max(256, EVAL_CHUNK_ELEMENTS // per_sample)))
        with self.eval_mode():
            return torch.cat([fn(xb).float() for xb in x.split(chunk)])

    # state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training: counters, generator, networks, optimisers, ``state_attrs``."""
        return {
            "counters": {"epoch": self.epoch, "steps": self.steps, "images_seen": self.images_seen},
            "generator": self.generator.get_state(),
            "nets": {k: net.state_dict() for k, net in self.nets.items()},
            "optimizers": {k: o.optimizer.state_dict() for k, o in self.optimizers.items()},
            "attrs": {a: _detached(getattr(self, a)) for a in self.state_attrs},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; then the config's hyperparameters are written into the optimisers."""
        c = state["counters"]
        self.epoch, self.steps, self.images_seen = int(c["epoch"]), int(c["steps"]), int(c["images_seen"])
        self.generator.set_state(state["generator"].cpu())
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        for a, value in state["attrs"].items():
            current = getattr(self, a, None)
            if isinstance(current, torch.nn.Parameter):
                with torch.no_grad():
                    current.copy_(value.to(self.device))
            else:
                setattr(self, a, value.to(self.device) if isinstance(value, torch.Tensor) else value)
        self.on_load(state)
        for k, entry in self.optimizers.items():
            entry.optimizer.load_state_dict(state["optimizers"][k])
        self.apply_hparams()


def _all_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


def _detached(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
