"""IDFD Fig. 4 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.1): ACC of IDFD (tau = 1) against tau2.

Same summary as Fig. 3 (analysis/idfd_tau.py, whose functions this reuses): per tau2, mean/std of ACC over the
last 500 of 2000 epochs (shorter runs: the last quarter of the evaluations), pooled over seeds.

Usage: python analysis/idfd_tau2.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _sibling(name: str):
    """Load analysis/<name>.py by path (works however this script is run or imported)."""
    spec = importlib.util.spec_from_file_location(f"_analysis_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    _sibling("idfd_tau").main(argv, param="tau2", stem="fig4_acc_vs_tau2")


if __name__ == "__main__":
    main()
