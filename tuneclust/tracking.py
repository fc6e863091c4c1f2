"""MLflow: one parent run per sweep, one child run per trial (the Parquet tables: :mod:`tuneclust.tables`).

Only this module imports mlflow. Everything here runs in the sweep's driver process (Ray callbacks forward
trial events to it, :mod:`tuneclust.callback`), so a sqlite store has one writer; calls an http server did not
answer are buffered and replayed (:class:`Outbox`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuneclust.storage import Location, env_seconds, first_line, locate
from tuneclust.tables import COMPILE_COUNTS, cell

MLFLOW_STATE = "mlflow.json"
BOOKKEEPING = {"epoch", "step", "time_total_s", "images_per_s", "eval_time_s", "lr", "phase", "finetune_iter"}
BOOKKEEPING |= {"eval_embed_s", "eval_kmeans_s", *COMPILE_COUNTS}
"""Reported values that are not MLflow metrics (they would clutter every chart): ``epoch`` is the metrics' step,
the others become ``final.<name>`` tags of the trial's run when it ends (their history is in epochs.parquet).
Any other timing a trial reports (``*_s``) is bookkeeping too (:func:`is_bookkeeping`)."""
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag that makes MLflow 3's UI open an experiment on its runs table, not the GenAI overview."""
NOTE = "mlflow.note.content"
"""The tag MLflow's UI shows as a run's description (Markdown)."""
MLFLOW_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui --host 127.0.0.1`` serves (its default port)."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's own default ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_bookkeeping(name: str) -> bool:
    """Not an MLflow metric: a :data:`BOOKKEEPING` name, or a timing a trial reports (``*_s``, not ``config.*``)."""
    return name in BOOKKEEPING or (name.endswith("_s") and "." not in name)


def runs_url(experiment_id: str, ui: str = MLFLOW_UI) -> str:
    """The MLflow UI page of an experiment's runs in the model-training view (MLflow 3 opens GenAI's overview)."""
    return f"{ui}/#/experiments/{quote(str(experiment_id), safe='')}/runs?workflowType=machine_learning"


