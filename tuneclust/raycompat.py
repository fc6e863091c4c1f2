"""Every reliance on Ray behaviour beyond its public API, in one place.

Each entry below says what tuneclust relies on and why; all were checked against the Ray releases in
:data:`TESTED_RAY`, and ``tests/test_raycompat.py`` fails if Ray changes one of them. At a sweep's start a Ray
release outside that range gives one warning line naming what may break (:func:`version_warning`). Nothing else in
``tuneclust/`` touches a private Ray name (``tests/test_raycompat.py`` greps for them).

Checked upstream (Ray 2.60): HyperBand still processes a bracket on a trial's removal only when the bracket is not
finished, and ``Tuner.restore`` still takes no run config, so both fixes below remain needed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining

from tuneclust.lease import process_start

TESTED_RAY = ("2.60",)
"""Ray releases (major.minor) whose behaviour below was checked."""

RELIANCES = {
    "hyperband": "the HyperBand hang fix (HyperBandScheduler._trial_info, _process_bracket, bracket state)",
    "resume_output": "--quiet/--verbose on --resume (Tuner._local_tuner._run_config)",
    "checkpoint_names": "the deleted-checkpoint fallback on --resume (checkpoint_NNNNNN folder names)",
    "legacy_output": "quiet output (RAY_AIR_NEW_OUTPUT=0)",
    "tuner_state": "telling a started sweep from a new one (tuner.pkl)",
    "error_text": "one-line trial errors (the layout of Ray's error.txt)",
    "autoscaler_config": "the resource check on autoscaling clusters (~/ray_bootstrap_config.yaml)",
    "orphans": "cleaning up after a killed driver (Ray's local processes inherit the driver's environment)",
    "arm_pbt": "PBT within each ablation arm (PopulationBasedTraining._quantiles, _trial_state)",
    "report_retry": "checkpoint uploads retried through a storage outage (a failed upload raises before the result "
    "is queued)",
}


def version_warning(version: str | None = None) -> str | None:
    """One warning line when ``version`` (default: the installed Ray) is outside :data:`TESTED_RAY`, else None."""
    import ray

    version = version or ray.__version__
    if ".".join(version.split(".")[:2]) in TESTED_RAY:
        return None
    tested = ", ".join(f"{v}.x" for v in TESTED_RAY)
    return (
        f"warning: Ray {version} is not a release tuneclust was tested with ({tested}); these may break: "
        + "; ".join(RELIANCES.values())
        + " (see tuneclust/raycompat.py)"
    )


class HyperBand(HyperBandScheduler):
    """Ray's HyperBand, minus a hang. A trial that ends on its own (its last report arrives with its completion,
    so the scheduler gets ``on_trial_complete``, not ``on_trial_result``) can finish its bracket while another
    trial of it waits PAUSED at the same milestone. Ray processes a bracket on a removal only if it is not
    finished (and only before its first halving), so the paused trial waited forever and the sweep never ended.
    Here a bracket left with only paused trials is processed: finished, they stop; else it is halved. Should
    Ray's internals move, the scheduler behaves as Ray's own (and the version warning has said so)."""

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        info = getattr(self, "_trial_info", {}).get(trial)
        super().on_trial_remove(tune_controller, trial)
        bracket = info[0] if info else None
        process = getattr(self, "_process_bracket", None)
        if bracket is None or process is None or not hasattr(bracket, "trials_to_unpause"):
            return
        live = bracket.current_trials()
        if live and all(
            t.status == Trial.PAUSED and t not in bracket.trials_to_unpause and not t.is_saving for t in live
        ):
            bracket.is_being_processed = False
            process(tune_controller, bracket)


class ArmPBT(PopulationBasedTraining):
    """Ray's asynchronous PBT whose quantiles are taken among the trials of the reporting trial's ``arm``.

    Ray's PBT lets a weak trial copy a strong one's checkpoint *and its whole config*, so with an ablation the arm
    (its loss weights) is copied too: after a few exploits every trial runs the leading arm and the ablation is
    gone (seen on the DEC example: four trials of two arms all ended as IDEC). Here each trial is ranked and
    exploited only against the trials of its own arm, so arms keep their loss weights and PBT tunes the searched
    keys inside each. Without an ablation (or should Ray's internals move) it is Ray's PBT unchanged."""

    _arm: Any = None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._arm = trial.config.get("arm")
        try:
            return super().on_trial_result(tune_controller, trial, result)
        finally:
            self._arm = None

    def _quantiles(self) -> tuple[list, list]:
        everyone = getattr(self, "_trial_state", None)
        if self._arm is None or not isinstance(everyone, dict):
            return super()._quantiles()
        self._trial_state = {t: s for t, s in everyone.items() if t.config.get("arm") == self._arm}
        try:
            return super()._quantiles()
        finally:
            self._trial_state = everyone


def report_checkpoint(result: dict[str, Any], directory: str) -> None:
    """``tune.report`` of a result with the checkpoint in ``directory``; safe to call again when it raised.

    A checkpoint upload that fails raises from Ray's ``_TrainSession.report`` (``persist_current_checkpoint``)
    before the result is queued (``_report_training_result``), so trying again reports the result once. Each try
    takes the next checkpoint index: a failed one may leave a ``checkpoint_<n>`` folder without a trial state,
    which nothing restores."""
    from ray import tune

    tune.report(dict(result), checkpoint=tune.Checkpoint.from_directory(directory))


def replace_output(tuner: Any, callbacks: list[Any], drop: type, verbose: int) -> bool:
    """On a restored tuner: drop the callbacks of type ``drop`` that ``tuner.pkl`` brought back, add
    ``callbacks``, set ``verbose``. False (nothing changed) when Ray's tuner layout moved."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if run_config is None:
        return False
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, drop)]
    run_config.callbacks = [*kept, *callbacks]
    run_config.verbose = verbose
    return True


CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")
"""Ray's name for a trial's checkpoint folders (``checkpoint_000003``), numbered in the order they were saved."""

TUNER_STATE = "tuner.pkl"
"""The file Ray writes into the experiment folder when a Tuner starts; ``Tuner.restore`` needs it."""


def use_legacy_output() -> None:
    """Tune's legacy output engine, whose ``verbose=0`` prints no tables (the new one always prints a header)."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


MAX_ERROR = 300
"""Longest recorded trial error (type and the first line of the exception's message)."""
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\w*)(?:: (.*))?$")


def error_line(text: str) -> str:
    """The exception's own first line (``Type: message``) from a trial's error text, not the last line of a
    multi-line message (scikit-learn appends hints) and not Ray's wrapper (``RayTaskError(...)``)."""
    found = None
    for line in text.splitlines():
        m = _EXCEPTION_LINE.match(line.rstrip())  # exception lines start at column 0; frames are indented
        if m and not m.group(1).startswith(("ray.exceptions.", "RayTaskError", "ray.")):
            found = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2) or ''}".rstrip(": ")
    if found is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        found = lines[-1] if lines else "trial failed (no error message recorded)"
    return found if len(found) <= MAX_ERROR else found[: MAX_ERROR - 3] + "..."


def trial_error_line(trial: Any) -> str:
    """:func:`error_line` of the error file Ray wrote for a failed trial."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        text = ""
    return error_line(text)


AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""Written by ``ray up`` on the head node (Ray's own ``_is_ray_cluster`` checks the same file)."""


def autoscales() -> bool:
    """Whether the connected cluster was launched with an autoscaler config (``ray up``)."""
    return AUTOSCALER_CONFIG.expanduser().exists()


DRIVER_ENV = "TUNECLUST_DRIVER"
"""Set to ``<pid>:<start time>`` in a sweep driver before it starts a local Ray; the Ray processes it starts
inherit it, which is how :func:`clean_orphans` knows them as a tuneclust driver's own."""


def mark_driver() -> None:
    """Mark this process as a sweep driver before it starts Ray (Linux only; elsewhere nothing to clean up)."""
    started = process_start(os.getpid())
    if started is not None:
        os.environ[DRIVER_ENV] = f"{os.getpid()}:{started}"


def _driver_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process
        return None
    prefix = DRIVER_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def orphans() -> dict[int, str]:
    """This user's processes started by a tuneclust driver that is no longer alive: pid -> that driver's mark.
    A driver is alive when its pid runs with the start time in its mark (a reused pid is not it)."""
    found: dict[int, str] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        mark = _driver_of(int(entry.name))
        if not mark or mark == os.environ.get(DRIVER_ENV):
            continue
        pid, _, started = mark.partition(":")
        if pid.isdigit() and process_start(int(pid)) != started:
            found[int(entry.name)] = mark
    return found


def clean_orphans() -> str | None:
    """Stop the Ray processes a killed tuneclust driver left behind (its dashboard and runtime-env agents outlive
    it); one line saying what was stopped, or None when there was nothing."""
    import signal

    found = orphans()
    stopped = []
    for pid in found:
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
            stopped.append(f"{pid} {name}")
        except OSError:
            continue
    if not stopped:
        return None
    drivers = sorted({m.split(":")[0] for m in found.values()})
    return f"stopped {len(stopped)} Ray process(es) left by killed sweep driver(s) {', '.join(drivers)}: " + (
        ", ".join(stopped)
    )


def warn(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)
