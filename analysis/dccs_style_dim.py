"""DCCS (Zhao et al., ECCV 2020), Fig. 6: ACC, NMI and ARI against the dimension of zs, one panel per dataset.

Usage: python analysis/dccs_style_dim.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
(e.g. runs/dccs_style_dim runs/dccs_style_dim_fmnist: panels (b) CIFAR-10 and (a) Fashion-MNIST).

Writes fig6_style_dim.png/.svg (a panel per dataset: mean ± std over seeds of each metric against dim zs, the
paper's setting marked), acc_vs_style_dim.png/.svg (ACC, one line per dataset) and style_dim.md/.csv/.tex (mean,
std, median, count per dataset and dim zs). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, sensitivity_study

PAPER = Paper("Zhao et al. 2020, Sec. 4.1.3", choice={"fmnist": 50, "cifar10": 50})
"""The dimension of zs the paper trains with (zc = 10, zs = 50) on both datasets; Fig. 6 is a curve only."""


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    return sensitivity_study(
        sweep_dirs, out, "config.style_dim", "fig6_style_dim", "DCCS Fig. 6: {}", "dimension of zs", PAPER
    )


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
