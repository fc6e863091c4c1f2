"""ICS (Das, Ghosh, Bhowmick), Fig. 5: ACC of the model with terms of Eq. 7 removed (ablation arms).

Usage: python analysis/ics_ablation.py <sweep_dir> [--out DIR]
Writes fig5_ablation.png/.svg (bar per arm, mean ± std of ACC over seeds, the paper's model shaded) and ablation.md/.csv/.tex (ACC, NMI, ARI
per arm, mean ± std). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, bar_chart, finished_or_exit
from tuneclust.render import ablation_table, write_table
from tuneclust.results import arm_order

PAPER = Paper("Das et al., Fig. 5a", choice={"arm": "full"})
"""Fig. 5 gives bars without printed numbers; the paper's model is the full loss (arm ``full``), shaded."""


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs)
    order = arm_order(sweep_dirs)
    metrics = [c for c in ("final.acc", "final.nmi", "final.ari") if c in done]
    table = ablation_table(done, metrics, arm_order=order)
    png = bar_chart(done, "arm", "final.acc", out / "fig5_ablation.png", order=order, paper=PAPER,
                    title="ICS Fig. 5: ablation of the loss terms")  # fmt: skip
    return [png, png.with_suffix(".svg"), *write_table(table, out / "ablation")]


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
