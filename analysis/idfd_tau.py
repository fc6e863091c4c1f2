"""IDFD Fig. 3 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.1): ACC of ID against the temperature tau.

The paper plots, per tau, the mean and standard deviation of ACC over the last 500 of 2000 epochs. We take each
trial's evaluations in that window (a trial shorter than 2000 epochs: the last quarter of its evaluations, at
least one), pool them over seeds and report mean/std/median per tau, plus the spread of the per-seed means.
No selection by labels: every evaluation in the window counts. Writes ``fig3_acc_vs_tau`` (.md/.csv/.tex table,
.png/.svg figure with the paper's chosen tau = 1 marked).

Usage: python analysis/idfd_tau.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from tuneclust.papers import Paper, analysis_cli, window_study

PAPER = Paper("Tao et al. 2021, Fig. 3", choice={"tau": 1.0})
"""Fig. 3 is a curve only (no table); the paper continues with tau = 1 ("ID tuned")."""


def main(argv: list[str] | None = None) -> int:
    title = "IDFD Fig. 3: ID, ACC over the final window against tau"
    return analysis_cli(
        __doc__,
        lambda d, out: window_study(d[0], out, "tau", "fig3_acc_vs_tau", PAPER, title),
        argv,
        multi=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
