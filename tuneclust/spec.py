"""A study as a YAML file -> a validated, typed :class:`Spec`.

Strict like nanoGPT's configurator: unknown keys, wrong types, unknown names and empty or inverted ranges are
errors, and every error names the file and the field (:class:`SpecError`). YAML is loaded with ``safe_load``:
nothing in a spec is evaluated as code. ``--set dotted.key=value`` overrides go through the same validation.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneclust import metrics
from tuneclust.data.registry import DATASETS, DataConfig, check_data
from tuneclust.plan import merge
from tuneclust.space import SearchSpace

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")


class SpecError(ValueError):
    """A spec is invalid. ``str(err)`` is the one line the CLI prints: ``file: field: what was expected``."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    epochs: int = Field(ge=1)
    """Number of training epochs (calls of the method's ``train_epoch``)."""
    eval_every: int = Field(default=1, ge=1)
    """Evaluate (and report, and checkpoint) every this many epochs; the last epoch is always evaluated."""


class SearcherSpec(_Strict):
    type: Literal["grid", "random", "optuna"] = "grid"
    seed: int = 0
    """Seeds the random searcher and Optuna's TPE sampler."""
    n_startup_trials: int = Field(default=10, ge=1)
    """Optuna: random trials per grid cell before TPE takes over."""


class _Sched(_Strict):
    time_attr: str = "epoch"
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


class Objective(_Strict):
    metric: str = "acc"
    mode: Literal["max", "min"] | None = None
    """Default: the metric's natural direction (max for acc/nmi/ari/silhouette/CH, min for DB and losses)."""


class Resources(_Strict):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    """Fractions share a GPU (0.25 = four trials per GPU); the trial caps its memory share accordingly."""


class MlflowSpec(_Strict):
    enabled: bool = True
    experiment: str | None = None
    """Default: the spec's name."""
    uri: str | None = None
    """Default: $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the working directory."""


class Tracking(_Strict):
    mlflow: MlflowSpec = MlflowSpec()


