"""DCCS (Zhao et al., ECCV 2020), Fig. 5: ACC, NMI and ARI against beta_Aug, one panel per dataset.

Usage: python analysis/dccs_beta_aug.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
Writes fig5_beta_aug.png (one panel per dataset: mean ± std over seeds of each metric against beta_Aug),
acc_vs_beta_aug.png (ACC, one line per dataset) and beta_aug.md/.csv/.tex (mean, std, median, count per dataset
and beta_Aug). Values at the last evaluation: no selection by labels. Several sweep folders (e.g. one per
dataset) are pooled; the dataset is ``data.name`` of each trial, else the sweep's spec.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import (
    analysis_cli,
    finished_or_exit,
    metrics_table,
    plot_metric_vs_param,
    plot_metrics_panels,
    write_table,
)

PARAM = "config.beta_aug"
METRICS = ("final.acc", "final.nmi", "final.ari")
PAPER_CHOICE = {"fmnist": 2.0, "cifar10": 4.0}
"""beta_Aug the paper picked (Sec. 4.1.3), marked in the panels."""


def table(done: pd.DataFrame, param: str = PARAM) -> pd.DataFrame:
    """One row per (dataset, ``param``): mean/std/median of each metric and the number of trials."""
    out = metrics_table(done, ["dataset", param], METRICS)
    return out.rename(columns={param: param.removeprefix("config."), "count": "trials"})


def study(
    sweep_dirs: list[Path],
    out: Path,
    param: str,
    figure: str,
    title: str,
    xlabel: str,
    marks: dict[str, float] | None = None,
) -> list[Path]:
    """The DCCS sensitivity figure (Fig. 5 here, Fig. 6 in dccs_style_dim.py) of ``param``: ``<figure>.png``
    (a panel per dataset), ``acc_vs_<p>.png`` and the ``<p>`` table, ``<p>`` being ``param`` without
    ``config.``."""
    done = finished_or_exit(sweep_dirs, [param])
    name = param.removeprefix("config.")
    written = [
        plot_metrics_panels(
            done, param, METRICS, out / f"{figure}.png", title=title, xlabel=xlabel, marks=marks
        )
    ]
    written.append(plot_metric_vs_param(done, param, "final.acc", out / f"acc_vs_{name}.png", hue="dataset"))
    return written + write_table(table(done, param), out / name)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    return study(sweep_dirs, out, PARAM, "fig5_beta_aug", "DCCS Fig. 5: {}", "beta_Aug", PAPER_CHOICE)


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
