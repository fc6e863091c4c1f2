"""``tuneclust estimate``: times a real trial on the digits and turns it into a study's cost."""

from __future__ import annotations

import re

import pytest

from tuneclust.cli import main
from tuneclust.estimate import concurrency
from tuneclust.schedulers import budget_fraction, rung_fraction
from tuneclust.spec import load_spec

SPEC = """name: est
method: idfd
data: {name: digits}
budget: {epochs: 40, eval_every: 10}
config: {backbone: convnet, batch_size: 64}
search:
  tau: {grid: [0.5, 1.0]}
  seed: {grid: [0, 1, 2]}
resources: {cpu: 1, gpu: 0}
"""


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "est.yaml"
    path.write_text(SPEC)
    return path


def test_rung_fraction() -> None:
    # rungs 5, 15, 45, 50: 5 + 10/3 + 30/9 + 5/27 of 50 epochs
    assert rung_fraction(50, 5, 3) == pytest.approx((5 + 10 / 3 + 30 / 9 + 5 / 27) / 50)
    assert rung_fraction(10, 10, 4) == 1.0
    assert rung_fraction(100, 1, 4) < 0.1


def test_scheduler_fraction_and_packing(spec_path) -> None:
    spec = load_spec(spec_path, ["scheduler={type: asha, grace_period: 5, reduction_factor: 3}"])
    assert budget_fraction(spec)[0] == pytest.approx(rung_fraction(40, 5, 3))
    assert budget_fraction(load_spec(spec_path))[0] == 1.0
    packed = load_spec(spec_path, ["resources.gpu=0.25"])
    assert concurrency(packed, gpus=1, cpus=8, pack_gain=1.0) == (4, 1.0, 1.0)
    assert concurrency(packed, gpus=1, cpus=8, pack_gain=1.8) == (4, 1.8, 1.0)
    assert concurrency(packed, gpus=2, cpus=8, pack_gain=2.0) == (6, 4.0, 2.0)  # 6 trials: 4 + 2
    assert concurrency(load_spec(spec_path, ["max_concurrent=1"]), 0, 8, 1.0) == (1, 1.0, 0.0)


def test_estimate_times_a_digits_trial(spec_path, capsys) -> None:
    rc = main(
        ["estimate", str(spec_path), "--images", "256", "--epochs", "1", "--cpus", "2", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "256 of 1797 images" in out
    assert "6 trials x 1.00 of the budget (fifo" in out
    assert "2 trials at once, together 2.00x" in out
    ips = float(re.search(r"train ([\d,]+) img/s", out).group(1).replace(",", ""))
    assert ips > 0
    hours = float(re.search(r"predicted wall time: .* \(([\d.e-]+) h\)", out).group(1))
    trial = re.search(r"one trial at the full budget: ([\d.]+) (s|min|h)", out)
    trial_s = float(trial.group(1)) * {"s": 1, "min": 60, "h": 3600}[trial.group(2)]
    # 6 trials, 2 at a time: 3 waves of one trial each
    assert hours * 3600 == pytest.approx(3 * trial_s, rel=0.05)
    assert "GPU-hours: 0.00 (CPU only)" in out


def test_estimate_bad_input_is_one_line_and_exit_2(spec_path, tmp_path, capsys) -> None:
    assert main(["estimate", str(spec_path), "--set", "runtime.precision=fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "runtime.precision" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["estimate", str(spec_path), "--images", "0"])
    assert e.value.code == 2


def test_every_scheduler_kind_has_one_home() -> None:
    from tuneclust.schedulers import KINDS
    from tuneclust.spec import SCHEDULERS

    assert SCHEDULERS == ("fifo", "asha", "hyperband", "median", "pbt") and tuple(KINDS) == SCHEDULERS
