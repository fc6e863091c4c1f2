"""tuneclust/raycompat.py: every reliance on Ray beyond its public API, each pinned by a test that fails when Ray
changes it, the version warning, the cleanup after a killed driver, and a grep that keeps private Ray names there."""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneclust import raycompat
from tuneclust.spec import load_spec
from tuneclust.sweep import SweepError, run_sweep

ROOT = Path(__file__).resolve().parents[1]

PRIVATE = re.compile(
    r"_local_tuner|_run_config\b|_trial_info|_process_bracket|_quantiles|_trial_state|trials_to_unpause|is_being_processed|"
    r"RAY_AIR_NEW_OUTPUT|tuner\.pkl|ray_bootstrap_config|checkpoint_\(|ray\._private|ray\.\w+(\.\w+)*\._internal|"
    r"from ray[\w.]*\._"
)


def test_no_private_ray_name_outside_raycompat():
    hits = []
    for path in (ROOT / "tuneclust").rglob("*.py"):
        if path.name == "raycompat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
    assert PRIVATE.search("run_config = tuner._local_tuner._run_config")  # the grep itself can fail


def test_version_warning_names_what_may_break():
    assert raycompat.version_warning("2.60.0") is None and raycompat.version_warning("2.60.3") is None
    line = raycompat.version_warning("2.61.0")
    assert line.startswith("warning: Ray 2.61.0 is not a release tuneclust was tested with (2.60.x)")
    assert "\n" not in line and all(text in line for text in raycompat.RELIANCES.values())
    import ray

    assert raycompat.version_warning() is None, f"installed Ray {ray.__version__} is outside TESTED_RAY"


def test_a_sweep_warns_at_its_start_on_an_untested_ray(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setattr(ray, "__version__", "9.1.0")
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    with pytest.raises(SweepError, match="nothing to resume"):
        run_sweep(spec, storage=str(tmp_path), resume=True)
    assert "warning: Ray 9.1.0 is not a release tuneclust was tested with" in capsys.readouterr().err


class _Controller:
    """The one controller call HyperBand makes here (stopping a trial), recorded. The scheduler, its brackets and
    the trials are Ray's own."""

    def __init__(self) -> None:
        self.stopped: list = []

    def stop_trial(self, trial) -> None:
        from ray.tune.experiment import Trial

        trial.set_status(Trial.TERMINATED)
        self.stopped.append(trial)


@pytest.mark.parametrize("fixed", [True, False])
def test_hyperband_never_leaves_a_paused_trial_when_a_trial_ends_on_its_own(fixed):
    """Two trials, one bracket (max_t 2, eta 2). t1 reaches epoch 2 first and is PAUSED at the milestone; t0's
    last report comes with its completion (on_trial_complete). Ray's scheduler left t1 PAUSED for ever (a sweep
    of the shipped test spec hung on this); tuneclust's HyperBand stops it, its bracket being finished. The
    unfixed case pins Ray's behaviour: when Ray fixes the hang upstream, it fails and the patch can go."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import HyperBandScheduler, TrialScheduler

    sched = (raycompat.HyperBand if fixed else HyperBandScheduler)(
        time_attr="epoch", max_t=2, reduction_factor=2
    )
    sched.set_search_properties(metric="acc", mode="max")
    ctl, (t0, t1) = _Controller(), (Trial("f", stub=True), Trial("f", stub=True))
    for t in (t0, t1):
        sched.on_trial_add(ctl, t)
        t.set_status(Trial.RUNNING)
    bracket, _ = sched._trial_info[t0]  # the internals the patch reads
    assert hasattr(bracket, "trials_to_unpause") and hasattr(bracket, "is_being_processed")
    assert callable(sched._process_bracket)
    assert sched.on_trial_result(ctl, t0, {"epoch": 1, "acc": 0.5}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, t1, {"epoch": 1, "acc": 0.6}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, t1, {"epoch": 2, "acc": 0.7}) == TrialScheduler.PAUSE
    t1.set_status(Trial.PAUSED)
    t0.set_status(Trial.TERMINATED)
    sched.on_trial_complete(ctl, t0, {"epoch": 2, "acc": 0.4})
    if fixed:
        assert ctl.stopped == [t1] and t1.status == Trial.TERMINATED
    else:  # the hang, as Ray has it
        assert ctl.stopped == [] and t1.status == Trial.PAUSED and sched.choose_trial_to_run(ctl) is None


def test_hyperband_falls_back_to_rays_own_when_its_internals_move():
    from ray.tune.experiment import Trial

    sched = raycompat.HyperBand(time_attr="epoch", max_t=2, reduction_factor=2)
    sched.set_search_properties(metric="acc", mode="max")
    trial = Trial("f", stub=True)
    sched.on_trial_add(_Controller(), trial)
    sched._process_bracket = None  # as if Ray renamed it: no AttributeError, Ray's own behaviour
    sched.on_trial_remove(_Controller(), trial)


class _NoSearch:
    search_alg = None


def test_arm_pbt_ranks_each_trial_among_its_own_arm():
    """Ray's PBT ranks every trial among all (pinned: it reads ``_trial_state`` in ``_quantiles``); ArmPBT ranks a
    trial of arm A only among the trials of arm A."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining

    assert "_trial_state" in inspect.getsource(PopulationBasedTraining._quantiles)

    def ranked(sched, arm):
        trials = {}
        for i, (a, score) in enumerate([("A", 1), ("A", 2), ("A", 3), ("A", 4), ("B", 10), ("B", 20)]):
            t = Trial("f", config={"arm": a, "lr": 0.1}, stub=True, trial_id=f"t{i}")
            sched.on_trial_add(_NoSearch(), t)
            sched._trial_state[t].last_score = score
            sched._trial_state[t].last_result = {"acc": score}
            trials[t] = a
        sched._arm = arm
        lower, upper = sched._quantiles()
        return {t.trial_id for t in lower}, {t.trial_id for t in upper}

    kw = {"time_attr": "epoch", "metric": "acc", "mode": "max", "hyperparam_mutations": {"lr": [0.1, 0.2]}}
    assert ranked(PopulationBasedTraining(quantile_fraction=0.25, **kw), "A") == ({"t0", "t1"}, {"t4", "t5"})
    assert ranked(raycompat.ArmPBT(quantile_fraction=0.25, **kw), "A") == ({"t0"}, {"t3"})


def test_resume_output_swaps_the_restored_callbacks():
    from ray import tune

    class Old(tune.Callback):
        pass

    class Kept(tune.Callback):
        pass

    new = tune.Callback()
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(callbacks=[Old(), Kept()], verbose=2))
    assert raycompat.replace_output(tuner, [new], Old, 0)
    run_config = tuner._local_tuner._run_config
    assert [type(c) for c in run_config.callbacks] == [Kept, tune.Callback] and run_config.verbose == 0
    assert not raycompat.replace_output(object(), [new], Old, 0)


