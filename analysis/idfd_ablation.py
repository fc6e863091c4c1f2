"""IDFD Table 1 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.1): ID(original), ID(tuned), IDFO and IDFD per dataset.

Reads one or more sweep folders (e.g. idfd_ablation plus idfd_ablation_stl10 run with IDFO's alpha 0.5, see the
YAML) and writes arms x datasets tables of ACC/NMI/ARI in %, mean ± std over seeds:
- ``table1_final``: the value at each trial's last evaluation (no label selection);
- ``table1_best_label_selected``: the best evaluation of each trial chosen WITH the labels (the paper's "best
  performances"; an oracle, marked so);
- ``table1_long``: the same numbers unformatted; ``table1_paper``: the paper's Table 1 rows, for comparison.
An arm run with several alphas (IDFO: 10 on CIFAR, 0.5 on STL-10/ImageNet) gets one row per alpha.

Usage: python analysis/idfd_ablation.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]  (default: first SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import analysis_cli, load_trials, summarize, write_table

ARMS = ["ID_original", "ID_tuned", "IDFO", "IDFD"]
METRICS = ["acc", "nmi", "ari"]
DATASETS = ["cifar10", "cifar100", "stl10", "imagenet10", "imagenet_dog", "imagefolder", "digits"]
PAPER = pd.DataFrame(  # Table 1 of the paper, %: ACC, NMI, ARI per dataset
    {
        "arm": ARMS,
        "cifar10": ["44.0/30.9/22.1", "77.6/68.2/61.6", "82.8/71.4/67.9", "81.5/71.1/66.3"],
        "cifar100": ["26.7/22.1/10.8", "40.9/39.2/24.3", "42.5/43.2/24.4", "42.5/42.6/26.4"],
        "stl10": ["51.4/36.2/28.5", "72.6/64.0/52.6", "75.6/63.6/56.9", "75.6/64.3/57.5"],
        "imagenet10": ["63.2/47.8/42.0", "93.7/86.7/86.5", "94.2/87.1/87.6", "95.4/89.8/90.1"],
        "imagenet_dog": ["36.5/24.8/17.2", "47.6/47.0/33.5", "61.2/57.9/41.4", "59.1/54.6/41.3"],
    }
)


def row_labels(df: pd.DataFrame, row: str, vary: str = "config.alpha") -> pd.Series:
    """``row`` value, with ``(alpha=...)`` appended where one arm was run with several values of ``vary``."""
    if vary not in df:
        return df[row].astype(str)
    n = df.groupby(row)[vary].transform("nunique")
    return (
        df[row]
        .astype(str)
        .where(
            n <= 1, df[row].astype(str) + " (" + vary.split(".")[-1] + "=" + df[vary].map("{:g}".format) + ")"
        )
    )


def _order(values: list[str], preferred: list[str]) -> list[str]:
    rank = {v: i for i, v in enumerate(preferred)}
    return sorted(values, key=lambda v: (rank.get(v.split(" (")[0], len(rank)), v))


def wide_table(
    df: pd.DataFrame, row: str, col: str, prefix: str, row_order: list[str], col_order: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(formatted wide table rows x (col, metric) with "mean ± std" in %, long table of the numbers)."""
    longs = []
    for m in METRICS:
        if f"{prefix}.{m}" in df:
            s = summarize(df, [row, col], f"{prefix}.{m}").assign(metric=m)
            longs.append(s)
    if not longs:
        return pd.DataFrame(), pd.DataFrame()
    long = pd.concat(longs, ignore_index=True)
    cell = lambda r: f"{100 * r['mean']:.1f}" + (f" ± {100 * r['std']:.1f}" if r["count"] > 1 else "")  # noqa: E731
    long["cell"] = long.apply(cell, axis=1)
    wide = long.pivot_table(index=row, columns=[col, "metric"], values="cell", aggfunc="first")
    cols = [
        (c, m) for c in _order(list(long[col].unique()), col_order) for m in METRICS if (c, m) in wide.columns
    ]
    wide = wide.reindex(index=_order(list(wide.index), row_order), columns=cols)
    wide = wide.fillna("-")
    wide.columns = [f"{c} {m.upper()}" for c, m in wide.columns]
    n = df.groupby(row).size().rename("trials")
    wide = wide.join(n).reset_index()
    return wide.rename(columns={row: "arm"}), long.drop(columns="cell")


def write_wide_tables(
    trials: pd.DataFrame,
    row: str,
    col: str,
    row_order: list[str],
    col_order: list[str],
    out: Path,
    stem: str,
    long_names: dict[str, str],
) -> list[Path]:
    """``<stem>_final`` and ``<stem>_best_label_selected`` (the label-selected oracle, marked so) wide tables
    and ``<stem>_long`` (the final numbers, columns renamed by ``long_names``)."""
    written = []
    for prefix in ("final", "best_label_selected"):
        wide, long = wide_table(trials, row, col, prefix, row_order, col_order)
        if wide.empty:
            continue
        if prefix != "final":
            wide = wide.rename(columns={"arm": "arm (best evaluation, LABEL-SELECTED)"})
        written += write_table(wide, out / f"{stem}_{prefix}")
        if prefix == "final":
            written += write_table(long.rename(columns=long_names), out / f"{stem}_long")
    return written


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    trials["row"] = row_labels(trials, "arm")
    written = write_table(PAPER, out / "table1_paper")
    return written + write_wide_tables(
        trials, "row", "dataset", ARMS, DATASETS, out, "table1", {"row": "arm"}
    )


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
