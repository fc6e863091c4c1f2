"""benchmarks/step_graph.py --quick end to end: IDFD eager, nets compiled and whole step compiled each train and
report a positive images/s (inductor compiles on the CPU: marked slow)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_graph.py"


@pytest.mark.slow
def test_quick_run_measures_every_variant() -> None:
    spec = importlib.util.spec_from_file_location("step_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = module.throughput.RESULTS_MD.read_text()
    rows = module.main(["--quick", "--device", "cpu"])
    assert [(m, v) for m, v, *_ in rows] == [("idfd", v) for v in module.VARIANTS]
    for _, variant, ips, ratio in rows:
        assert math.isfinite(ips) and ips > 0, variant
        assert ratio == pytest.approx(ips / rows[0][2])
    assert module.throughput.RESULTS_MD.read_text() == before  # recorded only with --record
    sys.modules.pop("throughput", None)
