"""One driver per sweep (issue 22): the lease on a local folder and on S3 (a moto server on 127.0.0.1), the CLI's
refusal and takeover, release on every exit path, and the MLflow server check before start. The slow tests run
real drivers as subprocesses: a second driver of a running sweep is refused; a SIGKILLed one is taken over."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import free_port, moto_s3, sweep_command

from tuneclust import lease
from tuneclust.cli import main
from tuneclust.storage import locate

BUCKET = "tuneclust-lease"
SPEC = """
name: {name}
method: idfd
data: {{name: digits, subsample: 200}}
budget: {{epochs: {epochs}, eval_every: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 1}}
search: {{tau: {{grid: [0.5, 1.0, 2.0]}}}}
max_concurrent: 1
tracking: {{mlflow: {{uri: "{uri}"}}}}
"""


@pytest.fixture(scope="module")
def s3_root():
    """A moto S3 server on 127.0.0.1 with one bucket; yields its storage URI."""
    with moto_s3(BUCKET) as port:
        yield f"s3://{BUCKET}/studies?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch) -> str:
    """A results root (a local folder, or a prefix in the moto bucket), with the lease's delays shortened."""
    monkeypatch.setenv("TUNECLUST_LEASE_SETTLE_S", "0.05")
    monkeypatch.setenv("TUNECLUST_LEASE_RENEW_S", "0.1")
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_root").replace("/studies?", f"/{uuid.uuid4().hex[:8]}?")


def _record(host: str, pid: int, age: float) -> dict:
    now = time.time()
    return {"host": host, "pid": pid, "started": now - 3600, "command": "python -m tuneclust sweep x.yaml",
            "token": "f" * 32, "heartbeat": now - age}  # fmt: skip


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_acquire_renew_refuse_release(root, capsys):
    folder = locate(root) / "sw"
    held = lease.acquire(folder, command="python -m tuneclust sweep s.yaml")
    try:
        first = lease.read(folder / lease.NAME)
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
        assert first["command"] == "python -m tuneclust sweep s.yaml" and len(first["token"]) == 32
        time.sleep(0.5)
        assert lease.read(folder / lease.NAME)["heartbeat"] > first["heartbeat"]  # renewed
        with pytest.raises(lease.LeaseError) as e:  # this process is alive: the lease is live
            lease.acquire(folder)
        line = str(e.value)
        assert "\n" not in line and len(line) <= 300, line
        for part in (f"pid {os.getpid()}", f"on host {socket.gethostname()}", "since ", "heartbeat 0 s ago",
                     "python -m tuneclust sweep s.yaml", "--takeover"):  # fmt: skip
            assert part in line, (part, line)
    finally:
        held.release()
    assert not (folder / lease.NAME).exists() and not folder.exists()  # the folder the lease made is gone too
    assert capsys.readouterr().err == ""
    lease.acquire(folder).release()


