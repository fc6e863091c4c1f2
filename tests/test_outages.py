"""Outages mid-sweep (issue 22): the S3 endpoint or the MLflow server unreachable for a minute, then back.

The driver runs as a subprocess (``python -m tuneclust sweep``) so it can fail and be resumed as a user would.
S3 is a moto server behind a loopback :class:`conftest.TcpProxy` (cut and restored; the data survives); MLflow is a
real ``mlflow server`` (:class:`conftest.MlflowServer`, killed and restarted on the same port and database).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer, TcpProxy, moto_s3

from tuneclust.storage import locate
from tuneclust.tables import read_tables

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "tuneclust-outage"
OUTAGE_S = 60
SPEC = """
name: {name}
method: idfd
data: {{name: digits, subsample: 200}}
budget: {{epochs: {epochs}, eval_every: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 1}}
search:
  tau: {{grid: {taus}}}
max_concurrent: 1
tracking: {{mlflow: {{uri: "{uri}"}}}}
"""


def _spec(tmp_path: Path, name: str, epochs: int, taus: list[float], uri: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(SPEC.format(name=name, epochs=epochs, taus=taus, uri=uri))
    return p


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.environ.get("TUNECLUST_OUTAGE_SRC", str(ROOT)),  # another checkout's code: main's
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "HOME": str(tmp_path / "home"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **extra,
    }


def _epoch_rows(sweep) -> pd.DataFrame:
    try:
        return read_tables(sweep)[1]
    except Exception:  # noqa: BLE001 (nothing finished yet, or the store is cut)
        parts = locate(sweep) / "tables" / "epochs"
        try:
            frames = [pd.read_parquet(p.uri if not p.local else p.path) for p in parts.files(".parquet")]
        except Exception:  # noqa: BLE001
            return pd.DataFrame()
        return pd.concat(frames) if frames else pd.DataFrame()


def _wait_rows(sweep, proc: subprocess.Popen, rows: int, timeout: float = 240) -> pd.DataFrame:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        df = _epoch_rows(sweep)
        if len(df) >= rows:
            return df
        time.sleep(0.5)
    _, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
    raise AssertionError(f"the sweep made no progress in time (rc {proc.poll()}): {err[-3000:]}")


def _finish(proc: subprocess.Popen, cmd: list[str], env: dict, cwd: Path) -> tuple[str, str]:
    """The driver's end; when it stopped, its last line is one line naming --resume, and --resume completes."""
    out, err = proc.communicate(timeout=400)
    (cwd / "driver.err").write_text(err)
    resumed = ""
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert "--resume" in last and len(last) <= 300, (proc.returncode, err[-4000:])
        r = subprocess.run([*cmd, "--resume"], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-4000:]
        resumed = r.stdout
    return out + resumed, err


def _check_tables(sweep, epochs: int, trials: int, before: pd.DataFrame) -> pd.DataFrame:
    """Every trial TERMINATED, every (trial, epoch) once, and trials finished before the outage not run again."""
    done, rows = read_tables(sweep)
    assert len(done) == trials and (done["status"] == "TERMINATED").all(), done[["status", "error"]]
    assert not rows.duplicated(["trial_id", "epoch"]).any()
    assert (rows.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == tuple(range(1, epochs + 1))).all()
    assert len(rows) == trials * epochs
    kept = rows.set_index(["trial_id", "epoch"]).loc[before.set_index(["trial_id", "epoch"]).index]
    assert (kept["time_total_s"].values == before["time_total_s"].values).all(), "a finished trial was rerun"
    return rows


@pytest.fixture
def s3_proxy():
    """A moto S3 server on 127.0.0.1 with a bucket, behind a :class:`TcpProxy`. Yields (proxy, URI through the
    proxy, URI straight to moto: the test reads through that one while the proxy is cut)."""
    with moto_s3(BUCKET) as port:
        proxy = TcpProxy(port)
        proxy.start()
        q = "scheme=http&region=us-east-1"
        try:
            yield (
                proxy,
                f"s3://{BUCKET}/studies?endpoint_override=127.0.0.1:{proxy.port}&{q}",
                f"s3://{BUCKET}/studies?endpoint_override=127.0.0.1:{port}&{q}",
            )
        finally:
            proxy.stop()


