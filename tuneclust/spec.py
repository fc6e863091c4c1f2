"""A study as a YAML file -> a validated, typed :class:`Spec`.

Strict like nanoGPT's configurator: unknown keys, wrong types, unknown names and empty or inverted ranges are
errors, and every error names the file and the field (:class:`SpecError`). YAML is loaded with ``safe_load``:
nothing in a spec is evaluated as code. ``--set dotted.key=value`` overrides go through the same validation.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneclust import metrics, partitions, rules
from tuneclust.data.registry import DataConfig
from tuneclust.plan import SweepPlan
from tuneclust.runtime import RuntimeConfig
from tuneclust.space import SearchSpace
from tuneclust.yamlsafe import YamlError, clip, first_non_finite, short
from tuneclust.yamlsafe import decode as decode_spec
from tuneclust.yamlsafe import load as load_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SEARCHERS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
MAX_NAME = 100
"""Longest sweep name: it names a folder (and MLflow runs)."""
MAX_EPOCHS = 100_000
MAX_SPEC_BYTES = 1 << 20


MAX_MESSAGE = 290
"""Longest error line (``error: `` is printed before it)."""


class SpecError(ValueError):
    """A spec is invalid. ``str(err)`` is the one line the CLI prints: ``file: field: what was expected``."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        line = " ".join((f"{source}: {field}: {message}" if field else f"{source}: {message}").split())
        super().__init__(line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "...")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchDim(_Strict):
    """One search dimension: exactly one of the distribution keys."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    quniform: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDim:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(DISTRIBUTIONS)}; got {given or 'none'}")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("grid", "choice"):
            if not value:
                raise ValueError(f"{kind} must list at least one value")
        else:
            lo, hi = value[0], value[1]
            if not lo < hi:
                raise ValueError(f"{kind} range must have low < high, got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs a positive low bound, got {lo}")
            if kind == "quniform" and value[2] <= 0:
                raise ValueError(f"quniform needs a positive step q, got {value[2]}")
            if kind == "quniform" and (hi - lo) / value[2] > 1e9:
                raise ValueError("quniform has more than 1e9 steps between low and high: use uniform")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)

    def is_finite(self) -> bool:
        return self.kind in ("grid", "choice")

    def representative(self) -> Any:
        """One value of the dimension (first listed value, or the middle of a range): used by --smoke and train."""
        kind, v = self.kind, self.value
        if kind in ("grid", "choice"):
            return v[0]
        if kind == "uniform":
            return (v[0] + v[1]) / 2
        if kind == "loguniform":
            return math.sqrt(v[0] * v[1])
        if kind == "randint":
            return v[0]
        return round(((v[0] + v[1]) / 2) / v[2]) * v[2]

    def probes(self) -> list[Any]:
        """Values that exercise the dimension's type: every listed value, or both ends and the middle."""
        if self.is_finite():
            return list(self.value)
        lo, hi = self.value[0], self.value[1]
        return [lo, self.representative(), hi if self.kind != "randint" else hi - 1]


class Budget(_Strict):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    """Number of training epochs (calls of the method's ``train_epoch``)."""
    eval_every: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    """Evaluate (and report, and checkpoint) every this many epochs; the last epoch is always evaluated."""


class SearcherSpec(_Strict):
    type: Literal["grid", "random", "optuna"] = "grid"
    seed: int = Field(default=0, ge=0, lt=2**32)
    """Seeds the random searcher and Optuna's TPE sampler."""
    n_startup_trials: int = Field(default=10, ge=1, le=100_000)
    """Optuna: random trials per grid cell before TPE takes over."""


class _Sched(_Strict):
    time_attr: Literal["epoch", "step", "training_iteration"] = "epoch"
    """The axis schedulers compare trials on: ``epoch`` (default), ``step`` (optimisation steps) or
    ``training_iteration`` (number of reports)."""


