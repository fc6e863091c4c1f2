"""benchmarks/gpu.py --device cpu --quick end to end: every part runs and reports measured, positive numbers.

Marked slow: it trains every method in three runtimes through the real trial loop and starts packed trials as
processes (about a minute on an idle 2-core machine, several under load).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    """benchmarks/gpu.py as the module ``gpu_bench``."""
    with benchmark_script("gpu", "gpu_bench") as module:
        yield module


def test_peak_table_is_only_for_known_gpus(gpu_bench) -> None:
    assert gpu_bench.peak_flops(torch.device("cpu")) is None
    assert gpu_bench.runtime_for("bf16 + cl + compiled", torch.device("cpu"), quick=True) is None
    assert gpu_bench.runtime_for("bf16", torch.device("cpu"), quick=True) is None
    assert gpu_bench.runtime_for("bf16", torch.device("cpu"), quick=False)["precision"] == "bf16"
    assert (
        gpu_bench.runtime_for("bf16 + cl + compiled", torch.device("cuda"), quick=False)["compile"]
        == "cudagraphs"
    )


def test_quick_cpu_run_measures_every_part(gpu_bench) -> None:
    before = gpu_bench.RESULTS_MD.read_text()
    threads = torch.get_num_threads()
    try:
        rows = gpu_bench.main(["--device", "cpu", "--quick"])
    finally:
        torch.set_num_threads(threads)
    assert gpu_bench.RESULTS_MD.read_text() == before  # no --record, nothing written
    by_part: dict[str, list] = {}
    for r in rows:
        by_part.setdefault(r.part, []).append(r)
    assert by_part["reference"][0].images_per_s > 0
    methods = by_part["method"]
    assert len(methods) == 4 * len(gpu_bench.RUNTIMES)
    for r in methods:
        if "fp32 eager" not in r.what:
            assert r.images_per_s is None and "skipped" in r.note
        else:
            assert r.images_per_s > 0 and math.isfinite(r.images_per_s) and r.flop_util == "n/a"
            assert r.ratio.endswith("x")
    idfd_fp32 = next(r for r in methods if r.what == "idfd fp32 eager")
    assert "GFLOP/img" in idfd_fp32.note  # FlopCounterMode counted the IDFD epoch
    packed = [r for r in by_part["packing"] if r.images_per_s is not None]
    assert [r.what for r in packed] == ["1 IDFD trials, MPS off", "2 IDFD trials, MPS off"]
    assert all(r.images_per_s > 0 for r in packed)
    assert "skipped" in by_part["sweep"][0].note
    eager, skipped = by_part[
        "start-up"
    ]  # a fresh process's trial; compiled rows skipped in --quick on the CPU
    assert eager.what == "fresh-process IDFD trial, eager (fp32)" and "first epoch" in eager.note
    assert "skipped" in skipped.note
