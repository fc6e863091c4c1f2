"""benchmarks/throughput.py end to end at its smallest: both paths train and report a positive images/s.

CPU-only, offline, a few seconds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    """benchmarks/throughput.py as a module (DataLoader workers import it too)."""
    with benchmark_script("throughput") as module:
        yield module


@pytest.fixture
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("_restore_threads")
def test_both_paths_report_positive_throughput(throughput) -> None:
    before = throughput.RESULTS_MD.read_text() if throughput.RESULTS_MD.exists() else None
    argv = ["--data", "digits", "--backbone", "convnet", "--epochs", "1", "--max-steps", "2"]
    results = throughput.main([*argv, "--device", "cpu", "--workers", "1", "--threads", "1"])
    assert [r.path for r in results] == ["tuneclust", "reference"]
    for r in results:
        assert r.images == 2 * 128  # one timed epoch of two full batches, the same on both paths
        assert math.isfinite(r.images_per_s) and r.images_per_s > 0
    after = throughput.RESULTS_MD.read_text() if throughput.RESULTS_MD.exists() else None
    assert after == before  # no --record: nothing written


def test_epoch_size_matches_idfd_batches(throughput) -> None:
    assert throughput.epoch_size(1797, 128, None) == 1797
    assert throughput.epoch_size(1797, 128, 2) == 256
    assert throughput.epoch_size(257, 128, None) == 256  # a trailing batch of one is dropped, as IDFD does
    assert throughput.epoch_size(200, 128, 5) == 200


def test_kmeans_restarts_quick_prints_one_row_per_n_init(capsys) -> None:
    """benchmarks/kmeans_restarts.py --quick: trains 2 tiny trials, clusters each embedding as trained and nudged
    one ulp; one table row per n_init with std values in [0, 0.5]."""
    with benchmark_script("kmeans_restarts") as module:  # the spawned pool workers import it by name
        x = np.array([1.0, -2.0, 0.0], dtype=np.float32)
        nudged = module.nudge(x)
        assert nudged[2] == 0 and (np.abs(nudged[:2]) > np.abs(x[:2])).all()
        assert (np.nextafter(nudged[:2], np.float32(0)) == x[:2]).all()  # exactly one ulp
        assert module.main(["--quick", "--n-init", "1", "3"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "3"]
    for r in rows:
        cells = r.split("|")
        assert cells[2].strip() == "2" and 0 <= float(cells[3]) <= float(cells[4]) <= 0.5