class Spec(_Strict):
    """A study: see the README's "Spec reference" for every key."""

    name: str = Field(pattern=NAME_PATTERN)
    method: str
    description: str | None = None
    data: DataConfig = DataConfig()
    budget: Budget
    config: dict[str, Any] = {}
    search: dict[str, SearchDim] = {}
    ablation: dict[str, dict[str, Any]] = {}
    searcher: SearcherSpec = SearcherSpec()
    num_samples: int = Field(default=1, ge=1)
    scheduler: SchedulerSpec = Fifo()
    objective: Objective = Objective()
    resources: Resources = Resources()
    max_concurrent: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=0, ge=0)
    """Retries of a crashed trial (from its last checkpoint) before it is recorded as errored."""
    tracking: Tracking = Tracking()
    storage: str = "./runs"
    """Results go to ``<storage>/<name>/``."""

    @field_validator("searcher", mode="before")
    @classmethod
    def _searcher_str(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_str(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("ablation")
    @classmethod
    def _arm_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for arm in v:
            if not re.match(NAME_PATTERN, str(arm)):
                raise ValueError(f"arm name {arm!r} must match {NAME_PATTERN}")
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
        return SearchSpace.of(self)

    def num_trials(self) -> int:
        return self.space.num_trials()

    def data_configs(self) -> list[DataConfig]:
        """The data config of every dataset the sweep uses (one per ``data.name`` value when it is searched)."""
        names = list(self.search["data.name"].value) if "data.name" in self.search else [self.data.name]
        return [DataConfig.model_validate({**self.data.model_dump(), "name": n}) for n in names]


# loading -----------------------------------------------------------------------------------------------
def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file. Raises :class:`SpecError` naming file and field."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError(source, "", f"cannot read the file ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(source, "", f"malformed YAML: {where}{problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(
            source, "", f"expected a mapping of spec keys at the top level, got {type(raw).__name__}"
        )
    for item in overrides or []:
        apply_override(raw, item, source)
    return validate_spec(raw, source)


def apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to the raw spec dict in place."""
    if "=" not in item:
        raise SpecError(source, f"--set {item}", "expected dotted.key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        raise SpecError(source, f"--set {key}", f"cannot parse value {text!r} as YAML") from None
    parts = key.strip().split(".")
    node = raw
    # "search.data.name" and "config.x" style paths: the search keys may themselves contain a dot
    if parts[0] == "search" and len(parts) > 2 and parts[1] == "data":
        parts = [parts[0], f"data.{parts[2]}", *parts[3:]]
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise SpecError(source, f"--set {key}", f"{p!r} is not a mapping")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def validate_spec(raw: dict[str, Any], source: str = "<spec>") -> Spec:
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(source, *_first_error(e)) from None
    _check_semantics(spec, source)
    return spec


def _first_error(e: ValidationError) -> tuple[str, str]:
    errs = e.errors()
    err = errs[0]
    loc = [
        str(p)
        for p in err["loc"]
        if not (isinstance(p, str) and p in ("fifo", "asha", "hyperband", "median", "pbt"))
    ]
    field = ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("union_tag_invalid",) and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return field, msg + more


def _check_semantics(spec: Spec, source: str) -> None:
    """Cross-field checks: names exist, config keys belong to the method, values have the method's types."""
    from tuneclust.methods import METHODS, get_method

    if spec.method not in METHODS:
        raise SpecError(
            source, "method", f"unknown method {spec.method!r}; expected one of {sorted(METHODS)}"
        )
    if spec.data.name not in DATASETS:
        raise SpecError(
            source, "data.name", f"unknown dataset {spec.data.name!r}; expected one of {sorted(DATASETS)}"
        )
    method = get_method(spec.method)
    fields = method.Config.model_fields
    data_fields = DataConfig.model_fields

    def check_cfg(cfg: dict[str, Any], field: str) -> None:
        try:
            method.Config.model_validate(cfg)
        except ValidationError as e:
            sub, msg = _first_error(e)
            raise SpecError(source, f"{field}.{sub}" if sub else field, msg) from None

    for key in spec.config:
        if key not in fields:
            raise SpecError(
                source, f"config.{key}", f"unknown {spec.method} config key; expected one of {sorted(fields)}"
            )
    check_cfg(merge(spec.config, {}, {}, {})[0], "config")
    for arm, over in spec.ablation.items():
        for key in over:
            if key not in fields:
                raise SpecError(source, f"ablation.{arm}.{key}", f"unknown {spec.method} config key")
            if key in spec.search:
                raise SpecError(
                    source, f"ablation.{arm}.{key}", "also a search key: an arm must not fix a searched key"
                )
        check_cfg(merge(spec.config, over, {}, {})[0], f"ablation.{arm}")
    for key, dim in spec.search.items():
        field = f"search.{key}"
        if key.startswith("data."):
            sub = key[5:]
            if sub not in data_fields:
                raise SpecError(
                    source, field, f"unknown data field {sub!r}; expected one of {sorted(data_fields)}"
                )
            for v in dim.probes():
                try:
                    DataConfig.model_validate({**spec.data.model_dump(), sub: v})
                except ValidationError as e:
                    raise SpecError(source, f"{field}.{dim.kind}", _first_error(e)[1]) from None
                if sub == "name" and v not in DATASETS:
                    raise SpecError(
                        source,
                        f"{field}.{dim.kind}",
                        f"unknown dataset {v!r}; expected one of {sorted(DATASETS)}",
                    )
            continue
        if key not in fields:
            raise SpecError(
                source, field, f"unknown {spec.method} config key; expected one of {sorted(fields)}"
            )
        for v in dim.probes():
            try:
                method.Config.model_validate(merge(spec.config, {}, {}, {key: v})[0])
            except ValidationError as e:
                raise SpecError(source, f"{field}.{dim.kind}", _first_error(e)[1]) from None
    if spec.searcher.type == "grid" and spec.space.sampled_dims():
        bad = next(iter(spec.space.sampled_dims()))
        raise SpecError(
            source, f"search.{bad}", "searcher grid needs grid/choice values; use searcher random or optuna"
        )
    known = set(metrics.LABELLED + metrics.LABEL_FREE + method.extra_metrics) | {"loss"}
    if spec.objective.metric not in known:
        raise SpecError(
            source,
            "objective.metric",
            f"unknown metric {spec.objective.metric!r}; expected one of {sorted(known)}",
        )
    sched = spec.scheduler
    if getattr(sched, "max_t", None) and sched.max_t > spec.budget.epochs and sched.time_attr == "epoch":
        raise SpecError(source, "scheduler.max_t", f"must be <= budget.epochs ({spec.budget.epochs})")
    if isinstance(sched, Asha) and sched.grace_period > (sched.max_t or spec.budget.epochs):
        raise SpecError(source, "scheduler.grace_period", "must be <= max_t")
    if isinstance(sched, Pbt):
        if spec.searcher.type == "optuna":
            raise SpecError(source, "scheduler.type", "pbt explores by itself: use searcher grid or random")
        for key in sched.hyperparam_mutations or []:
            if key not in spec.search:
                raise SpecError(source, "scheduler.hyperparam_mutations", f"{key!r} is not a search key")
        if not (sched.hyperparam_mutations or spec.space.sampled_dims()):
            raise SpecError(
                source,
                "scheduler.hyperparam_mutations",
                "pbt needs at least one non-grid search dimension to mutate",
            )
    if spec.resources.gpu > 1 and spec.resources.gpu != int(spec.resources.gpu):
        raise SpecError(
            source,
            "resources.gpu",
            "a fraction must be below 1 (several trials per GPU), else a whole number",
        )
    for data in spec.data_configs():
        try:
            check_data(data)
        except ValueError as e:
            raise SpecError(source, "data.root" if spec.data.root else "data", str(e)) from None


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
