"""benchmarks/fidelity.py: the CI/verdict arithmetic on fixed numbers, and ``--quick`` end to end (real trials
of all four methods on a digits subset, in a process pool), checking the table's structure."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    """benchmarks/fidelity.py as a module (spawned workers import it by name)."""
    with benchmark_script("fidelity") as module:
        yield module


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


def test_vs_eager_pairs_every_job_with_an_fp32_eager_and_a_nudged_twin(fidelity):
    args = fidelity.parse_args(
        ["--methods", "idfd", "--arms", "IDFD", "--seeds", "2", "--vs-eager", "--runtime", "precision=bf16"]
    )
    jobs = fidelity.build_jobs(args)
    assert sorted((j.seed, j.variant) for j in jobs) == [
        (s, v) for s in (0, 1) for v in ("eager", "fast", "nudged")
    ]
    eager = {**fidelity.EAGER, "static_shapes": False}  # bf16 eager keeps the ragged batch, as its twins do
    assert {j.variant: j.runtime for j in jobs} == {
        "fast": {"precision": "bf16"},
        "eager": eager,
        "nudged": eager,
    }
    assert {j.variant: j.nudge for j in jobs} == {"fast": False, "eager": False, "nudged": True}
    fast, eager, nudged = (next(j for j in jobs if j.variant == v) for v in ("fast", "eager", "nudged"))
    assert fast.config == eager.config == nudged.config and fast.data == eager.data == nudged.data
    assert fast.epochs == eager.epochs == nudged.epochs
    with pytest.raises(SystemExit):  # on the CPU the default runtime is already fp32 eager
        fidelity.parse_args(["--vs-eager"])
    # a compiled fast path drops each epoch's ragged batch (static shapes): its eager twins train on those batches
    args = fidelity.parse_args(
        ["--methods", "idfd", "--arms", "IDFD", "--vs-eager", "--runtime", "compile=default"]
    )
    twins = {j.runtime["static_shapes"] for j in fidelity.build_jobs(args) if j.variant != "fast"}
    assert twins == {True}
    args.runtime = ["compile=default", "static_shapes=false"]
    twins = {j.runtime["static_shapes"] for j in fidelity.build_jobs(args) if j.variant != "fast"}
    assert twins == {False}


def test_nudged_inputs_move_every_nonzero_value_by_one_ulp(fidelity):
    from tuneclust.data.registry import DataConfig, load_dataset

    data = {"name": "digits", "subsample": 300}
    x = load_dataset(DataConfig.model_validate(data)).x
    nudged = fidelity.nudged_dataset(data).x
    nonzero = x != 0
    assert nonzero.any() and (~nonzero).any()
    assert torch.equal(nudged[~nonzero], x[~nonzero])  # zeros stay exactly zero
    assert (nudged[nonzero].abs() > x[nonzero].abs()).all()  # every other value moves away from zero ...
    ulp = torch.nextafter(x[nonzero], torch.tensor(math.inf)) - x[nonzero]
    assert torch.equal(nudged[nonzero] - x[nonzero], ulp)  # ... by exactly one fp32 ulp


def test_vs_eager_table_on_fixed_numbers(fidelity):
    """fast - eager per arm: paired mean, t CI, the rounding RMS of nudged - eager, and 'within spread' iff
    |mean| <= the eager arm's seed std, 'within rounding' iff (else) |mean| <= the rounding RMS."""

    def out(arm, seed, variant, acc, nmi):
        job = fidelity.Job("idfd", arm, seed, {}, {}, 1, variant=variant)
        return fidelity.Outcome(job, acc, nmi, 1.0)

    eager_acc, eager_nmi = [0.60, 0.70, 0.80], [0.50, 0.52, 0.54]  # seed std .100 and .020
    fast_acc = [a - 0.05 for a in eager_acc]  # .05 below: within the .10 spread
    fast_nmi = [n + 0.03 for n in eager_nmi]  # .03 above: outside the .02 spread
    outs = [out("IDFD", s, "eager", eager_acc[s], eager_nmi[s]) for s in range(3)]
    outs += [out("IDFD", s, "fast", fast_acc[s], fast_nmi[s]) for s in range(3)]
    text = fidelity.tables(outs, ["idfd"])
    assert "| idfd | IDFD [fast] | 3 | 0.650 ± 0.100 |" in text
    assert "| idfd | IDFD [eager] | 3 | 0.700 ± 0.100 |" in text
    assert "| idfd | IDFD | ACC | 3 | -0.050 | [-0.050, -0.050] | 0.100 | n/a | within spread |" in text
    assert "| idfd | IDFD | NMI | 3 | +0.030 | [+0.030, +0.030] | 0.020 | n/a | above |" in text
    # nudged NMI moves by 0, +.04, -.04: RMS sqrt(2 * .0016 / 3) = .0327 >= the .03 gap: within rounding
    nudged_nmi = [0.50, 0.56, 0.50]
    outs += [out("IDFD", s, "nudged", eager_acc[s], nudged_nmi[s]) for s in range(3)]
    text = fidelity.tables(outs, ["idfd"])
    assert "| idfd | IDFD [nudged] | 3 | 0.700 ± 0.100 |" in text
    assert "| idfd | IDFD | ACC | 3 | -0.050 | [-0.050, -0.050] | 0.100 | 0.000 | within spread |" in text
    assert "| idfd | IDFD | NMI | 3 | +0.030 | [+0.030, +0.030] | 0.020 | 0.033 | within rounding |" in text
    assert fidelity.spread_verdict(-0.03, 0.02) == "below" and fidelity.spread_verdict(0.0, math.nan) == "n/a"
    assert fidelity.spread_verdict(-0.03, 0.02, 0.029) == "below"
    assert fidelity.spread_verdict(-0.03, 0.02, 0.03) == "within rounding"
    plain = fidelity.tables(
        [dataclasses.replace(o, job=dataclasses.replace(o.job, variant="")) for o in outs[:3]], ["idfd"]
    )
    assert "fast - eager" not in plain  # no third table without --vs-eager


def test_killing_the_benchmark_ends_its_pool_workers(tmp_path):
    """SIGTERM (kill, pkill) ends the trials running in the pool too, not only the parent; and a parent killed
    with SIGKILL leaves workers that exit on their own within a few seconds."""
    import os
    import signal
    import subprocess
    import time

    def children(pid):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def alive(pids):
        return {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}

    cmd = [
        sys.executable,
        str(SCRIPT),
        "--methods",
        "cdc",
        "--seeds",
        "4",
        "--workers",
        "2",
        "--epochs",
        "400",
    ]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.time() + 120
            workers: set[int] = set()
            while time.time() < deadline and len(workers) < 2:  # the pool's two workers (plus its helper)
                time.sleep(0.5)
                workers = {p for p in children(proc.pid) if "spawn_main" in _cmdline(p)}
            assert len(workers) == 2, "the pool's workers never started"
            time.sleep(3)  # let them get into a trial
            os.kill(proc.pid, sig)
            proc.wait(timeout=60)
            deadline = time.time() + 20
            while alive(workers) and time.time() < deadline:
                time.sleep(0.5)
            assert not alive(workers), f"{sig.name}: pool workers outlived the benchmark"
        finally:
            proc.kill()
            proc.wait()


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
