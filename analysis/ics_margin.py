"""ICS (Das, Ghosh, Bhowmick): ACC and NMI against the triplet margin of Eq. 5 (paper: 0.24 shallow, 0.3 deep).

Usage: python analysis/ics_margin.py <sweep_dir> [--out DIR]
Writes acc_vs_margin.png and nmi_vs_margin.png (mean ± std over seeds) and margin.md/.csv/.tex (mean, std,
median, count of ACC and NMI per margin). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tuneclust.report import load_results, plot_metric_vs_param, summarize, write_table

PARAM = "config.margin"


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran to the end and have an ACC."""
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    return done[done["final.acc"].notna()] if "final.acc" in done else done.iloc[0:0]


def table(done: pd.DataFrame) -> pd.DataFrame:
    """One row per margin: ACC and NMI mean/std/median and the number of trials."""
    parts = []
    for metric in ("final.acc", "final.nmi"):
        if metric in done:
            s = summarize(done, [PARAM], metric).set_index(PARAM)
            name = metric.removeprefix("final.")
            parts.append(s.rename(columns={c: f"{name}_{c}" for c in s.columns if c != "count"}))
    out = pd.concat(parts, axis=1)
    out = out.loc[:, ~out.columns.duplicated()].reset_index().sort_values(PARAM)
    return out.rename(columns={PARAM: "margin", "count": "trials"})


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--out", help="default: <sweep_dir>/analysis")
    args = p.parse_args(argv)
    out = Path(args.out or Path(args.sweep_dir) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    trials, _ = load_results(args.sweep_dir)
    done = finished(trials)
    if done.empty or PARAM not in done:
        raise SystemExit(f"{args.sweep_dir}: no finished trial with final.acc and {PARAM}")
    hue = "arm" if done["arm"].nunique() > 1 else None
    written = [
        plot_metric_vs_param(done, PARAM, m, out / f"{m.removeprefix('final.')}_vs_margin.png", hue=hue)
        for m in ("final.acc", "final.nmi")
        if m in done
    ]
    return written + write_table(table(done), out / "margin")


if __name__ == "__main__":
    for path in main():
        print(path)