def sweep_experiment_id(sweep_dir: Location | Path | str, uri: str, experiment: str) -> str | None:
    """The id of a sweep's MLflow experiment: from its ``mlflow.json``, else (a state written before the id was
    stored, or another store) looked up by name in the store at ``uri``. None without a ``mlflow.json`` (MLflow
    never started for it) or when the store does not answer."""
    try:
        state = json.loads((locate(sweep_dir) / MLFLOW_STATE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("experiment_id") and state.get("tracking_uri") == uri:
        return str(state["experiment_id"])
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 (a link in a closing message: never fail the sweep's exit over it)
        return None
    return exp.experiment_id if exp is not None else None


MLFLOW_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
"""The MLflow client's HTTP retries for the sweep's driver (unless set in the environment): MLflow's defaults (7
retries with backoff factor 2, 120 s timeout) stall the driver for minutes per call while a server is away; the
tracker buffers a failed call and replays it instead (:class:`Outbox`)."""
PROBE_S = 5.0
"""While the server is away, at most one call tries it every this many seconds; the others are buffered."""
MAX_BUFFERED = 10000
"""Buffered calls at most; metric points beyond it are dropped, counted and reported (a tag on their run)."""
FINAL_WAIT_ENV = "TUNECLUST_MLFLOW_WAIT_S"
FINAL_WAIT_S = 60.0
"""How long the end of a sweep waits for an away server to take the buffered calls (``$TUNECLUST_MLFLOW_WAIT_S``
overrides it)."""
POINTS_LOST_TAG = "tuneclust.mlflow_points_lost"


def unreachable(e: BaseException) -> bool:
    """True for an MLflow call that failed because the tracking server did not answer (refused, reset, timed
    out, 5xx after the client's retries), not because the call was wrong."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return str(e.message).startswith("API request to ") and " failed with " in str(e.message)
    return isinstance(e, OSError)  # requests' ConnectionError and Timeout are OSErrors


class Outbox:
    """MLflow calls in order: run now, or, while the server is away, buffered (at most :data:`MAX_BUFFERED`) and
    replayed in order once it answers again. A call is a function of no arguments that resolves run ids when it
    runs, so calls on a run created during the outage are replayed onto it."""

    def __init__(self, max_buffered: int = MAX_BUFFERED, probe_s: float = PROBE_S) -> None:
        self.queue: collections.deque = collections.deque()
        self.max_buffered = max_buffered
        self.probe_s = probe_s
        self.last_try = 0.0
        self.replayed = {"calls": 0, "points": 0}
        self.lost: dict[str, int] = {}

    def call(self, fn: Callable[[], Any], points: int = 0, key: str = "") -> None:
        """Run ``fn`` (``points`` metric points of ``key``'s run) after whatever is buffered; buffer it when the
        server is away; drop it if it carries points and the buffer is full."""
        if self.queue and time.monotonic() - self.last_try >= self.probe_s:
            self.replay()
        if not self.queue:
            try:
                fn()
                return
            except Exception as e:
                if not unreachable(e):
                    raise
                self.last_try = time.monotonic()
                first = first_line(e)
                print(
                    f"warning: MLflow unreachable ({first}); buffering its calls", file=sys.stderr, flush=True
                )
        if points and len(self.queue) >= self.max_buffered:
            self.lost[key] = self.lost.get(key, 0) + points
            return
        self.queue.append((fn, points))

    def replay(self) -> bool:
        """Run the buffered calls in order until one fails (server still away); True when none is left."""
        self.last_try = time.monotonic()
        had = len(self.queue)
        while self.queue:
            fn, points = self.queue[0]
            try:
                fn()
            except Exception as e:
                if not unreachable(e):
                    raise
                return False
            self.queue.popleft()
            self.replayed["calls"] += 1
            self.replayed["points"] += points
        if had:
            n = self.replayed
            print(f"MLflow reachable again: {n['calls']} buffered calls ({n['points']} metric points) replayed",
                  file=sys.stderr, flush=True)  # fmt: skip
        return True

    def drain(self, wait_s: float) -> int:
        """Replay what is buffered, trying for up to ``wait_s``; returns the calls still not made."""
        deadline = time.monotonic() + wait_s
        while self.queue and not self.replay() and time.monotonic() < deadline:
            time.sleep(min(self.probe_s, max(0.0, deadline - time.monotonic())))
        return len(self.queue)


def final_wait() -> float:
    """:data:`FINAL_WAIT_S`, or ``$TUNECLUST_MLFLOW_WAIT_S`` when set."""
    return env_seconds(FINAL_WAIT_ENV, FINAL_WAIT_S)


def limit_http_retries(uri: str) -> None:
    """:data:`MLFLOW_HTTP_LIMITS` for an http(s) tracking URI, where the environment does not set them."""
    if uri.startswith(("http://", "https://")):
        for k, v in MLFLOW_HTTP_LIMITS.items():
            os.environ.setdefault(k, v)


class MlflowTracker:
    """Parent run per sweep (spec as artifact); child run per trial with params, metric history and tags.

    Calls after the start go through an :class:`Outbox`: while the server is away they are buffered and replayed
    when it is back; :meth:`close` waits a bounded time for the rest and reports what could not be logged."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        sweep_dir: Path,
        spec_text: str,
        sweep_tags: dict[str, str],
        resume: bool,
        params: dict[str, Any] | None = None,
        note: str = "",
    ) -> None:
        import mlflow  # noqa: F401  (fail early with a clear ImportError)
        from mlflow.tracking import MlflowClient

        limit_http_retries(uri)
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.outbox = Outbox()
        self._spool = Path(tempfile.mkdtemp(prefix="tuneclust-mlflow-"))
        """Copies of the artifacts to log (the caller's files may be gone when a buffered call is replayed)."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.note = note
        self.bookkeeping: dict[str, dict[str, float]] = {}
        state_file = sweep_dir / MLFLOW_STATE
        self.children: dict[str, str] = {}
        if resume and state_file.exists():
            self.parent = json.loads(state_file.read_text())["parent_run_id"]
            self.client.update_run(self.parent, status="RUNNING")
            for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent}'",
                max_results=50000,
            ):
                self.children[run.data.tags["tuneclust.trial_id"]] = run.info.run_id
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=sweep_tags.get("tuneclust.sweep"),
                tags={**sweep_tags, **({NOTE: note} if note else {})},
            )
            self.parent = run.info.run_id
            self.client.log_text(self.parent, spec_text, "spec.yaml")
            self._log_params(self.parent, params or {})
            state = {"parent_run_id": self.parent, "tracking_uri": uri, "experiment_id": self.experiment_id}
            state_file.write_text(json.dumps(state))

    def start_trial(self, trial_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if trial_id in self.children:  # resumed: it was left KILLED by an interrupted run
            self.outbox.call(lambda: self._reopen(trial_id))
            return
        all_tags = {
            "mlflow.parentRunId": self.parent,
            "tuneclust.trial_id": trial_id,
            "status": "RUNNING",
            **tags,
        }
        str_tags = {k: str(v) for k, v in all_tags.items()}

        def create() -> None:
            if trial_id not in self.children:  # a restarted trial, or a replay: one run per trial
                # str values: a REST store refuses others (a sqlite store converts them)
                run = self.client.create_run(self.experiment_id, run_name=run_name, tags=str_tags)
                self.children[trial_id] = run.info.run_id

        def describe() -> None:
            run_id = self.children[trial_id]
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in str_tags.items()])
            self._log_params(run_id, params)

        self.outbox.call(create)
        self.outbox.call(describe)

    def _reopen(self, trial_id: str) -> None:
        self.client.update_run(self.children[trial_id], status="RUNNING")
        self.client.set_tag(self.children[trial_id], "status", "RUNNING")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params in batches of 100 (MLflow's limit per call); values cut at MLflow's 6000 characters."""
        from mlflow.entities import Param

        items = [Param(k, str(cell(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _run(self, trial_id: str) -> str | None:
        """The trial's run id; None for a trial never started here (its calls are skipped)."""
        return self.children.get(trial_id)

    def _known(self, trial_id: str) -> bool:
        """The trial has a run, or its creation is buffered."""
        return trial_id in self.children or bool(self.outbox.queue)

    def log_metrics(self, trial_id: str, values: dict[str, float], step: int) -> None:
        """Log a trial's scores at ``step`` (its epoch); bookkeeping values (:func:`is_bookkeeping`) are kept for
        its end tags."""
        from mlflow.entities import Metric

        if not self._known(trial_id):
            return
        now = int(time.time() * 1000)
        book = self.bookkeeping.setdefault(trial_id, {})
        book.update({k: v for k, v in values.items() if is_bookkeeping(k)})
        batch = [
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if not is_bookkeeping(k)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        ]
        for i in range(0, len(batch), 1000):
            part = batch[i : i + 1000]
            self.outbox.call(lambda p=part: self._on_run(trial_id, metrics=p), len(part), trial_id)

    def _on_run(self, trial_id: str, **batch: Any) -> None:
        if (run_id := self._run(trial_id)) is not None:
            self.client.log_batch(run_id, **batch)

    def set_trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        """Tags on a trial's child run (e.g. the runtime it actually used)."""
        from mlflow.entities import RunTag

        if self._known(trial_id):
            run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
            self.outbox.call(lambda: self._on_run(trial_id, tags=run_tags))

    def end_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        if not self._known(trial_id):
            return
        from mlflow.entities import RunTag

        tags = {"status": status, **({"error": error[:5000]} if error else {})}
        ending = {"TERMINATED": "FINISHED", "UNFINISHED": "KILLED"}.get(status, "FAILED")

        def end() -> None:
            if (run_id := self._run(trial_id)) is None:
                return
            lost = self.outbox.lost.get(trial_id)
            if lost:  # points dropped while the server was away (the buffer was full)
                tags[POINTS_LOST_TAG] = str(lost)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run_id, ending)

        self.outbox.call(end)

    def _spooled(self, files: list[Path], key: str) -> list[Path]:
        """Copies of ``files`` that outlive the caller's temp folder (a buffered call logs them later)."""
        folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self._spool))
        copies = []
        for path in files:
            copies.append(folder / path.name)
            shutil.copyfile(path, copies[-1])
        return copies

    def trial_summary(self, trial_id: str, figures: list[Path]) -> None:
        """Before a trial's run ends: its last bookkeeping values as ``final.<name>`` tags, and its
        figures as artifacts (``figures/``)."""
        if not self._known(trial_id):
            return
        from mlflow.entities import RunTag

        book = self.bookkeeping.pop(trial_id, {})
        tags = [RunTag(f"final.{k}", f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in book.items()]
        copies = self._spooled(figures, trial_id)

        def summary() -> None:
            if (run_id := self._run(trial_id)) is None:
                return
            if tags:
                self.client.log_batch(run_id, tags=tags)
            for path in copies:
                self.client.log_artifact(run_id, str(path), "figures")

        self.outbox.call(summary)

    def sweep_summary(self, ranking_markdown: str, files: list[Path], answer_markdown: str = "") -> None:
        """On the parent run: the answer and the ranking appended to its description, and the report's files as
        artifacts."""
        ranking = (
            f"## Answer\n\n{answer_markdown}\n\n## Ranking\n\n{ranking_markdown}"
            if answer_markdown
            else (f"## Ranking\n\n{ranking_markdown}")
        )
        note = f"{self.note}\n\n{ranking}" if self.note else ranking
        copies = self._spooled(files, "report")

        def summary() -> None:
            self.client.set_tag(self.parent, NOTE, note)
            for path in copies:
                self.client.log_artifact(self.parent, str(path), "report")

        self.outbox.call(summary)

    def end(self, summary: dict[str, float], status: str = "FINISHED") -> None:
        """End the parent run; summary metrics already logged with the same value (a resumed sweep) are not
        logged again."""

        def end() -> None:
            logged = self.client.get_run(self.parent).data.metrics
            fresh = {k: v for k, v in summary.items() if logged.get(k) != float(v)}
            if fresh:
                self._log_parent(fresh)
            self.client.set_terminated(self.parent, status)

        self.outbox.call(end)

    def log_metrics_parent(self, values: dict[str, float]) -> None:
        self.outbox.call(lambda: self._log_parent(values))

    def _log_parent(self, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if math.isfinite(float(v))]
        if metrics:
            self.client.log_batch(self.parent, metrics=metrics)

    def close(self, wait_s: float | None = None) -> str | None:
        """Replay what is still buffered (waiting up to ``wait_s``, default :func:`final_wait`, for the server);
        None when everything was logged, else one warning line naming what was not."""
        left = self.outbox.drain(final_wait() if wait_s is None else wait_s)
        lost = sum(self.outbox.lost.values()) + sum(p for _, p in self.outbox.queue)
        shutil.rmtree(self._spool, ignore_errors=True)
        if not left and not lost:
            return None
        return (
            f"warning: MLflow at {self.uri} was unreachable: {lost} metric points were not logged "
            f"({left} calls left unmade); the Parquet tables hold every evaluation"
        )
