"""IDFD Fig. 4 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.1): ACC of IDFD (tau = 1) against tau2.

Same summary as Fig. 3 (analysis/idfd_tau.py, whose functions this reuses): per tau2, mean/std of ACC over the
last 500 of 2000 epochs (shorter runs: the last quarter of the evaluations), pooled over seeds.

Usage: python analysis/idfd_tau2.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from tuneclust.report import analysis_cli, sibling_script


def main(argv: list[str] | None = None) -> int:
    study = sibling_script(__file__, "idfd_tau").study
    return analysis_cli(
        __doc__, lambda dirs, out: study(dirs[0], out, "tau2", "fig4_acc_vs_tau2"), argv, multi=False
    )


if __name__ == "__main__":
    raise SystemExit(main())
