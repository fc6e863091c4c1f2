"""The sweep's answer: which setting is best, at a stated budget, by how much, and can it be told apart.

Statistics only (no plotting): :func:`answer` reads a sweep's tables, stored spec and partitions (of a folder:
:func:`sweep_answer`; :func:`ranking` ranks its trials) and returns an :class:`Answer`; :mod:`tuneclust.report`
renders it and the sweep's end summary and MLflow parent print it.

- **Budgets.** A comparison is made at one epoch. Under early stopping that is the last evaluation every
  finished trial reached (``equal``), and separately the survivors at the full budget (``full``); without
  early stopping the two are the same. A trial stopped before the full budget is marked ``stopped``.
- **Settings, not trials.** Trials are grouped by their setting (arm and searched values without the seed):
  mean, std, n and a 95% t-interval over seeds, ranked by the objective; then the paired-by-seed difference
  between the best setting and the runner-up with its 95% interval (``distinguishable`` when it excludes 0).
- **Label-free criteria across trials** (:mod:`tuneclust.criteria`) are recomputed at the compared epoch from
  every trial's stored partition; with labels, :func:`trust_table` says how each would have chosen.
- **Parameter importance**: fANOVA (Optuna's evaluator) over the finished trials at the compared epoch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tuneclust import criteria, partitions, results
from tuneclust.metrics import LABEL_FREE, metric_mode
from tuneclust.results import SEED, equal_budget_epoch, finished, objective, param_column, rows_at
from tuneclust.spec import Spec
from tuneclust.storage import Location

TRUST_CRITERIA = (*criteria.SELECTION, *LABEL_FREE)
"""Label-free criteria the trust table evaluates (cross-trial ones first, then the own-embedding ones)."""


@dataclass
class View:
    """The finished trials compared at one epoch."""

    epoch: int
    what: str
    """``equal budget`` (every finished trial) or ``full budget`` (the survivors)."""
    trials: pd.DataFrame
    """One row per trial: identity, ``setting``, ``stopped``, and every metric's value at ``epoch``."""

    @property
    def label(self) -> str:
        n = len(self.trials)
        return f"{self.what}: epoch {self.epoch}, {n} trial{'s' if n != 1 else ''}"


@dataclass
class Answer:
    metric: str
    mode: str
    setting_columns: list[str]
    views: list[View]
    """The equal-budget view first, then the full-budget one when it differs."""
    settings: pd.DataFrame
    """Settings ranked at the equal budget (:func:`settings_table`)."""
    gap: dict[str, Any] = field(default_factory=dict)
    trust: pd.DataFrame | None = None
    importance: dict[str, float] = field(default_factory=dict)
    full_settings: pd.DataFrame | None = None
    """The survivors' settings ranked at the full budget (None when every trial ran it)."""
    selections: dict[str, str] = field(default_factory=dict)
    """The setting each cross-trial or reference criterion selects at the compared budget (:func:`selections`)."""

    @property
    def agreement(self) -> str:
        """Whether the label-free criteria select the same setting, in one line ("" when there is nothing to say)."""
        return agreement_text(self.selections, len(self.settings))

    @property
    def view(self) -> View:
        return self.views[0]


def setting_label(row: pd.Series | dict[str, Any], columns: list[str]) -> str:
    """``IDFD · tau=0.5``: the arm, then each searched value (the columns' short names)."""
    parts = []
    for c in columns:
        v = row[c]
        if c == "arm":
            parts.append(str(v))
        else:
            parts.append(f"{readable_param(c)}={v:g}" if isinstance(v, float) else f"{readable_param(c)}={v}")
    return " · ".join(parts) or "(one setting)"


def setting_columns(trials: pd.DataFrame, search_keys: list[str]) -> list[str]:
    """The columns that tell settings apart: ``arm`` when there are arms, each searched key but the seed."""
    cols = ["arm"] if "arm" in trials and trials["arm"].fillna("").nunique() > 1 else []
    for k in search_keys:
        if k != "seed" and param_column(k) in trials:
            cols.append(param_column(k))
    return cols


