"""benchmarks/fidelity.py: the CI/verdict arithmetic on fixed numbers, and ``--quick`` end to end (real trials
of all four methods on a digits subset, in a process pool), checking the table's structure."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    """The script as a module named ``fidelity`` (benchmarks/ is not a package; spawned workers import it)."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fidelity", None)
    sys.path.remove(str(SCRIPT.parent))


def test_verdict_thresholds(fidelity):
    assert fidelity.verdict(0.01, 0.2) == "holds"
    assert fidelity.verdict(-0.2, -0.01) == "reversed"
    assert fidelity.verdict(-0.01, 0.2) == "not shown"
    assert fidelity.verdict(0.0, 0.2) == "not shown"  # a CI touching 0 does not exclude it


def test_paired_gap_t_interval_on_fixed_numbers(fidelity):
    # differences 0.1, 0.2, 0.3, 0.4, 0.5: mean 0.3, sd sqrt(0.025), t(0.975, 4) = 2.7764451
    better = [0.6, 0.7, 0.8, 0.9, 1.0]
    worse = [0.5] * 5
    g = fidelity.paired_gap(better, worse)
    half = 2.7764451 * math.sqrt(0.025) / math.sqrt(5)
    assert g.n == 5
    assert g.mean == pytest.approx(0.3)
    assert (g.low, g.high) == (pytest.approx(0.3 - half, abs=1e-6), pytest.approx(0.3 + half, abs=1e-6))
    assert g.verdict == "holds"
    assert fidelity.paired_gap(worse, better).verdict == "reversed"
    # pairing matters: the same values, each seed's gap +-0.2 around 0, do not show an ordering
    assert fidelity.paired_gap([0.7, 0.3, 0.7, 0.3], [0.5, 0.5, 0.5, 0.5]).verdict == "not shown"


def test_paired_gap_drops_failed_seeds_and_needs_two_pairs(fidelity):
    g = fidelity.paired_gap([0.9, math.nan, 0.8], [0.5, 0.5, math.nan])
    assert g.n == 1 and g.mean == pytest.approx(0.4) and g.verdict == "not shown" and g.low == -math.inf
    assert fidelity.paired_gap([math.nan], [0.1]).n == 0


def test_set_and_data_arguments(fidelity, tmp_path):
    assert fidelity.parse_sets(["ics.reduction=sum", "cdc.corr_sharpen=true"]) == {
        "ics": {"reduction": "sum"},
        "cdc": {"corr_sharpen": True},
    }
    with pytest.raises(SystemExit):
        fidelity.parse_sets(["nosuch.key=1"])
    assert fidelity.data_config("mnist", None, None) == {"name": "mnist"}
    npz = tmp_path / "f.npz"
    assert fidelity.data_config(str(npz), 28, 100) == {
        "name": "npz",
        "root": str(npz),
        "image_size": 28,
        "subsample": 100,
    }
    args = fidelity.parse_args(["--methods", "cdc", "--epochs", "10", "--set", "cdc.lam=0.5"])
    jobs = fidelity.build_jobs(args)
    assert len(jobs) == 5 * 5  # five Table 3 rows, five seeds
    full = next(j for j in jobs if j.arm == "AEs_LDC")
    assert (
        full.epochs == 10 and full.config["pretrain_epochs"] == 6 and full.config["finetune_iters"] == 4 * 50
    )
    assert full.config["lam"] == 0.5
    only = fidelity.build_jobs(
        fidelity.parse_args(["--methods", "cdc", "--arms", "AEs_Lc", "AEs_LDC", "--seeds", "3"])
    )
    assert sorted({j.arm for j in only}) == ["AEs_LDC", "AEs_Lc"] and len(only) == 6


def test_runtime_and_device_arguments(fidelity):
    args = fidelity.parse_args(
        ["--methods", "idfd", "--runtime", "compile=default", "--runtime", "tf32=false"]
    )
    jobs = fidelity.build_jobs(args)
    assert {j.device for j in jobs} == {"cpu"}
    assert all(j.runtime == {"compile": "default", "tf32": False} for j in jobs)
    assert fidelity.build_jobs(fidelity.parse_args(["--methods", "idfd"]))[0].runtime == {}  # fp32 eager
    for bad in (["--runtime", "nosuch=1"], ["--runtime", "precision=fp8"], ["--runtime", "compile"]):
        with pytest.raises(SystemExit, match="--runtime"):
            fidelity.build_jobs(fidelity.parse_args(["--methods", "idfd", *bad]))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            fidelity.parse_args(["--device", "cuda"])


def test_a_job_runs_with_its_runtime(fidelity):
    """The runtime reaches the trial loop: channels_last is reported back in the trial's runtime tags."""
    job = fidelity.Job(
        "idfd",
        "IDFD",
        0,
        {"backbone": "convnet", "batch_size": 32, "max_steps_per_epoch": 2},
        {"name": "digits", "subsample": 200},
        1,
        "cpu",
        {"channels_last": True},
    )
    threads = torch.get_num_threads()
    try:
        out = fidelity.run_job(job)
    finally:
        torch.set_num_threads(threads)
    assert not out.error and 0 <= out.acc <= 1
    assert out.runtime_tags["runtime.channels_last"] == "true"
    assert "runtime.channels_last=true" in fidelity.runtimes_line([out])


def test_quick_run_prints_every_arm_and_claim(fidelity, capsys):
    assert fidelity.main(["--quick"]) == 0
    out = capsys.readouterr().out
    arm_rows = re.findall(
        r"^\| (\w+) \| (\S+) \| (\d+) \| ([\d.]+) ± [\d.]+ \| ([\d.]+) ± [\d.]+ \| 0 \|", out, re.M
    )
    expected = [(m, a) for m, st in fidelity.STUDIES.items() for a in st.arms]
    assert [(m, a) for m, a, *_ in arm_rows] == expected
    for _, _, n, acc, nmi in arm_rows:
        assert n == "2" and 0.0 < float(acc) <= 1.0 and 0.0 <= float(nmi) <= 1.0
    claims = re.findall(
        r"^\| (\w+) \| (\S+ > \S+) \| (ACC|NMI) \| 2 \| [+-][\d.]+ \| \[.*\] \| (.+) \|$", out, re.M
    )
    n_claims = sum(len(st.claims) for st in fidelity.STUDIES.values())
    assert len(claims) == 2 * n_claims
    assert {c[3] for c in claims} <= {"holds", "not shown", "reversed"}