def test_a_failed_checkpoint_upload_raises_before_the_result_is_queued():
    from ray.train._internal.session import _TrainSession

    source = inspect.getsource(_TrainSession.report)
    assert source.index("persist_current_checkpoint(") < source.index("_report_training_result(")


def test_checkpoint_folders_are_numbered_in_save_order():
    from ray.train._internal.storage import StorageContext

    names = [StorageContext._make_checkpoint_dir_name(i) for i in (0, 3, 12)]
    assert [int(raycompat.CHECKPOINT_DIR.search(n).group(1)) for n in names] == [0, 3, 12]


def test_legacy_output_switch(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert get_air_verbosity(1) is not None
    raycompat.use_legacy_output()
    assert get_air_verbosity(1) is None


def test_tuner_state_and_autoscaler_file_names():
    from ray.tune.execution import cluster_info
    from ray.tune.impl import tuner_internal

    assert tuner_internal._TUNER_PKL == raycompat.TUNER_STATE
    assert str(raycompat.AUTOSCALER_CONFIG) in inspect.getsource(cluster_info._is_ray_cluster)


def _marked(mark: str) -> list[int]:
    return [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if raycompat._driver_of(p) == mark]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the cleanup reads /proc (Linux)")
def test_a_killed_drivers_ray_processes_are_cleaned_up_and_no_others(tmp_path):
    """A driver marked as a sweep's starts a local Ray and is SIGKILLed: Ray's agents outlive it (Ray 2.60: the
    dashboard and runtime-env agents). The cleanup stops exactly the processes carrying its mark."""
    script = (
        "from tuneclust import raycompat; raycompat.mark_driver(); import os, ray, time; "
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); "
        "print(os.environ[raycompat.DRIVER_ENV], flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    mark = driver.stdout.readline().strip()
    assert mark.startswith(f"{driver.pid}:")
    assert _marked(mark) and not set(_marked(mark)) & set(raycompat.orphans())  # alive: not orphans
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 20
    while time.time() < deadline and not set(_marked(mark)) & set(raycompat.orphans()):
        time.sleep(0.5)
    left = _marked(mark)
    assert left, "Ray left nothing behind: the cleanup is no longer needed"
    line = raycompat.clean_orphans()
    assert line and f"killed sweep driver(s) {driver.pid}" in line
    deadline = time.time() + 10
    while time.time() < deadline and _marked(mark):
        time.sleep(0.2)
    assert _marked(mark) == []
