"""One progress line for a sweep instead of Ray's status tables, and the knobs that keep Ray's start-up quiet.

:class:`Progress` counts trials (done, running, pending, errored), keeps the best objective value seen with the
trial that reported it, and estimates the time left from the share of the budget done; :class:`ProgressCallback`
feeds it from Ray Tune's trial events in the driver and prints it: a single rewritten line on a terminal, else
one line on each trial end and every ``interval_s`` seconds (logs and CI stay short).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from tuneclust import raycompat

QUIET, PROGRESS, RAY_REPORTER = 0, 1, 2
"""Verbosity levels of a sweep: final summary only; one progress line (default); Ray's own tables and logs."""

NOISY_LOGGERS = ("ray", "mlflow", "mlflow.store.db.utils", "alembic")
"""Loggers whose INFO/WARNING start-up lines (token-auth notice, "Started a local Ray instance", MLflow's
database creation, Tune's "bottleneck" timings) are hidden unless the sweep runs with Ray's reporter."""


def silence_ray(verbose: int) -> None:
    """Set the environment and log levels for ``verbose`` before Ray starts; Ray's reporter keeps its output.

    Below :data:`RAY_REPORTER`: Tune's legacy output engine (whose ``verbose=0`` prints no tables or TensorBoard
    hint; the new engine always prints its header), no automatic CSV/JSON/TensorBoard loggers (the Parquet tables
    and MLflow hold the results), and errors only from Ray's, MLflow's and alembic's loggers.
    """
    if verbose >= RAY_REPORTER:
        return
    raycompat.use_legacy_output()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_captured(into: list[str]) -> Iterator[None]:
    """While the block runs, this process's file descriptor 2 (where Ray's C++ core logs, past Python's logging)
    goes to a temporary file; its text is appended to ``into`` afterwards. Only around a call that starts no
    processes (a child would inherit the file)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            into.append(f.read().decode(errors="replace"))


def short_value(v: Any) -> str:
    """A compact rendering of a searched value: floats with 4 significant digits, others as ``str``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_label(point: dict[str, Any], limit: int = 40) -> str:
    """What distinguishes a trial: its arm and searched values, e.g. ``IDFD · tau=0.5 · seed=1``.

    Keys are shown by their last dotted part (``data.name`` -> ``name``); ``limit`` trims long values first,
    then the whole label, so a UI column does not cut off the trailing seed.
    """
    arm = str(point.get("arm") or "")
    items = [(k.rsplit(".", 1)[-1], short_value(v)) for k, v in point.items() if k != "arm"]
    parts = [arm] * bool(arm) + [f"{k}={v}" for k, v in items]
    label = " · ".join(parts)
    if len(label) > limit and items:
        parts = [arm] * bool(arm) + [f"{k}={v[:8]}" for k, v in items]
        label = " · ".join(parts)
    return label if len(label) <= limit + 20 else label[: limit + 19] + "…"


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``; under a minute: ``42s``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Progress:
    """The state of a sweep as the driver sees it; :meth:`line` renders it.

    ``total``: trials the sweep will run; ``epochs``: the budget per trial (the ETA counts a running trial's
    reported epochs as that share of a trial); ``metric``/``mode``: the objective.
    """

    total: int
    epochs: int
    metric: str
    mode: str
    start: float = field(default_factory=time.monotonic)
    running: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    errored: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    best: tuple[float, str] | None = None

    def started(self, trial_id: str, label: str) -> None:
        self.running.setdefault(trial_id, 0)
        self.labels[trial_id] = label

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record one reported evaluation: its epoch (progress) and objective value (best so far)."""
        epoch = result.get("epoch", result.get("training_iteration", 0))
        self.running[trial_id] = int(epoch or 0)
        value = result.get(self.metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            better = self.best is None or (
                value > self.best[0] if self.mode == "max" else value < self.best[0]
            )
            if better:
                self.best = (float(value), self.labels.get(trial_id, trial_id))

    def finished(self, trial_id: str, error: bool) -> None:
        self.running.pop(trial_id, None)
        (self.errored if error else self.done).add(trial_id)

    def fraction(self) -> float:
        """Share of the sweep's work done: ended trials, plus running ones by their epochs of the budget."""
        if self.total <= 0:
            return 1.0
        partial = sum(min(e / max(self.epochs, 1), 1.0) for e in self.running.values())
        return min((len(self.done) + len(self.errored) + partial) / self.total, 1.0)

    def line(self, now: float | None = None) -> str:
        """``[1m05s] 3/8 done · 2 running · 3 pending · 0 errored | best acc 0.8121 (tau=5 · seed=1) | ETA 2m``."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        ended = len(self.done) + len(self.errored)
        pending = max(self.total - ended - len(self.running), 0)
        text = (
            f"[{duration(elapsed)}] {len(self.done)}/{self.total} done · {len(self.running)} running · "
            f"{pending} pending · {len(self.errored)} errored"
        )
        if self.best is not None:
            text += f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
        f = self.fraction()
        if 0 < f < 1:
            text += f" | ETA {duration(elapsed * (1 - f) / f)}"
        return text


class ProgressCallback(tune.Callback):
    """Prints :class:`Progress` from Ray Tune's trial events (driver side).

    On a terminal the line is rewritten in place at most every ``redraw_s`` seconds; otherwise (a log file, CI)
    a line is printed on each trial's end and at most every ``interval_s`` seconds in between. Picklable: the
    output stream is looked up when printing, since Ray stores callbacks in its saved state.
    """

    def __init__(
        self, total: int, epochs: int, metric: str, mode: str, interval_s: float = 30.0, redraw_s: float = 0.5
    ) -> None:
        self.total, self.epochs, self.metric, self.mode = total, epochs, metric, mode
        self.interval_s, self.redraw_s = interval_s, redraw_s
        self.state = Progress(total, epochs, metric, mode)
        self._last = float("-inf")  # the first line is always due
        self._width = 0
        self._text = ""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def setup(self, **info: Any) -> None:
        self.state = Progress(self.total, self.epochs, self.metric, self.mode)
        self._last, self._text = float("-inf"), ""

    def show(self, force: bool = False) -> None:
        """Print the line if it is due (``force``: now): rewritten in place on a terminal, appended otherwise."""
        now = time.monotonic()
        tty = self._tty()
        if not force and now - self._last < (self.redraw_s if tty else self.interval_s):
            return
        self._last = now
        text = self.state.line(now)
        counts = text.split("] ", 1)[-1]  # what changed, apart from the clock
        if counts == self._text and not tty:
            return
        self._text = counts
        if tty:
            pad = max(self._width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state.started(trial.trial_id, trial_label(dict(trial.config)) or trial.trial_id)
        self.show(force=self._tty())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.state.result(trial.trial_id, result)
        self.show(force=self._tty())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state.finished(trial.trial_id, error=False)
        self.show(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state.finished(trial.trial_id, error=True)
        self.show(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.show()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.show(force=True)
        if self._tty():
            self.stream.write("\n")
            self.stream.flush()