class Fifo(_Sched):
    type: Literal["fifo"] = "fifo"


class Asha(_Sched):
    type: Literal["asha"]
    max_t: int | None = Field(default=None, ge=1)
    """Default: budget.epochs."""
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=4, gt=1)
    brackets: int = Field(default=1, ge=1)


class Hyperband(_Sched):
    type: Literal["hyperband"]
    max_t: int | None = Field(default=None, ge=1)
    reduction_factor: float = Field(default=3, gt=1)


class Median(_Sched):
    type: Literal["median"]
    grace_period: float = Field(default=1, ge=0)
    min_samples_required: int = Field(default=3, ge=1)


class Pbt(_Sched):
    type: Literal["pbt"]
    perturbation_interval: int = Field(default=5, ge=1)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    hyperparam_mutations: list[str] | None = None
    """Search keys PBT may mutate; default: every search dimension that is not a grid."""


SchedulerSpec = Annotated[Fifo | Asha | Hyperband | Median | Pbt, Field(discriminator="type")]
SCHEDULERS = tuple(
    get_args(c.model_fields["type"].annotation)[0] for c in (Fifo, Asha, Hyperband, Median, Pbt)
)
"""The scheduler kinds (``scheduler.type``); what each does in a sweep: :mod:`tuneclust.schedulers`."""


class Objective(_Strict):
    metric: str = "acc"
    mode: Literal["max", "min"] | None = None
    """Default: the metric's natural direction (max for acc/nmi/ari/silhouette/CH, min for DB and losses)."""


class EvaluationSpec(_Strict):
    subset: int = Field(default=partitions.SUBSET, ge=10, le=1_000_000)
    """Images of the evaluation subset shared by every trial (a seeded draw; all when the set is smaller): each
    trial stores its cluster of each at every evaluation (``partitions/``), for the cross-trial criteria."""
    embedding_points: int = Field(default=partitions.EMBEDDING_POINTS, ge=0, le=100_000)
    """Of those, how many (the first) also have their embedding stored (float16), for ``pooled_silhouette``;
    0 stores none."""
    seed: int = Field(default=0, ge=0, lt=2**32)
    """Seed of the subset draw."""


class Resources(_Strict):
    cpu: float = Field(default=1, gt=0, le=1024)
    """CPUs per trial; the sweep checks before start that one node has this many."""
    gpu: float = Field(default=0, ge=0, le=64)
    """Fractions share a GPU (0.25 = four trials per GPU); the trial caps its memory share accordingly."""


class MlflowSpec(_Strict):
    enabled: bool = True
    experiment: str | None = Field(default=None, min_length=1, max_length=250)
    """Default: the spec's name."""
    uri: str | None = Field(default=None, max_length=4096)
    """Default: $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the working directory."""

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, v: str | None) -> str | None:
        if v is not None:
            rules.check_tracking_uri(v)
        return v


class Tracking(_Strict):
    mlflow: MlflowSpec = MlflowSpec()


