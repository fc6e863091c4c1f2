"""DCCS (Zhao et al., ECCV 2020), Fig. 5: ACC, NMI and ARI against beta_Aug, one panel per dataset.

Usage: python analysis/dccs_beta_aug.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
Writes fig5_beta_aug.png (one panel per dataset: mean ± std over seeds of each metric against beta_Aug),
acc_vs_beta_aug.png (ACC, one line per dataset) and beta_aug.md/.csv/.tex (mean, std, median, count per dataset
and beta_Aug). Values at the last evaluation: no selection by labels. Several sweep folders (e.g. one per
dataset) are pooled; the dataset is ``data.name`` of each trial, else the sweep's spec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tuneclust.report import load_results, load_spec_dict, plot_metric_vs_param, summarize, write_table

PARAM = "config.beta_aug"
METRICS = ("final.acc", "final.nmi", "final.ari")
PAPER_CHOICE = {"fmnist": 2.0, "cifar10": 4.0}
"""beta_Aug the paper picked (Sec. 4.1.3), marked in the panels."""


def load(sweep_dirs: list[str]) -> pd.DataFrame:
    """Finished trials with an ACC from every folder, with a ``dataset`` column."""
    frames = []
    for d in sweep_dirs:
        trials, _ = load_results(d)
        spec_name = (load_spec_dict(d).get("data") or {}).get("name") or Path(d).name
        if "data.name" not in trials:
            trials["data.name"] = spec_name
        frames.append(trials.assign(dataset=trials["data.name"].fillna(spec_name)))
    df = pd.concat(frames, ignore_index=True)
    done = df[df["status"] == "TERMINATED"] if "status" in df else df
    return done[done["final.acc"].notna()] if "final.acc" in done else done.iloc[0:0]


def table(done: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, beta_Aug): mean/std/median of each metric and the number of trials."""
    parts = []
    for metric in METRICS:
        if metric in done:
            s = summarize(done, ["dataset", PARAM], metric).set_index(["dataset", PARAM])
            name = metric.removeprefix("final.")
            parts.append(s.rename(columns={c: f"{name}_{c}" for c in s.columns if c != "count"}))
    out = pd.concat(parts, axis=1)
    out = out.loc[:, ~out.columns.duplicated()].reset_index().sort_values(["dataset", PARAM])
    return out.rename(columns={PARAM: "beta_aug", "count": "trials"})


def plot_panels(done: pd.DataFrame, path: Path) -> Path:
    """Fig. 5: a panel per dataset, ACC/NMI/ARI (mean ± std over seeds) against beta_Aug."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(done["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.5), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        sub = done[done["dataset"] == name]
        for metric in METRICS:
            if metric in sub:
                s = summarize(sub, [PARAM], metric).sort_values(PARAM)
                label = metric.removeprefix("final.").upper()
                ax.errorbar(s[PARAM], s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=label)
        if name in PAPER_CHOICE:
            ax.axvline(PAPER_CHOICE[name], color="grey", ls=":", label="paper's choice")
        ax.set(title=f"DCCS Fig. 5: {name}", xlabel="beta_Aug", ylabel="score (last evaluation)", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", nargs="+")
    p.add_argument("--out", help="default: <first sweep_dir>/analysis")
    args = p.parse_args(argv)
    out = Path(args.out or Path(args.sweep_dir[0]) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    done = load(args.sweep_dir)
    if done.empty or PARAM not in done:
        raise SystemExit(f"{args.sweep_dir}: no finished trial with final.acc and {PARAM}")
    written = [plot_panels(done, out / "fig5_beta_aug.png")]
    written.append(plot_metric_vs_param(done, PARAM, "final.acc", out / "acc_vs_beta_aug.png", hue="dataset"))
    return written + write_table(table(done), out / "beta_aug")


if __name__ == "__main__":
    for path in main():
        print(path)