@pytest.mark.slow  # a minute of outage in a sweep: about two and a half minutes (CI runs -m slow)
def test_s3_outage_mid_sweep(tmp_path, s3_proxy):
    """The S3 endpoint cut for 60 s after some epochs are recorded, then restored: the sweep completes (riding it
    out, or stopping with one line and completing on --resume) with every (trial, epoch) once."""
    proxy, storage, direct = s3_proxy
    epochs, taus = 8, [0.5, 1.0, 2.0]
    spec = _spec(tmp_path, "s3cut", epochs, taus, f"sqlite:///{tmp_path / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(spec), "--storage", storage, "--quiet"]
    env = _env(tmp_path)
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sweep = locate(direct) / "s3cut"
    before = _wait_rows(sweep, proc, epochs + 2)  # one trial finished, the next one under way
    proxy.stop()
    time.sleep(OUTAGE_S)
    during = _epoch_rows(sweep)
    proxy.start()
    out, err = _finish(proc, cmd, env, tmp_path)
    finished = before.groupby("trial_id")["epoch"].count()
    rows = _check_tables(
        sweep, epochs, len(taus), before[before["trial_id"].isin(finished[finished == epochs].index)]
    )
    print(f"epochs recorded {len(rows)} ({len(before)} before the cut, {len(during)} at its end); driver exit "
          f"{proc.returncode}; {err.count('warning: storage unreachable')} retried storage calls")  # fmt: skip


@pytest.mark.slow  # a sweep stopped by an outage and resumed: about two minutes (CI runs -m slow)
def test_s3_outage_longer_than_the_retries_stops_with_one_line_and_resumes(tmp_path, s3_proxy):
    """Storage away for longer than the retries allow (5 s here): the driver stops with one line naming --resume,
    and --resume, once storage is back, completes the sweep with every (trial, epoch) once."""
    proxy, storage, direct = s3_proxy
    epochs, taus = 6, [0.5, 1.0]
    spec = _spec(tmp_path, "s3long", epochs, taus, f"sqlite:///{tmp_path / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(spec), "--storage", storage, "--quiet"]
    env = _env(tmp_path, TUNECLUST_STORAGE_RETRY_S="5")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sweep = locate(direct) / "s3long"
    before = _wait_rows(sweep, proc, epochs + 1)
    proxy.stop()
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        proxy.start()
    (tmp_path / "driver.err").write_text(err)
    last = err.strip().splitlines()[-1]
    print(f"driver exit {proc.returncode} with {len(before)} epochs recorded: {last}")
    assert proc.returncode == 2 and len(last) <= 300, err[-4000:]
    assert last.startswith("error: storage unreachable for over 5 s") or "storage unreachable" in last, last
    assert last.endswith("rerun the same command with --resume"), last
    r = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    finished = before.groupby("trial_id")["epoch"].count()
    _check_tables(
        sweep, epochs, len(taus), before[before["trial_id"].isin(finished[finished == epochs].index)]
    )


@pytest.mark.slow  # a minute of outage in a sweep: about two and a half minutes (CI runs -m slow)
def test_mlflow_server_killed_mid_sweep(tmp_path):
    """The MLflow server killed for 60 s after some epochs are logged, then restarted on the same port and
    database: the sweep does not fail, the tables are complete, and the points logged meanwhile are filled in."""
    import re

    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        epochs, taus = 8, [0.5, 1.0, 2.0]
        spec = _spec(tmp_path, "mlcut", epochs, taus, server.uri)
        runs_dir = tmp_path / "runs"
        cmd = [sys.executable, "-m", "tuneclust", "sweep", str(spec), "--storage", str(runs_dir), "--quiet"]
        env = _env(tmp_path, TUNECLUST_MLFLOW_WAIT_S="240")  # the sweep may end before the server is back
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        sweep = runs_dir / "mlcut"
        before = _wait_rows(sweep, proc, epochs + 2)
        server.stop()
        time.sleep(OUTAGE_S)
        during = len(_epoch_rows(sweep))
        server.start()
        out, err = proc.communicate(timeout=400)
        (tmp_path / "driver.err").write_text(err)
        replayed = re.search(
            r"MLflow reachable again: (\d+) buffered calls \((\d+) metric points\) replayed", err
        )
        print(f"epochs recorded: {len(before)} before the kill, {during} at its end; driver exit {proc.returncode}; "
              f"{replayed.group(0) if replayed else 'nothing replayed'}")  # fmt: skip
        assert proc.returncode == 0, err[-4000:]
        finished = before.groupby("trial_id")["epoch"].count()
        rows = _check_tables(
            sweep, epochs, len(taus), before[before["trial_id"].isin(finished[finished == epochs].index)]
        )
        assert len(rows) == epochs * len(taus)
        # the driver went on recording while MLflow was away (it did not sit in the client's retries)
        assert during >= len(before) + 3, (len(before), during)
        assert replayed and int(replayed.group(2)) > 0, err[-3000:]
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("mlcut")
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == len(taus) and all(r.info.status == "FINISHED" for r in children)
        assert all(r.info.status == "FINISHED" for r in runs)
        for r in children:
            steps = _history(client, r.info.run_id, "acc")
            assert sorted(set(steps)) == list(range(1, epochs + 1)), steps  # a call cut mid-way may log twice
            assert "tuneclust.mlflow_points_lost" not in r.data.tags
    finally:
        server.stop()


# ---- pieces, in seconds (default suite) ----


def test_retrying_rides_out_transient_errors_within_its_budget(capsys):
    from tuneclust.storage import retry_limit, retrying

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OSError(
                "AWS Error NETWORK_CONNECTION during PutObject operation: Could not connect to server"
            )
        return "ok"

    assert retrying(flaky, "writing x", budget_s=10) == "ok"
    assert len(calls) == 3 and 1.4 <= calls[-1] - calls[0] < 3  # waits 0.5 s, then 1 s
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("warning: storage unreachable (writing x): AWS Error"), err
    assert "reachable again" in err[1]

    def down():
        calls.append(time.monotonic())
        raise OSError("Could not connect to server")

    calls.clear()
    with pytest.raises(OSError, match="Could not connect"):
        retrying(down, "writing y", budget_s=2)
    assert (
        calls[-1] - calls[0] < 2 and len(calls) == 3
    )  # 0.5 + 1 s waited; the next wait would pass the budget
    calls.clear()
    with retry_limit(0), pytest.raises(OSError):
        retrying(down, "writing z")
    assert len(calls) == 1
    for permanent in (FileNotFoundError("gone"), PermissionError("no"), ValueError("bad")):

        def fails(e=permanent):
            calls.append(1)
            raise e

        calls.clear()
        with pytest.raises(type(permanent)):
            retrying(fails, "reading", budget_s=10)
        assert len(calls) == 1  # not worth retrying


def test_storage_writes_ride_out_a_cut_endpoint(s3_proxy, capsys):
    """A part file written while the S3 endpoint is cut lands once it is back; reads wait for it too."""
    import threading

    proxy, storage, direct = s3_proxy
    loc = locate(storage) / "x" / "part.bin"
    loc.write_bytes(b"before")
    proxy.stop()
    threading.Timer(8.0, proxy.start).start()  # longer than pyarrow's own retries
    t0 = time.monotonic()
    loc.write_bytes(b"during")
    assert 7.5 < time.monotonic() - t0 < 30
    assert (locate(direct) / "x" / "part.bin").read_bytes() == b"during"
    assert "warning: storage unreachable (writing s3://" in capsys.readouterr().err


def _history(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_mlflow_calls_during_an_outage_are_replayed(tmp_path, capsys):
    """A real mlflow server made unreachable (a cut :class:`TcpProxy` in front of it: a restart costs tens of
    seconds here; the slow test kills and restarts it) while a trial logs: the calls made meanwhile return at once
    (no minutes of client retries) and are replayed in order when it is back, onto a run created during the
    outage too; the buffer is bounded, and the points beyond it are tagged on their run and named at the end."""
    from mlflow.tracking import MlflowClient

    from tuneclust.tracking import POINTS_LOST_TAG, MlflowTracker

    server = MlflowServer(tmp_path)
    server.start()
    proxy = TcpProxy(server.port)
    proxy.start()
    uri = f"http://127.0.0.1:{proxy.port}"
    try:
        t = MlflowTracker(uri, "outage", tmp_path, "name: x\n", {"tuneclust.sweep": "x"}, resume=False)
        t.outbox.probe_s, t.outbox.max_buffered = 60, 5  # no probes during the outage
        t.start_trial("a", "a", {"tau": 1.0}, {})
        t.log_metrics("a", {"acc": 0.1, "epoch": 1}, step=1)
        proxy.stop()
        t0 = time.monotonic()
        for step in (2, 3):
            t.log_metrics("a", {"acc": 0.1 * step, "epoch": step}, step=step)
        t.start_trial("b", "b", {"tau": 2.0}, {})  # created while the server is away
        t.log_metrics("b", {"acc": 0.5}, step=1)
        t.log_metrics("a", {"acc": 0.4}, step=4)  # the buffer is full: dropped, counted
        t.end_trial("a", "TERMINATED")
        assert time.monotonic() - t0 < 15, "the client retried for too long"
        assert len(t.outbox.queue) == 6 and t.outbox.lost == {"a": 1}
        proxy.start()
        t.outbox.last_try -= 60  # the probe interval has passed
        t.log_metrics("b", {"acc": 0.6}, step=2)  # the next call replays the buffer first
        assert not t.outbox.queue and t.outbox.replayed == {"calls": 6, "points": 3}
        t.end_trial("b", "TERMINATED")
        t.end({"trials": 2})
        assert "1 metric points were not logged" in t.close(wait_s=5)
        client = MlflowClient(server.uri)
        runs = {r.data.tags["tuneclust.trial_id"]: r for r in client.search_runs([t.experiment_id])
                if "tuneclust.trial_id" in r.data.tags}  # fmt: skip
        assert sorted(runs) == ["a", "b"]
        assert _history(client, runs["a"].info.run_id, "acc") == [1, 2, 3]
        assert _history(client, runs["b"].info.run_id, "acc") == [1, 2]
        assert runs["b"].data.params == {"tau": "2.0"}
        assert runs["a"].data.tags[POINTS_LOST_TAG] == "1" and POINTS_LOST_TAG not in runs["b"].data.tags
        assert all(r.info.status == "FINISHED" for r in runs.values())
        err = capsys.readouterr().err
        assert err.count("warning: MLflow unreachable") == 1 and "6 buffered calls (3 metric points)" in err
    finally:
        proxy.stop()
        server.stop()


FLAKY = '''
from pathlib import Path

from tuneclust.methods.idfd import IDFD


class Flaky(IDFD):
    """IDFD whose tau=1 trial fails at the end of epoch 2 while a marker file exists (an outage's stand-in)."""

    name = "flaky"

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.epoch == 1 and self.cfg.tau == 1.0 and Path({marker!r}).exists():
            raise RuntimeError("flaky: the marker file is there")
'''


@pytest.mark.slow  # three drivers in subprocesses: about a minute and a half
def test_errored_trials_run_again_with_retry_errored(tmp_path):
    """A trial that failed (storage retries run out, a node's fault) ends ERROR; ``--resume`` leaves it so and says
    how to rerun it; ``--resume --retry-errored`` runs it again from its last checkpoint: every epoch once,
    status TERMINATED, no error, its MLflow run FINISHED."""
    from mlflow.tracking import MlflowClient

    work, marker = tmp_path / "work", tmp_path / "marker"
    work.mkdir()
    marker.touch()
    (work / "flaky.py").write_text(FLAKY.format(marker=str(marker)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path, "retry", epochs=4, taus=[0.5, 1.0], uri=uri)
    spec.write_text(spec.read_text().replace("method: idfd", "method: 'flaky:Flaky'"))
    env = {**_env(tmp_path), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "tuneclust",
        "sweep",
        str(spec),
        "--storage",
        str(tmp_path / "runs"),
        "--quiet",
    ]
    out = tmp_path / "runs" / "retry"

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *extra], cwd=work, env=env, capture_output=True, text=True, timeout=400)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 trials: 1 finished, 1 errored, 0 unfinished" in first.stdout
    assert "run again with: " in first.stdout and "--resume --retry-errored" in first.stdout
    trials = pd.read_parquet(out / "trials.parquet").set_index("config.tau")
    assert (
        trials.loc[1.0, "status"] == "ERROR" and "flaky: the marker file is there" in trials.loc[1.0, "error"]
    )
    marker.unlink()  # the cause is gone
    plain = run("--resume")
    assert plain.returncode == 0 and "1 errored" in plain.stdout, plain.stderr[-3000:]
    assert pd.read_parquet(out / "trials.parquet").set_index("config.tau").loc[1.0, "status"] == "ERROR"
    assert run("--retry-errored").returncode == 2  # needs --resume
    again = run("--resume", "--retry-errored")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 trials: 2 finished, 0 errored, 0 unfinished" in again.stdout
    trials = pd.read_parquet(out / "trials.parquet").set_index("config.tau")
    assert (trials["status"] == "TERMINATED").all() and trials["error"].isna().all(), trials.to_string()
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple)) == [(1, 2, 3, 4)] * 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("retry")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