class Spec(_Strict):
    """A study: see the README's "Spec reference" for every key."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    method: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=20_000)
    data: DataConfig = DataConfig()
    budget: Budget
    config: dict[str, Any] = {}
    search: dict[str, SearchDim] = {}
    ablation: dict[str, dict[str, Any]] = {}
    searcher: SearcherSpec = SearcherSpec()
    num_samples: int = Field(default=1, ge=1, le=1_000_000)
    max_trials: int = Field(default=10_000, ge=1, le=10_000_000)
    """Refuse a sweep of more trials than this (a typo in num_samples or a grid); raise it on purpose."""
    scheduler: SchedulerSpec = Fifo()
    objective: Objective = Objective()
    resources: Resources = Resources()
    evaluation: EvaluationSpec = EvaluationSpec()
    runtime: RuntimeConfig = RuntimeConfig()
    """How each trial runs on its device (precision, channels_last, compile, TF32, cuDNN, MPS): tuneclust.runtime."""
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    max_failures: int = Field(default=0, ge=0, le=1000)
    """Retries of a crashed trial (from its last checkpoint) before it is recorded as errored."""
    tracking: Tracking = Tracking()
    storage: str = Field(default="./runs", min_length=1, max_length=4096)
    """Results go to ``<storage>/<name>/``: a path or a URI (``s3://bucket/prefix``, ``gs://``, ``abfs://``)."""

    @field_validator("searcher", mode="before")
    @classmethod
    def _searcher_str(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_str(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("storage")
    @classmethod
    def _storage_scheme(cls, v: str) -> str:
        from tuneclust.storage import check_storage

        return check_storage(v)  # a StorageError is a ValueError: pydantic reports it under "storage"

    @field_validator("ablation")
    @classmethod
    def _arm_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for arm in v:
            if not re.match(NAME_PATTERN, str(arm)) or len(arm) > MAX_NAME:
                raise ValueError(
                    f"arm name {short(arm)} must match {NAME_PATTERN} (at most {MAX_NAME} characters)"
                )
        return v

    # derived views ----------------------------------------------------------------------------------
    @property
    def arms(self) -> list[str]:
        return list(self.ablation) or [""]

    @property
    def mode(self) -> str:
        return self.objective.mode or metrics.metric_mode(self.objective.metric)

    @property
    def space(self) -> SearchSpace:
        """The search space (grid/sampled dimensions, cells, trial count): :mod:`tuneclust.space`."""
        return SearchSpace(
            dict(self.search),
            tuple(self.arms),
            self.searcher.type,
            self.num_samples,
            self.searcher.seed,
            self.searcher.n_startup_trials,
        )

    def sweep_plan(self) -> SweepPlan:
        """What every trial of the sweep shares (:class:`tuneclust.plan.SweepPlan`), shipped to the workers."""
        return SweepPlan(
            method=self.method,
            config=dict(self.config),
            ablation={k: dict(v) for k, v in self.ablation.items()},
            data=self.data.model_dump(),
            epochs=self.budget.epochs,
            eval_every=self.budget.eval_every,
            cpu=self.resources.cpu,
            gpu=self.resources.gpu,
            runtime=self.runtime.model_dump(),
            evaluation=self.evaluation.model_dump(),
        )

    def num_trials(self) -> int:
        return self.space.num_trials()

    def representative_point(self, arm: str | None = None) -> dict[str, Any]:
        """One point of the space (``train``, ``estimate``): every search dimension at its representative value,
        and ``arm`` (default: the first arm)."""
        point: dict[str, Any] = {k: d.representative() for k, d in self.search.items()}
        point["arm"] = self.arms[0] if arm is None else arm
        return point

    def data_configs(self) -> list[DataConfig]:
        """The data config of every dataset the sweep uses (one per ``data.name`` value when it is searched)."""
        names = list(self.search["data.name"].value) if "data.name" in self.search else [self.data.name]
        return [DataConfig.model_validate({**self.data.model_dump(), "name": n}) for n in names]


# loading -----------------------------------------------------------------------------------------------
def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file. Raises :class:`SpecError` naming file and field.

    The file is read as bytes and parsed by :mod:`tuneclust.yamlsafe` (UTF-8, bounded size and depth, no
    duplicate keys, plain scalars only) before any Python object is built from it.
    """
    source = clip(str(path), 120)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(source, "", f"cannot read the file ({e.strerror or type(e).__name__})") from None
    try:
        raw = load_yaml(decode_spec(data))
    except YamlError as e:
        raise SpecError(source, "", str(e)) from None
    if not isinstance(raw, dict):
        raise SpecError(
            source, "", f"expected a mapping of spec keys at the top level, got {type(raw).__name__}"
        )
    for item in overrides or []:
        apply_override(raw, item, source)
    return validate_spec(raw, source)


def apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as strict YAML) to the raw spec dict in place."""
    if "=" not in item:
        raise SpecError(source, f"--set {clip(item, 60)}", "expected dotted.key=value")
    key, text = item.split("=", 1)
    label = f"--set {clip(key, 60)}"
    try:
        value = load_yaml(text) if text != "" else None
    except YamlError as e:
        raise SpecError(source, label, f"cannot parse value {short(text)} as YAML ({e})") from None
    parts = key.strip().split(".")
    if any(not p for p in parts) or len(parts) > 8:
        raise SpecError(source, label, "expected a dotted key such as budget.epochs")
    node = raw
    # "search.data.name" and "config.x" style paths: the search keys may themselves contain a dot
    if parts[0] == "search" and len(parts) > 2 and parts[1] == "data":
        parts = [parts[0], f"data.{parts[2]}", *parts[3:]]
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise SpecError(source, label, f"{short(p)} is not a mapping")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def validate_spec(raw: dict[str, Any], source: str = "<spec>") -> Spec:
    """Validate a raw spec strictly: no NaN/inf anywhere, no str->number or bool->number coercion."""
    bad = first_non_finite(raw)
    if bad:
        raise SpecError(source, clip(bad, 80), "must be a finite number (got NaN or infinity)")
    try:
        # JSON-mode strict validation: lists are accepted for tuples (search ranges), ints for floats,
        # but never a string or a bool for a number
        spec = Spec.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as e:
        raise SpecError(source, *rules.first_error(e)) from None
    except (TypeError, ValueError) as e:  # json.dumps of something a plain YAML document cannot hold
        raise SpecError(source, "", f"not a plain spec document ({short(str(e), 80)})") from None
    try:
        rules.check(spec)
    except rules.Violation as v:
        raise SpecError(source, v.field, v.message) from None
    return spec


def smoke_spec(spec: Spec) -> Spec:
    """The ``--smoke`` version of a spec: the bundled digits, <=2 epochs, one value per search dimension,
    every ablation arm, CPU only, the method's ``smoke_overrides``; results under ``<name>-smoke``."""
    from tuneclust.methods import get_method

    method = get_method(spec.method)
    raw = spec.model_dump(mode="json")
    raw["name"] = f"{spec.name}-smoke"
    if spec.tracking.mlflow.experiment:  # keep smoke runs out of the real study's MLflow experiment
        raw["tracking"]["mlflow"]["experiment"] = f"{spec.tracking.mlflow.experiment}-smoke"
    raw["data"] = {
        "name": "digits",
        "subsample": 600,
        "imbalance_r_min": spec.data.imbalance_r_min,
        "imbalance_seed": spec.data.imbalance_seed,
    }
    raw["budget"] = {"epochs": min(spec.budget.epochs, 2), "eval_every": 1}
    raw["config"] = {**spec.config, **method.smoke_overrides}
    keep_sampled = spec.scheduler.type == "pbt"  # PBT mutates the sampled dimensions: keep their ranges
    raw["search"] = {
        k: (
            d.model_dump(exclude_none=True)
            if keep_sampled and not d.is_finite()
            else {"grid": [d.representative()]}
        )
        for k, d in spec.search.items()
        if k not in ("data.name", "data.root", "data.image_size", "data.num_classes")
    }
    if spec.objective.metric == "seed_agreement":  # it compares seeds: keep two
        raw["search"]["seed"] = {"grid": list(spec.search["seed"].value)[:2]}
    raw["num_samples"] = 1
    raw["resources"] = {"cpu": 1, "gpu": 0}
    sched = raw["scheduler"]
    if sched.get("max_t"):
        sched["max_t"] = raw["budget"]["epochs"]
    if "grace_period" in sched:
        sched["grace_period"] = 1
    if "perturbation_interval" in sched:
        sched["perturbation_interval"] = 1
    return validate_spec(raw, f"{spec.name} (--smoke)")
