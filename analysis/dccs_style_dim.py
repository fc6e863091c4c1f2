"""DCCS (Zhao et al., ECCV 2020), Fig. 6: ACC, NMI and ARI against the dimension of zs, one panel per dataset.

Usage: python analysis/dccs_style_dim.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
(e.g. runs/dccs_style_dim runs/dccs_style_dim_fmnist: panels (b) CIFAR-10 and (a) Fashion-MNIST).
Writes fig6_style_dim.png (a panel per dataset: mean ± std over seeds of each metric against dim zs),
acc_vs_style_dim.png (ACC, one line per dataset) and style_dim.md/.csv/.tex (mean, std, median, count per
dataset and dim zs). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tuneclust.report import load_results, load_spec_dict, plot_metric_vs_param, summarize, write_table

PARAM = "config.style_dim"
METRICS = ("final.acc", "final.nmi", "final.ari")


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
    """One row per (dataset, dim zs): mean/std/median of each metric and the number of trials."""
    parts = []
    for metric in METRICS:
        if metric in done:
            s = summarize(done, ["dataset", PARAM], metric).set_index(["dataset", PARAM])
            name = metric.removeprefix("final.")
            parts.append(s.rename(columns={c: f"{name}_{c}" for c in s.columns if c != "count"}))
    out = pd.concat(parts, axis=1)
    out = out.loc[:, ~out.columns.duplicated()].reset_index().sort_values(["dataset", PARAM])
    return out.rename(columns={PARAM: "style_dim", "count": "trials"})


def plot_panels(done: pd.DataFrame, path: Path) -> Path:
    """Fig. 6: a panel per dataset, ACC/NMI/ARI (mean ± std over seeds) against dim zs."""
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
        ax.set(
            title=f"DCCS Fig. 6: {name}",
            xlabel="dimension of zs",
            ylabel="score (last evaluation)",
            ylim=(0, 1),
        )
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
    written = [plot_panels(done, out / "fig6_style_dim.png")]
    written.append(
        plot_metric_vs_param(done, PARAM, "final.acc", out / "acc_vs_style_dim.png", hue="dataset")
    )
    return written + write_table(table(done), out / "style_dim")


if __name__ == "__main__":
    for path in main():
        print(path)
