"""ICS (Das, Ghosh, Bhowmick): ACC and NMI against the triplet margin of Eq. 5 (paper: 0.24 shallow, 0.3 deep).

Usage: python analysis/ics_margin.py <sweep_dir> [--out DIR]
Writes acc_vs_margin.png and nmi_vs_margin.png (mean ± std over seeds) and margin.md/.csv/.tex (mean, std,
median, count of ACC and NMI per margin). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.papers import Paper, analysis_cli, finished_or_exit
from tuneclust.render import metrics_table, plot_metric_vs_param, write_table

PARAM = "config.margin"
PAPER = Paper("Das et al., Sec. 4.3", choice={"shallow": 0.24, "deep": 0.3})
"""The margin the paper uses per network (``config.arch``); it reports no curve over the margin."""


def table(done: pd.DataFrame) -> pd.DataFrame:
    """One row per margin: ACC and NMI mean/std/median and the number of trials."""
    out = metrics_table(done, [PARAM], ["final.acc", "final.nmi"])
    return out.rename(columns={PARAM: "margin", "count": "trials"})


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs, [PARAM])
    hue = "arm" if done["arm"].nunique() > 1 else None
    arch = done["config.arch"].iloc[0] if "config.arch" in done else "shallow"
    written = []
    for m in ("final.acc", "final.nmi"):
        if m in done:
            png = plot_metric_vs_param(
                done, PARAM, m, out / f"{m.removeprefix('final.')}_vs_margin.png", hue=hue,
                mark_x=PAPER.choice.get(arch), mark_label=f"paper's margin, {arch} net ({PAPER.source})",
            )  # fmt: skip
            written += [png, png.with_suffix(".svg")]
    return written + write_table(table(done), out / "margin")


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
