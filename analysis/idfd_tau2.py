"""IDFD Fig. 4 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.1): ACC of IDFD (tau = 1) against tau2.

Same summary as Fig. 3 (analysis/idfd_tau.py): per tau2, mean/std of ACC over the last 500 of 2000 epochs
(shorter runs: the last quarter of the evaluations), pooled over seeds. Writes ``fig4_acc_vs_tau2`` (table and
.png/.svg figure with the paper's tau2 = 2 marked).

Usage: python analysis/idfd_tau2.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from tuneclust.papers import Paper, analysis_cli, window_study

PAPER = Paper("Tao et al. 2021, Fig. 4", choice={"tau2": 2.0})
"""Fig. 4 is a curve only; the paper's IDFD uses tau2 = 2."""


def main(argv: list[str] | None = None) -> int:
    title = "IDFD Fig. 4: IDFD, ACC over the final window against tau2"
    return analysis_cli(
        __doc__,
        lambda d, out: window_study(d[0], out, "tau2", "fig4_acc_vs_tau2", PAPER, title),
        argv,
        multi=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
