"""A spec's cross-field rules, each a small named check (:data:`RULES`), run by :func:`tuneclust.spec.validate_spec`
after the schema: the method and datasets exist, config keys belong to the method and have its types (through the
one method-config validation, :func:`tuneclust.plan.method_config`), the search, objective, scheduler and
resources fit together, the data is there. A rule raises :class:`Violation` (field, message); the spec layer turns
it into the one-line ``SpecError`` naming the file. Rules read the spec; they never import it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tuneclust import criteria, metrics
from tuneclust.data.registry import DATASETS, DataConfig, check_data
from tuneclust.plan import merge, method_config
from tuneclust.yamlsafe import clip, short

MAX_INT = 2**53
"""Largest integer a config value may have (exactly representable as a float)."""
MAX_BATCH = 65_536
MAX_IMAGE_SIZE = 1024
URI_SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql", "uc", "databricks-uc")
"""Tracking-URI schemes MLflow 3 accepts as a tracking store (``file:`` stores are refused by MLflow 3.x)."""


class Violation(ValueError):
    """A rule failed: ``field`` (dotted) and ``message``."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def one_of(value: Any, options: Any) -> str:
    """``expected one of ...`` (capped), led by the closest option when ``value`` looks like a typo of it."""
    import difflib

    names = sorted(str(o) for o in options)
    close = difflib.get_close_matches(str(value)[:100], names, n=1)
    listed = clip(", ".join(names), 160)
    return f"did you mean {close[0]!r}? expected one of {listed}" if close else f"expected one of {listed}"


def first_error(e: ValidationError) -> tuple[str, str]:
    """(field, message) of pydantic's first error, in the words a spec's author reads."""
    errs = e.errors()
    err = errs[0]
    loc = [
        str(p)
        for p in err["loc"]
        if not (isinstance(p, str) and p in ("fifo", "asha", "hyperband", "median", "pbt"))
    ]
    field = clip(".".join(loc), 100)
    msg = " ".join(err["msg"].removeprefix("Value error, ").split())[:200]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("union_tag_invalid",) and not isinstance(err["input"], dict):
        msg += f" (got {short(err['input'])})"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return field, msg + more


def method_class(spec: Any) -> Any:
    """The spec's method class (built-in, import path or entry point)."""
    from tuneclust.methods import UnknownMethodError, get_method, method_names
    from tuneclust.plugins import PluginError

    try:
        return get_method(spec.method)
    except UnknownMethodError:
        raise Violation(
            "method",
            f"unknown method {short(spec.method)}; {one_of(spec.method, method_names())}, "
            "or an import path package.module:Class",
        ) from None
    except PluginError as e:  # an import error, not a Method, a Config without defaults: one line
        raise Violation("method", str(e)) from None


def _known_dataset(name: Any, field: str) -> None:
    from tuneclust.data.plugins import is_plugin

    if name not in DATASETS and not is_plugin(str(name)):
        raise Violation(field, f"unknown dataset {short(name)}; {one_of(name, DATASETS)}")


def _numbers(cfg: dict[str, Any], field: str) -> None:
    """Upper bounds on method config values that the method's own types leave open."""
    for key, v in cfg.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, int) and abs(v) > MAX_INT:
            raise Violation(f"{field}.{key}", f"integer too large (|value| <= 2**53), got {short(v)}")
        if key == "batch_size" and v > MAX_BATCH:
            raise Violation(f"{field}.{key}", f"must be <= {MAX_BATCH}, got {short(v)}")


def _config_valid(spec: Any, cfg: dict[str, Any], field: str, nested: bool = True) -> None:
    _numbers(cfg, field)
    try:
        method_config(spec.method, cfg)
    except ValidationError as e:
        sub, msg = first_error(e)
        raise Violation(f"{field}.{sub}" if sub and nested else field, msg) from None


def _own_key(spec: Any, key: str, field: str, hint: bool = True) -> None:
    fields = method_class(spec).Config.model_fields
    if key not in fields:
        tail = f"; {one_of(key, fields)}" if hint else ""
        raise Violation(field, f"unknown {spec.method} config key{tail}")