def test_stale_dead_and_forced_takeovers(root, capsys, monkeypatch):
    folder = locate(root) / "sw"
    loc = folder / lease.NAME
    monkeypatch.setenv("TUNECLUST_LEASE_STALE_S", "60")
    loc.write_text(json.dumps(_record("elsewhere", 4242, age=5)))  # live, on another host
    with pytest.raises(lease.LeaseError, match=r"pid 4242 on host elsewhere since .* \(heartbeat 5 s ago\)"):
        lease.acquire(folder)
    assert lease.read(loc)["token"] == "f" * 32  # untouched
    held = lease.acquire(folder, takeover=True)
    held.release()
    assert "--takeover: taking this sweep over from pid 4242 on host elsewhere" in capsys.readouterr().err
    assert not loc.exists()

    loc.write_text(json.dumps(_record("elsewhere", 4242, age=61)))  # no heartbeat for over a minute
    lease.acquire(folder).release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taking over a stale lease (no heartbeat for over 60 s; pid 4242" in err[0], err

    pid = _dead_pid()
    loc.write_text(json.dumps(_record(socket.gethostname(), pid, age=1)))  # fresh, but its process is gone
    lease.acquire(folder).release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"a driver that is gone (pid {pid} on host" in err[0], err


def test_a_reused_pid_is_not_the_driver_that_held_the_lease(root, capsys):
    # the lease names a live pid of this host, but that pid started later than the driver that wrote it
    folder = locate(root) / "sw"
    loc = folder / lease.NAME
    mine = {
        **_record(socket.gethostname(), os.getpid(), age=1),
        "pid_start": lease.process_start(os.getpid()),
    }
    assert mine["pid_start"] is not None and not lease.dead_here(mine)  # the same process: alive
    assert not lease.dead_here({**mine, "pid_start": None})  # a lease without a start time: the pid decides
    loc.write_text(json.dumps({**mine, "pid_start": "1"}))  # started at tick 1: not this process
    lease.acquire(folder).release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"a driver that is gone (pid {os.getpid()} on host" in err[0], err
    held = lease.acquire(folder)  # and a lease this driver writes records its own start time
    assert lease.read(loc)["pid_start"] == lease.process_start(os.getpid())
    held.release()


def test_a_replaced_token_stops_the_old_holders_heartbeat(root, capsys):
    folder = locate(root) / "sw"
    old = lease.acquire(folder)
    new = lease.acquire(folder, takeover=True)
    try:
        time.sleep(0.6)  # several renewals
        assert old.lost and not new.lost
        current = lease.read(folder / lease.NAME)
        assert (
            current["token"] == new.token and time.time() - current["heartbeat"] < 0.5
        )  # the new one renews
        err = capsys.readouterr().err
        assert "this sweep's lease was taken over by pid" in err and "no longer renewing it" in err, err
        old.release()  # not ours any more: left alone
        assert lease.read(folder / lease.NAME)["token"] == new.token
    finally:
        new.release()
    assert not (folder / lease.NAME).exists()


def test_a_later_writer_within_the_settle_window_wins(root, monkeypatch):
    """Write-then-verify: another driver that found no lease either and writes while this one waits to read its
    lease back holds the lease; this one refuses, naming it."""
    monkeypatch.setenv("TUNECLUST_LEASE_SETTLE_S", "1.0")
    folder = locate(root) / "sw"
    outcome: list[object] = []

    def drive() -> None:
        try:
            outcome.append(lease.acquire(folder))
        except lease.LeaseError as e:
            outcome.append(e)

    t = threading.Thread(target=drive)
    t.start()
    time.sleep(0.3)
    (folder / lease.NAME).write_text(json.dumps(_record("other-host", 777, age=0)))
    t.join()
    assert isinstance(outcome[0], lease.LeaseError), outcome
    assert "another driver took this sweep at the same time: pid 777 on host other-host" in str(outcome[0])
    assert lease.read(folder / lease.NAME)["token"] == "f" * 32


def test_overwrite_keeps_the_lease_and_a_lease_alone_is_no_results(root):
    """``--overwrite`` clears the folder but the lease (and a heartbeat's temp file); the lease alone (left by a
    driver killed before it wrote anything) is not "results" that would need --resume or --overwrite."""
    folder = locate(root) / "sw"
    (folder / lease.NAME).write_text("{}")
    assert not folder.has_children(ignore=(lease.NAME,))
    (folder / "tables" / "epochs" / "t.parquet").write_text("x")
    (folder / "spec.yaml").write_text("x")
    (folder / f".{lease.NAME}.0123.tmp").write_text("x")  # what Location.write_bytes renames over it locally
    assert folder.has_children(ignore=(lease.NAME,))
    folder.clear(keep=(lease.NAME,))
    assert not folder.has_children(ignore=(lease.NAME,)) and (folder / lease.NAME).exists()
    assert (folder / f".{lease.NAME}.0123.tmp").exists() and not (folder / "spec.yaml").exists()


def _spec(tmp_path: Path, name: str = "s", epochs: int = 2, uri: str | None = None) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(SPEC.format(name=name, epochs=epochs, uri=uri or f"sqlite:///{tmp_path / 'mlflow.db'}"))
    return p


def test_cli_refuses_a_live_lease_in_one_line_and_writes_nothing(root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path)
    loc = locate(root) / "s" / lease.NAME
    text = json.dumps(_record("gpu-box-7", 31337, age=2))
    loc.write_text(text)
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["sweep", str(spec), "--storage", root, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and len(err[0]) <= 300, err
        assert "pid 31337 on host gpu-box-7" in err[0] and "python -m tuneclust sweep x.yaml" in err[0], err
        assert "rerun with --takeover" in err[0], err
        assert loc.read_text() == text and [p.name for p in (locate(root) / "s").files()] == [lease.NAME]
    assert not (tmp_path / "mlflow.db").exists()
    # --takeover takes it (and says from whom); here the sweep then stops at once: nothing to resume
    assert main(["sweep", str(spec), "--storage", root, "--resume", "--takeover"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 2 and "--takeover: taking this sweep over from pid 31337 on host gpu-box-7" in err[0]
    ), err
    assert "nothing to resume" in err[1] and not loc.exists(), err


def test_the_lease_is_released_on_errors_and_ctrl_c(tmp_path, monkeypatch):
    from tuneclust import sweep
    from tuneclust.spec import load_spec

    monkeypatch.setenv("TUNECLUST_LEASE_SETTLE_S", "0.05")
    spec = load_spec(_spec(tmp_path), [f"storage={tmp_path / 'runs'}"])
    out = tmp_path / "runs" / "s"
    seen = []

    def stop(exc: BaseException):
        def prepare(_spec):
            seen.append(lease.read(locate(out) / lease.NAME))  # held while the sweep starts
            raise exc

        return prepare

    for exc in (sweep.SweepError("data: offline"), KeyboardInterrupt(), RuntimeError("a bug")):
        monkeypatch.setattr(sweep, "_prepare_data", stop(exc))
        with pytest.raises(type(exc)):
            sweep.run_sweep(spec, verbose=0)
        assert seen[-1] is not None and seen[-1]["pid"] == os.getpid()
        assert not out.exists(), type(exc)  # lease gone, and the folder it made
    with pytest.raises(sweep.SweepError, match="nothing to resume"):
        sweep.run_sweep(spec, resume=True, verbose=0)
    assert not out.exists()
    calls, real_read = [], lease.read

    def interrupted_read_back(loc):  # Ctrl-C while the new lease settles, before it is read back
        calls.append(loc)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_read(loc)

    monkeypatch.setattr(lease, "read", interrupted_read_back)
    with pytest.raises(KeyboardInterrupt):
        lease.acquire(locate(out))
    assert len(calls) == 3 and not out.exists()  # the third read: release found its own token and deleted it


class _Health(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.code if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_mlflow_server_must_answer_before_start(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"
    spec = _spec(tmp_path, uri=closed)
    t0 = time.time()
    assert main(["sweep", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) <= 300, err
    assert f"the MLflow server at {closed} is not reachable" in err[0] and "refused" in err[0], err
    assert time.time() - t0 < 20 and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]

    from tuneclust.preflight import PreflightError, check_mlflow_server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        check_mlflow_server(url)
        check_mlflow_server(url + "/")
        _Health.code = 503
        with pytest.raises(PreflightError, match="not reachable \\(HTTP 503"):
            check_mlflow_server(url)
    finally:
        _Health.code = 200
        server.shutdown()


def _driver(spec: Path, storage: Path, *extra: str) -> list[str]:
    return sweep_command(spec, "--storage", str(storage), *extra)


def _env() -> dict[str, str]:
    return {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "TUNECLUST_LEASE_SETTLE_S": "0.2"}


def _wait(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the first driver ended too early"
    assert cond(), "the first driver made no progress in time"


def _children(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow  # two real drivers in subprocesses: about a minute
def test_a_second_driver_is_refused_while_the_first_runs(tmp_path):
    import pandas as pd

    spec, storage, out = _spec(tmp_path, "two", epochs=6), tmp_path / "runs", tmp_path / "runs" / "two"
    first = subprocess.Popen(_driver(spec, storage), env=_env(), start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait(lambda: (out / lease.NAME).exists() and (out / "tuner.pkl").exists(), first)
        second = subprocess.run(_driver(spec, storage, "--resume"), env=_env(), capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "this sweep is running: pid" in err[0], err
        assert f"pid {first.pid} on host {socket.gethostname()}" in err[0] and "--takeover" in err[0], err
        stdout, stderr = first.communicate(timeout=400)
        assert first.returncode == 0, stderr[-2000:]
        assert "3 trials: 3 finished, 0 errored, 0 unfinished" in stdout
        assert not (out / lease.NAME).exists()
    finally:
        if first.poll() is None:  # a failed assertion: do not leave the driver (and its Ray) running
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", "two")
    ids = [r.data.tags["tuneclust.trial_id"] for r in children]
    assert len(ids) == 3 and len(set(ids)) == 3, ids  # one child run per trial: nothing ran twice
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials["trial_id"]) == set(ids) and (trials["status"] == "TERMINATED").all()


@pytest.mark.slow  # a driver killed mid-sweep and resumed: about a minute
def test_resume_takes_over_the_lease_of_a_killed_driver(tmp_path):
    import pandas as pd

    from tuneclust.tables import read_tables

    spec, storage, out = _spec(tmp_path, "kill", epochs=12), tmp_path / "runs", tmp_path / "runs" / "kill"
    proc = subprocess.Popen(_driver(spec, storage), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def finished() -> int:
        try:
            return len(read_tables(out)[0])
        except Exception:
            return 0

    _wait(lambda: finished() >= 1, proc)
    time.sleep(1.5)  # Ray's experiment state is saved every second here
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lease.read(locate(out) / lease.NAME)["pid"] == proc.pid  # a SIGKILLed driver cannot release it
    r = subprocess.run(_driver(spec, storage, "--resume"), env=_env(), capture_output=True, text=True,
                       timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [ln for ln in r.stderr.splitlines() if "taking over the lease of a driver that is gone" in ln]
    assert len(warned) == 1 and f"pid {proc.pid} on host" in warned[0], r.stderr[-2000:]
    assert "3 trials: 3 finished, 0 errored, 0 unfinished" in r.stdout
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == tuple(range(1, 13))).all()
    assert not (out / lease.NAME).exists()


@pytest.mark.slow  # two real drivers in subprocesses: about a minute
def test_a_driver_whose_lease_is_taken_over_stops_without_writing(tmp_path):
    """``--takeover`` while the first driver runs: the first stops within a heartbeat, with one line and exit
    code 3, and writes nothing more; the second finishes the sweep, every epoch of every trial recorded once."""
    import pandas as pd

    from tuneclust.sweep import EXIT_DISPLACED
    from tuneclust.tables import read_tables

    spec, storage, out = _spec(tmp_path, "over", epochs=40), tmp_path / "runs", tmp_path / "runs" / "over"
    env = {**_env(), "TUNECLUST_LEASE_RENEW_S": "0.5"}
    first = subprocess.Popen(_driver(spec, storage), env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip

    def finished() -> int:
        try:
            return len(read_tables(out)[0])
        except Exception:
            return 0

    procs = [first]
    try:
        _wait(lambda: finished() >= 1, first)
        time.sleep(1.5)  # Ray's experiment state is saved every second here
        second = subprocess.Popen(_driver(spec, storage, "--resume", "--takeover"), env=env,
                                  start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)  # fmt: skip
        procs.append(second)
        _, err = first.communicate(timeout=120)
        stdout, stderr = second.communicate(timeout=400)
    finally:
        for p in procs:  # a failed wait: do not leave a driver (and its Ray) running
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert first.returncode == EXIT_DISPLACED, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "this sweep's lease was taken over by pid" in lines[0], err[-2000:]
    assert f"pid {second.pid} on host" in lines[0] and "stops without writing" in lines[0], lines
    assert second.returncode == 0, stderr[-2000:]
    assert "--takeover: taking this sweep over from pid" in stderr
    assert "3 trials: 3 finished, 0 errored, 0 unfinished" in stdout
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(list).map(sorted).map(tuple).unique()) == [
        tuple(range(1, 41))
    ], epochs.groupby("trial_id")["epoch"].apply(list)  # each trial's 40 epochs, none twice
    assert not (out / lease.NAME).exists()
