"""benchmarks/early_stopping.py: ``--quick`` end to end (the FIFO grid, then ASHA, HyperBand and the median rule
under both objectives, real sweeps on a digits subset in the shared Ray session), checking the printed table
against the returned rows and the regret arithmetic against the grid's ACC."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "early_stopping.py"


@pytest.fixture(scope="module")
def es():
    """benchmarks/early_stopping.py as a module."""
    with benchmark_script("early_stopping") as module:
        yield module


@pytest.fixture(scope="module")
def quick(es, ray_session):
    """``main(["--quick"])`` once: (its result, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = es.main(["--quick"])
    assert ray_session.is_initialized()  # the script left the shared session running
    return result, out.getvalue()


def test_table_on_fixed_rows(es):
    row = {
        "data": "digits",
        "objective": "seed_agreement",
        "scheduler": "asha",
        "trials": 12,
        "errored": 0,
        "epochs_run": 90,
        "epochs_share": 0.5,
        "evals": 90,
        "nan_evals": 4,
        "selected": "tau=5",
        "selected_score": math.nan,
        "selected_at": 15,
        "selected_acc": 0.8,
        "regret": 0.0,
        "wall_s": 90.0,
    }
    lines = es.table([row, {**row, "scheduler": es.GRID, "selected_score": 0.9}]).splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [
        "digits",
        "seed_agreement",
        "asha",
        "12",
        "0.50",
        "4/90",
        "tau=5*",
        "nan @15",
        "0.800",
        "0.000",
        "1.5 min",
    ]
    assert "grid (fifo)" in lines[3] and "tau=5 " in lines[3]
    with pytest.raises(SystemExit):
        es.parse_args(["--seeds", "1"])


@pytest.mark.slow  # seven sweeps: about two minutes on 2 cores (CI runs -m slow)
def test_quick_rows_shares_and_regret(es, quick):
    result, out = quick
    rows, acc = result["rows"], result["grid_acc"]
    expected = {
        (o, s) for o in ("acc", "consensus") for s in (es.GRID, *es.SCHEDULERS)
    }  # the default objectives
    assert {(r["objective"], r["scheduler"]) for r in rows} == expected and len(rows) == len(expected)
    assert sorted(acc) == ["tau=0.1", "tau=5"] and all(v["n"] == 2 for v in acc.values())
    best = max(v["mean"] for v in acc.values())
    for r in rows:
        assert r["errored"] == 0 and r["trials"] == 4, r
        assert 0 < r["epochs_share"] <= 1, r
        if r["scheduler"] == es.GRID:
            assert r["epochs_share"] == 1.0 and r["epochs_run"] == 4 * 4
        assert r["selected"] in acc, r
        assert r["regret"] >= 0
        assert r["regret"] == pytest.approx(best - acc[r["selected"]]["mean"])
        assert r["selected_acc"] == pytest.approx(acc[r["selected"]]["mean"])
    assert any(r["epochs_share"] < 1 for r in rows if r["scheduler"] != es.GRID)  # something was stopped
    # the printed table: one row per objective x scheduler, with the returned shares and regrets
    printed = re.findall(
        r"^\| digits +\| (\w+) +\| (grid \(fifo\)|\w+) +\| 4 +\| ([\d.]+) +\| \d+/\d+ +\| (\S+?)\*? +\|"
        r" \S+ @\d+ +\| ([\d.]+) +\| ([\d.]+) +\|",
        out,
        re.M,
    )
    assert len(printed) == len(rows)
    for r, (obj, sched, share, sel, sel_acc, regret) in zip(rows, printed):
        assert (obj, sched) == (
            r["objective"],
            "grid (fifo)" if r["scheduler"] == es.GRID else r["scheduler"],
        )
        assert share == f"{r['epochs_share']:.2f}" and sel == r["selected"]
        assert (sel_acc, regret) == (f"{r['selected_acc']:.3f}", f"{r['regret']:.3f}")
    assert "Complete grid (FIFO), ACC at the full budget" in out
