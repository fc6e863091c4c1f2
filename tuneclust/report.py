"""The sweep's report (``tuneclust report``, the sweep's end): :func:`write_report` writes the answer, the trials'
ranking, metric-vs-parameter plots at the stated epoch, the ablation table and the chosen trial's figures;
:func:`ranking_text` is what ``tuneclust report`` prints, :func:`answer_markdown` the MLflow parent's description.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tuneclust import answer, partitions, render
from tuneclust.metrics import cluster_accuracy
from tuneclust.results import SEED, load_results, searched_params, spec_or_defaults
from tuneclust.spec import Spec
from tuneclust.storage import Location, locate


def ranking_text(sweep_dir: str | Location, metric: str | None = None, top: int = 20) -> str:
    """The sweep's answer (:func:`tuneclust.answer.answer_text`: settings at equal budget, best vs runner-up,
    importance, trust table), then the trials' ranking."""
    ans = answer.sweep_answer(sweep_dir, metric)
    df = answer.ranking(sweep_dir, metric).head(top)
    note = ""
    if any(c.startswith("best_label_selected.") for c in df.columns):
        note = "\n(best_label_selected.*: best over evaluations chosen WITH the labels — an oracle, not a result)"
    trials = "trials:\n" + answer.plain_table(df, 4) + note
    return f"{answer.answer_text(ans, top)}\n{trials}" if ans is not None else trials


def answer_markdown(ans: answer.Answer, top: int = 20) -> str:
    """The answer for the MLflow parent's description: the settings, the verdict, importance, trust."""
    parts = [
        f"Settings ranked by `{ans.metric}` at **{ans.view.label}**:",
        render.markdown_table(answer.settings_display(ans.settings).head(top), 3),
        answer.gap_text(ans.gap, ans.metric),
        *([ans.agreement] if ans.agreement else []),
    ]
    if ans.full_settings is not None and not ans.full_settings.empty:
        parts += [
            f"Survivors at **{ans.views[1].label}**:",
            render.markdown_table(answer.settings_display(ans.full_settings).head(top), 3),
        ]
    if ans.importance:
        parts.append(
            "Parameter importance (fANOVA; the seed's share is noise): "
            + ", ".join(f"{answer.readable_param(k)} {v:.2f}" for k, v in ans.importance.items())
        )
    if ans.trust is not None:
        parts += [
            "Can label-free selection be trusted here (Spearman with ACC across settings)?",
            render.markdown_table(ans.trust, 3),
        ]
    return "\n\n".join(parts)


def write_report(
    sweep_dir: str | Location,
    metric: str | None = None,
    out: str | Path | None = None,
    ans: answer.Answer | None = None,
) -> list[Path]:
    """The answer (``answer.md``; settings ranked at equal budget with seed intervals, the survivors at the full
    budget, ``trust`` and ``importance`` tables), the trials' ranking, one metric-vs-parameter plot per searched
    parameter at the stated epoch, an ablation table if arms, and the chosen trial's confusion matrix and
    cluster sizes from its stored partition. ``ans``: the sweep's answer if the caller has it already."""
    here, spec = locate(sweep_dir), spec_or_defaults(sweep_dir)
    if out is None:  # next to the tables; a sweep on object storage reports into ./<name>-report
        out = Path(here.path) / "report" if here.local else Path(f"{here.name}-report")
    out = Path(out)
    metric = metric or spec.objective.metric
    written = render.write_table(answer.ranking(sweep_dir, metric), out / "ranking")
    ans = ans if ans is not None else answer.sweep_answer(sweep_dir, metric)
    if ans is None:
        return written
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer.md").write_text(f"```\n{answer.answer_text(ans)}\n```\n")
    written.append(out / "answer.md")
    written += render.write_table(answer.settings_display(ans.settings), out / "settings")
    if ans.full_settings is not None:
        full = answer.settings_display(ans.full_settings)
        written += render.write_table(full, out / "settings_full_budget")
    if ans.trust is not None:
        written += render.write_table(ans.trust, out / "trust")
    if ans.importance:
        imp = pd.DataFrame({"parameter": list(ans.importance), "importance": list(ans.importance.values())})
        written += render.write_table(imp, out / "importance")
    params = [p for p in searched_params(spec, load_results(sweep_dir)[0]) if p != SEED]
    written += _parameter_plots(ans, spec, params, out)
    done = ans.view.trials
    if done["arm"].nunique() > 1:
        cols = list(dict.fromkeys(c for c in ("acc", "nmi", "ari", ans.metric) if c in done))
        written += render.write_table(render.ablation_table(done, cols), out / "ablation")
    return written + chosen_trial_figures(ans, here, out)


def _parameter_plots(ans: answer.Answer, spec: Spec, params: list[str], out: Path) -> list[Path]:
    """One plot of the metric against each searched parameter per view (``_full_budget`` for the survivors)."""
    written: list[Path] = []
    for view in ans.views:
        done = view.trials
        if ans.metric not in done or done.empty:
            continue
        hue = "arm" if done["arm"].nunique() > 1 else None
        suffix = "" if view is ans.views[0] else "_full_budget"
        for p in params:
            path = out / f"{ans.metric}_vs_{render.readable(p)}{suffix}.png"
            log = p in answer.log_scaled(spec, done)
            png = render.plot_metric_vs_param(done, p, ans.metric, path, hue, log, title=f"at {view.label}")
            written += [png, png.with_suffix(".svg")]
    return written


def chosen_trial_figures(ans: answer.Answer, sweep_dir: Location, out: Path) -> list[Path]:
    """The chosen trial (the best seed of the best setting at the compared epoch): its cluster sizes and, with
    labels, its confusion matrix (clusters matched to classes), from its stored partition of the subset."""
    from scipy.optimize import linear_sum_assignment

    view, best = ans.view, ans.settings["setting"][0] if not ans.settings.empty else None
    rows = view.trials[view.trials["setting"] == best]
    if rows.empty or ans.metric not in rows:
        return []
    row = rows.sort_values(ans.metric, ascending=ans.mode == "min").iloc[0]
    parts = partitions.read(sweep_dir, view.epoch, trials=[row["trial_id"]], embeddings=False)
    subset = partitions.read_subset(sweep_dir)
    if not parts or subset is None:
        return []
    assignment = parts[row["trial_id"]].assignment.astype(np.int64)
    labels = subset.get("labels")
    what = f"trial {row['trial_id']} ({best}, seed {row.get(SEED, '?')}), epoch {view.epoch}"
    n_panels = 2 if labels is not None else 1
    fig, axes = render.pyplot().subplots(1, n_panels, figsize=(5 * n_panels, 4), squeeze=False)
    sizes = np.bincount(assignment)
    axes[0][0].bar(np.arange(len(sizes)), np.sort(sizes)[::-1], color="tab:blue")
    axes[0][0].set(xlabel="cluster (largest first)", ylabel="images", title="cluster sizes")
    if labels is not None:
        k = int(max(assignment.max(), labels.max()) + 1)
        m = np.zeros((k, k), dtype=np.int64)
        np.add.at(m, (assignment, labels), 1)
        r, c = linear_sum_assignment(-m)
        axes[0][1].imshow(m[r[np.argsort(c)]], cmap="Blues")  # rows: the cluster matched to class 0, 1, ...
        acc = cluster_accuracy(labels, assignment)
        axes[0][1].set(xlabel="class", ylabel="cluster (matched to class)", title=f"ACC {acc:.3f}")
    fig.suptitle(f"{what}, {len(assignment)} images of the shared subset", fontsize=9)
    png = render.save_figure(fig, out / "chosen_trial.png")
    return [png, png.with_suffix(".svg")]
