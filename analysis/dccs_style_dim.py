"""DCCS (Zhao et al., ECCV 2020), Fig. 6: ACC, NMI and ARI against the dimension of zs, one panel per dataset.

Usage: python analysis/dccs_style_dim.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
(e.g. runs/dccs_style_dim runs/dccs_style_dim_fmnist: panels (b) CIFAR-10 and (a) Fashion-MNIST).
Writes fig6_style_dim.png (a panel per dataset: mean ± std over seeds of each metric against dim zs),
acc_vs_style_dim.png (ACC, one line per dataset) and style_dim.md/.csv/.tex (mean, std, median, count per
dataset and dim zs). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.report import analysis_cli, sibling_script

PARAM = "config.style_dim"


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    """Fig. 6 is drawn as Fig. 5 (analysis/dccs_beta_aug.py), against the dimension of zs."""
    fig5 = sibling_script(__file__, "dccs_beta_aug")
    return fig5.study(sweep_dirs, out, PARAM, "fig6_style_dim", "DCCS Fig. 6: {}", "dimension of zs")


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