def check_tracking_uri(uri: str) -> None:
    """Raise ValueError unless ``uri`` has a tracking-store scheme MLflow accepts (``file:`` is refused)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2://...
    if base == "file" or (not scheme and uri):
        raise ValueError(
            "MLflow 3 refuses file stores: use sqlite:///PATH/mlflow.db, http(s)://HOST:PORT or a database URI"
        )
    if base not in URI_SCHEMES:
        raise ValueError(f"unknown scheme {short(scheme, 30)}; expected one of {', '.join(URI_SCHEMES)}")
    if base == "sqlite" and not uri.startswith("sqlite:///"):
        raise ValueError("expected sqlite:///PATH (three slashes, then the database file)")


# --------------------------------------------------------------------------------------------- the rules
def method_and_data_exist(spec: Any) -> None:
    method_class(spec)
    _known_dataset(spec.data.name, "data.name")
    if (spec.data.image_size or 0) > MAX_IMAGE_SIZE:
        raise Violation("data.image_size", f"must be <= {MAX_IMAGE_SIZE}, got {spec.data.image_size}")


def config_fits_the_method(spec: Any) -> None:
    for key in spec.config:
        _own_key(spec, key, f"config.{clip(key, 60)}")
    _config_valid(spec, merge(spec.config, {}, {}, {})[0], "config")


def arms_fit_the_method(spec: Any) -> None:
    for arm, over in spec.ablation.items():
        for key in over:
            _own_key(spec, key, f"ablation.{arm}.{clip(key, 60)}", hint=False)
            if key in spec.search:
                raise Violation(
                    f"ablation.{arm}.{key}", "also a search key: an arm must not fix a searched key"
                )
        _config_valid(spec, merge(spec.config, over, {}, {})[0], f"ablation.{arm}")


def search_values_fit(spec: Any) -> None:
    """Every search key is a config key or ``data.<field>``; its probe values (ends and middle) are valid."""
    for key, dim in spec.search.items():
        field = f"search.{clip(key, 60)}"
        if not key.startswith("data."):
            _own_key(spec, key, field)
            for v in dim.probes():
                _config_valid(
                    spec, merge(spec.config, {}, {}, {key: v})[0], f"{field}.{dim.kind}", nested=False
                )
            continue
        sub, data_fields = key[5:], DataConfig.model_fields
        if sub not in data_fields:
            raise Violation(field, f"unknown data field {short(sub)}; {one_of(sub, data_fields)}")
        for v in dim.probes():
            try:
                DataConfig.model_validate({**spec.data.model_dump(), sub: v})
            except ValidationError as e:
                raise Violation(f"{field}.{dim.kind}", first_error(e)[1]) from None
            if sub == "name":
                _known_dataset(v, f"{field}.{dim.kind}")


def searcher_and_size(spec: Any) -> None:
    if spec.searcher.type == "grid" and spec.space.sampled_dims():
        bad = next(iter(spec.space.sampled_dims()))
        raise Violation(
            f"search.{bad}", "searcher grid needs grid/choice values; use searcher random or optuna"
        )
    trials = spec.num_trials()
    if trials > spec.max_trials:
        raise Violation(
            "num_samples",
            f"the sweep would run {trials} trials, more than max_trials ({spec.max_trials}); "
            "lower num_samples or the grid, or raise max_trials on purpose",
        )


def objective_is_known(spec: Any) -> None:
    extra = method_class(spec).extra_metrics
    known = set(metrics.LABELLED + metrics.LABEL_FREE + criteria.SELECTION + extra) | {"loss"}
    metric = spec.objective.metric
    if metric not in known:
        raise Violation("objective.metric", f"unknown metric {short(metric)}; {one_of(metric, known)}")


def selection_objective_has_its_inputs(spec: Any) -> None:
    """A cross-trial objective needs what it compares: seeds for ``seed_agreement``; ``pooled_silhouette`` is
    computed after the trials, so nothing may act on it while they run."""
    metric = spec.objective.metric
    if metric == "seed_agreement":
        seeds = spec.search.get("seed")
        if seeds is None or seeds.kind not in ("grid", "choice") or len(seeds.value) < 2:
            raise Violation(
                "objective.metric",
                "seed_agreement compares the seeds of each setting: add a seed grid with at least 2 values "
                "(search: {seed: {grid: [0, 1, 2]}})",
            )
    if metric in criteria.FINAL_ONLY and (spec.scheduler.type != "fifo" or spec.searcher.type == "optuna"):
        raise Violation(
            "objective.metric",
            f"{metric} is computed after the trials end (final selection only): use scheduler fifo and "
            "searcher grid or random, or an objective trials report (seed_agreement, consensus)",
        )


def scheduler_fits_the_budget(spec: Any) -> None:
    sched = spec.scheduler
    if getattr(sched, "max_t", None) and sched.max_t > spec.budget.epochs and sched.time_attr == "epoch":
        raise Violation("scheduler.max_t", f"must be <= budget.epochs ({spec.budget.epochs})")
    if sched.type == "asha" and sched.grace_period > (sched.max_t or spec.budget.epochs):
        raise Violation("scheduler.grace_period", "must be <= max_t")


def pbt_has_something_to_mutate(spec: Any) -> None:
    sched = spec.scheduler
    if sched.type != "pbt":
        return
    if spec.searcher.type == "optuna":
        raise Violation("scheduler.type", "pbt explores by itself: use searcher grid or random")
    for key in sched.hyperparam_mutations or []:
        if key not in spec.search:
            raise Violation("scheduler.hyperparam_mutations", f"{short(key)} is not a search key")
    if not (sched.hyperparam_mutations or spec.space.sampled_dims()):
        raise Violation(
            "scheduler.hyperparam_mutations", "pbt needs at least one non-grid search dimension to mutate"
        )


def gpu_share_packs(spec: Any) -> None:
    if spec.resources.gpu > 1 and spec.resources.gpu != int(spec.resources.gpu):
        raise Violation(
            "resources.gpu", "a fraction must be below 1 (several trials per GPU), else a whole number"
        )


def data_is_there(spec: Any) -> None:
    from tuneclust.plugins import PluginError

    for data in spec.data_configs():
        try:
            check_data(data)
        except PluginError as e:
            raise Violation("data.name", str(e)) from None
        except ValueError as e:
            raise Violation("data.root" if spec.data.root else "data", str(e)) from None


def unlabelled_data(spec: Any) -> list[str]:
    """The spec's datasets from user loaders that returned no labels (already loaded by validation)."""
    from tuneclust.data.plugins import is_plugin, probe

    return [
        d.name
        for d in spec.data_configs()
        if d.name not in DATASETS and is_plugin(d.name) and not probe(d).labelled
    ]


def labels_for_a_labelled_objective(spec: Any) -> None:
    """A dataset from a user loader without labels allows label-free objectives only (known once loaded)."""
    if spec.objective.metric not in metrics.LABELLED:
        return
    for name in unlabelled_data(spec):
        raise Violation(
            "objective.metric",
            f"{spec.objective.metric} needs labels and dataset {short(name)} has none: use a label-free "
            f"objective ({criteria.DEFAULT} is the default label-free one; see README 'Choosing without labels')",
        )


RULES = (
    method_and_data_exist,
    config_fits_the_method,
    arms_fit_the_method,
    search_values_fit,
    searcher_and_size,
    objective_is_known,
    selection_objective_has_its_inputs,
    scheduler_fits_the_budget,
    pbt_has_something_to_mutate,
    gpu_share_packs,
    data_is_there,
    labels_for_a_labelled_objective,
)
"""In order: the first that fails is the one line the user reads."""


def check(spec: Any) -> None:
    """Run every rule; raises :class:`Violation` at the first that fails."""
    for rule in RULES:
        rule(spec)