def values_at(trials: pd.DataFrame, epochs: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """The trials that reached ``epoch``, with each metric's value at that epoch (from ``epochs``)."""
    at = rows_at(epochs, epoch)
    at = at[[c for c in at.columns if c not in trials.columns]]
    out = trials[trials["trial_id"].isin(at.index)].copy()
    return out.join(at, on="trial_id")


def views(trials: pd.DataFrame, epochs: pd.DataFrame, full: int, cols: list[str]) -> list[View]:
    """The equal-budget view (the last epoch every finished trial reached) and, if it differs, the full one."""
    done = finished(trials)
    if done.empty or epochs.empty:
        return []
    done = done.assign(stopped=done["epochs_run"].astype(int) < full)
    done = done.assign(setting=[setting_label(r, cols) for _, r in done.iterrows()])
    equal = equal_budget_epoch(done)
    what = "equal budget" if done["stopped"].any() else "full budget"
    out = [View(equal, what, values_at(done, epochs, equal))]
    if equal < full:
        survivors = done[~done["stopped"]]
        if not survivors.empty:
            out.append(View(full, "full budget", values_at(survivors, epochs, full)))
    return out


def add_cross_trial(view: View, sweep_dir: Location | str) -> View:
    """Recompute the cross-trial criteria at the view's epoch from every compared trial's stored partition."""
    parts = partitions.read(sweep_dir, view.epoch, trials=list(view.trials["trial_id"]))
    if not parts:
        return view
    setting_of = dict(zip(view.trials["trial_id"], view.trials["setting"]))
    crit = criteria.agreement(parts, setting_of)
    crit["pooled_silhouette"] = criteria.pooled_silhouette(parts)
    df = view.trials.drop(columns=[c for c in criteria.CROSS_TRIAL if c in view.trials])
    return View(view.epoch, view.what, df.join(crit, on="trial_id"))


def _t(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def settings_table(df: pd.DataFrame, cols: list[str], metric: str, mode: str) -> pd.DataFrame:
    """One row per setting: ``setting``, its columns, ``n`` (seeds), ``mean``, ``std``, ``ci_low``/``ci_high``
    (95% t-interval of the mean), ``acc_mean``/``nmi_mean`` where known, ``stopped`` (trials stopped early);
    best first."""
    if metric not in df or df.empty:
        return pd.DataFrame()
    rows = []
    for label, g in df.groupby("setting", sort=False, dropna=False):
        v = g[metric].astype(float).dropna()
        n, mean = len(v), float(v.mean()) if len(v) else float("nan")
        std = float(v.std(ddof=1)) if n > 1 else float("nan")
        half = _t(n) * std / math.sqrt(n) if n > 1 else float("nan")
        row = {"setting": label, **{c: g[c].iloc[0] for c in cols}, "n": n, "mean": mean, "std": std}
        row.update({"ci_low": mean - half, "ci_high": mean + half})
        for extra in ("acc", "nmi"):
            if extra in g and extra != metric:
                row[f"{extra}_mean"] = float(g[extra].mean())
        row["stopped"] = int(g["stopped"].sum()) if "stopped" in g else 0
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("mean", ascending=mode == "min", na_position="last").reset_index(drop=True)


def paired_gap(df: pd.DataFrame, metric: str, mode: str, best: str, other: str) -> dict[str, Any]:
    """Best minus ``other`` (sign: positive = better), paired by seed: mean, 95% t-interval, pairs, and whether
    the interval excludes 0. Unpaired seeds are left out; fewer than 2 pairs give no interval."""
    sign = 1.0 if mode == "max" else -1.0
    a = df[df["setting"] == best].set_index(SEED)[metric] if SEED in df else pd.Series(dtype=float)
    b = df[df["setting"] == other].set_index(SEED)[metric] if SEED in df else pd.Series(dtype=float)
    common = a.index.intersection(b.index)
    d = (sign * (a.loc[common].astype(float) - b.loc[common].astype(float))).dropna()
    n = len(d)
    diff = float(d.mean()) if n else None
    out: dict[str, Any] = {"best": best, "runner_up": other, "pairs": n, "diff": diff}
    if n > 1:
        half = _t(n) * float(d.std(ddof=1)) / math.sqrt(n)
        out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
        out["distinguishable"] = bool(out["ci_low"] > 0)
    else:
        out.update(ci_low=None, ci_high=None, distinguishable=None)
    return out


def gap_text(gap: dict[str, Any], metric: str) -> str:
    if not gap or gap.get("diff") is None:
        return "best vs runner-up: no seeds in common to pair"
    head = f"best ({gap['best']}) - runner-up ({gap['runner_up']}): {metric} {gap['diff']:+.3f}"
    if gap.get("ci_low") is None:
        return f"{head} (1 seed pair: no interval; run more seeds to tell them apart)"
    verdict = (
        "the best is distinguishable from the runner-up"
        if gap["distinguishable"]
        else "NOT distinguishable from the runner-up at these seeds"
    )
    return f"{head} [{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}] over {gap['pairs']} paired seeds: {verdict}"


def _sign(name: str) -> float:
    """+1 for a criterion where larger is better, -1 where smaller is."""
    return 1.0 if metric_mode(name) == "max" else -1.0


def _signed_means(df: pd.DataFrame, name: str) -> pd.Series:
    """Per setting, the mean of criterion ``name``, signed so that larger is better."""
    return _sign(name) * df.groupby("setting", sort=False)[name].mean()


def selections(df: pd.DataFrame, names: tuple[str, ...] = criteria.SELECTION) -> dict[str, str]:
    """The setting each label-free criterion (present in ``df``) ranks best: what it would answer without labels."""
    out = {}
    for name in names:
        if name in df and df[name].notna().any():
            out[name] = str(_signed_means(df, name).idxmax())
    return out


def agreement_text(picks: dict[str, str], settings: int) -> str:
    """One line: whether the label-free criteria select the same setting ("" with fewer than two of either)."""
    if len(picks) < 2 or settings < 2:
        return ""
    by_setting: dict[str, list[str]] = {}
    for name, setting in picks.items():
        by_setting.setdefault(setting, []).append(name)
    if len(by_setting) == 1:
        return f"label-free criteria agree: {', '.join(picks)} all select {next(iter(by_setting))}"
    said = "; ".join(f"{', '.join(names)} select {setting}" for setting, names in by_setting.items())
    return f"label-free criteria disagree: {said}; without labels, treat the choice as uncertain"


def trust_table(df: pd.DataFrame, names: tuple[str, ...] = TRUST_CRITERIA) -> pd.DataFrame | None:
    """With labels: per label-free criterion, Spearman with ACC across settings (setting means) and across trials,
    the setting it would select, that setting's mean ACC, and the regret against the best setting's ACC."""
    if "acc" not in df or df["acc"].isna().all():
        return None
    acc = df.groupby("setting", sort=False)["acc"].mean()
    picks = selections(df, names)
    rows = []
    for name, choice in picks.items():
        rows.append(
            {
                "criterion": name,
                "spearman_settings": criteria.spearman(_signed_means(df, name).reindex(acc.index), acc),
                "spearman_trials": criteria.spearman(_sign(name) * df[name], df["acc"]),
                "selects": choice,
                "selected_acc": float(acc[choice]),
                "regret": float(acc.max() - acc[choice]),
            }
        )
    return pd.DataFrame(rows) if rows else None


def importance(
    df: pd.DataFrame, params: list[str], metric: str, mode: str, log: set[str]
) -> dict[str, float]:
    """fANOVA importance (Optuna's evaluator, seeded) of each parameter (the seed included, as a measure of
    noise) for ``metric`` over the trials of ``df``; empty with fewer than 4 trials or nothing varying."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    d = df.dropna(subset=[metric])
    params = [p for p in params if p in d and d[p].nunique(dropna=True) > 1]
    if len(d) < 4 or not params:
        return {}
    dists = {}
    for p in params:
        if pd.api.types.is_numeric_dtype(d[p]) and p != SEED:
            lo, hi = float(d[p].min()), float(d[p].max())
            dists[p] = FloatDistribution(lo, hi, log=p in log and lo > 0)
        else:
            dists[p] = CategoricalDistribution(sorted({str(v) for v in d[p]}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, r in d.iterrows():
        values = {p: (float(r[p]) if isinstance(dists[p], FloatDistribution) else str(r[p])) for p in params}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(r[metric])))
    result = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), normalize=True)
    return {p: float(v) for p, v in result.items()}


def log_scaled(spec: Spec, trials: pd.DataFrame) -> set[str]:
    """Parameter columns to draw on a log axis: searched log-uniformly, or positive and spanning >= 10x."""
    out = set()
    for key, dim in spec.search.items():
        col = param_column(key)
        if dim.kind == "loguniform":
            out.add(col)
        elif col in trials and pd.api.types.is_numeric_dtype(trials[col]) and key != "seed":
            v = trials[col].dropna()
            if len(v) and v.min() > 0 and v.max() / v.min() >= 10:
                out.add(col)
    return out


def answer(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    spec: Spec,
    sweep_dir: Location | str | None = None,
    metric: str | None = None,
) -> Answer | None:
    """The sweep's answer from its tables and stored spec (``sweep_dir``: where its partitions are); None when
    no trial finished with an evaluation."""
    metric, mode = objective(spec, metric)
    full = int(spec.budget.epochs or trials.get("epochs_run", pd.Series([0])).max())
    cols = setting_columns(trials, list(spec.search))
    vs = views(trials, epochs, full, cols)
    if not vs:
        return None
    if sweep_dir is not None:
        try:
            vs = [add_cross_trial(v, sweep_dir) for v in vs]
        except OSError as e:  # partitions unreadable: the answer without the cross-trial criteria
            print(f"warning: partitions of {sweep_dir} not read: {e}", file=sys.stderr)
    main = vs[0]
    table = settings_table(main.trials, cols, metric, mode)
    gap = {}
    if len(table) > 1:
        gap = paired_gap(main.trials, metric, mode, table["setting"][0], table["setting"][1])
    params = [*cols, SEED] if SEED in main.trials else cols
    params = [p for p in params if p != "arm"] + (["arm"] if "arm" in cols else [])
    imp = {}
    if metric in main.trials:
        try:
            imp = importance(main.trials, params, metric, mode, log_scaled(spec, trials))
        except Exception as e:  # noqa: BLE001 (importance is a summary: never lose the answer over it)
            print(f"warning: parameter importance not computed: {type(e).__name__}: {e}", file=sys.stderr)
    full_table = settings_table(vs[1].trials, cols, metric, mode) if len(vs) > 1 else None
    trust = trust_table(main.trials)
    return Answer(metric, mode, cols, vs, table, gap, trust, imp, full_table, selections(main.trials))


def sweep_answer(sweep_dir: str | Location, metric: str | None = None) -> Answer | None:
    """:func:`answer` of a sweep folder or URI (None when no trial finished)."""
    trials, epochs = results.load_results(sweep_dir)
    return answer(trials, epochs, results.spec_or_defaults(sweep_dir), sweep_dir, metric)


def ranking(sweep_dir: str | Location, metric: str | None = None) -> pd.DataFrame:
    """Trials ranked by the objective at the equal budget (the last evaluation every finished trial reached;
    ``<metric>@<epoch>``), then errored trials; ``stopped`` marks a trial an early-stopping scheduler ended
    before the full budget. The settings' ranking (seeds pooled) is :func:`answer`'s."""
    trials, epochs = results.load_results(sweep_dir)
    spec = results.spec_or_defaults(sweep_dir)
    metric, mode = objective(spec, metric)
    trials = trials.copy()
    full = spec.budget.epochs
    if full and "epochs_run" in trials:
        trials["stopped"] = (trials["epochs_run"] < full) & (trials.get("status") == "TERMINATED")
    at = equal_budget_epoch(trials)
    at_col = f"{metric}@{at}" if at is not None else None
    if at is not None and not epochs.empty and metric in epochs:
        trials[at_col] = trials["trial_id"].map(rows_at(epochs, at)[metric])
    params = results.searched_params(spec, trials)
    keep = ["trial_id", "arm", *params, "status", "epochs_run", "stopped", at_col, f"final.{metric}"]
    keep += ["final.acc", "final.nmi", "final.ari", "final.silhouette", f"best_label_selected.{metric}"]
    blank = "arm" in trials and (trials["arm"].fillna("") == "").all()
    keep = [c for c in dict.fromkeys(keep) if c and c in trials and not (c == "arm" and blank)]
    if "stopped" in keep and not trials["stopped"].any():
        keep.remove("stopped")
    out = trials[keep]
    key = at_col if at_col in out else f"final.{metric}"
    if key in out:
        out = out.sort_values(key, ascending=mode == "min", na_position="last")
    return out.rename(columns={c: c.removeprefix(results.CONFIG) for c in out.columns}).reset_index(drop=True)


def answer_text(ans: Answer, top: int = 10, compact: bool = False) -> str:
    """The answer in a few lines: the settings table at the compared budget, the best-vs-runner-up verdict,
    the survivors at the full budget, parameter importance and, with labels, the trust table. ``compact`` (the
    sweep's end summary): at most 5 settings and 3 survivors, and the trust table without CH and DB."""
    survivors = 3 if compact else top
    top = min(top, 5) if compact else top
    lines = [f"settings ranked by {ans.metric} ({ans.mode}) at {ans.view.label}:"]
    lines.append(plain_table(settings_display(ans.settings).head(top)))
    lines.append(gap_text(ans.gap, ans.metric))
    if ans.agreement:
        lines.append(ans.agreement)
    if ans.full_settings is not None and not ans.full_settings.empty:
        lines.append(f"survivors at {ans.views[1].label}:")
        lines.append(plain_table(settings_display(ans.full_settings).head(survivors)))
    if ans.importance:
        imp = ", ".join(f"{readable_param(k)} {v:.2f}" for k, v in ans.importance.items())
        lines.append(f"parameter importance (fANOVA, {ans.metric}; the seed's share is noise): {imp}")
    if ans.trust is not None:
        trust = ans.trust
        if compact:
            trust = trust[trust["criterion"].isin([*criteria.SELECTION, "silhouette"])]
        lines.append("can label-free selection be trusted here? (Spearman with ACC across settings)")
        lines.append(plain_table(trust))
    return "\n".join(lines)


def readable_param(col: str) -> str:
    return col.split(".", 1)[1] if col.startswith(("config.", "data.")) else col


def settings_display(table: pd.DataFrame) -> pd.DataFrame:
    """The settings table as printed: setting, n, mean ± std, 95% interval, ACC/NMI means, stopped."""
    if table.empty:
        return table
    out = pd.DataFrame({"setting": table["setting"], "n": table["n"]})
    out["mean"] = table["mean"]
    out["std"] = table["std"]
    out["95% CI"] = [
        f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "n/a"
        for lo, hi in zip(table["ci_low"], table["ci_high"])
    ]
    for extra in ("acc_mean", "nmi_mean"):
        if extra in table:
            out[extra] = table[extra]
    if table["stopped"].any():
        out["stopped"] = table["stopped"]
    return out


def plain_table(df: pd.DataFrame, precision: int = 3) -> str:
    """``df`` as aligned plain text for a terminal (no index; floats to ``precision``)."""
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", precision):
        return df.to_string(index=False)


def answer_metrics(ans: Answer) -> dict[str, float]:
    """Numbers of the answer as MLflow parent metrics: ``importance.<param>``, ``trust.<criterion>.spearman``
    and ``.regret``, ``answer.budget_epoch``, the best-vs-runner-up difference and its interval."""
    out: dict[str, float] = {"answer.budget_epoch": float(ans.view.epoch)}
    out.update({f"importance.{readable_param(k)}": v for k, v in ans.importance.items()})
    if ans.trust is not None:
        for r in ans.trust.itertuples(index=False):
            out[f"trust.{r.criterion}.spearman"] = r.spearman_settings
            out[f"trust.{r.criterion}.regret"] = r.regret
    for k in ("diff", "ci_low", "ci_high"):
        if ans.gap.get(k) is not None:
            out[f"answer.best_minus_runner_up.{k}"] = float(ans.gap[k])
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}
