"""Multi-node, offline: a real Ray cluster on this machine (a head with no CPUs for trials + two 1-CPU worker
nodes, its own temp dir and ports) and a real S3 server (moto) on 127.0.0.1 as ``storage: s3://...``.

The sweep's driver runs as a subprocess (``python -m tuneclust sweep SPEC --address ... --storage s3://...``),
so it can be killed like a researcher's terminal; results must all be in the bucket and nowhere local.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from conftest import moto_s3, ray_cluster, sweep_command

from tuneclust.cli import main
from tuneclust.data.registry import DataConfig, load_dataset
from tuneclust.storage import StorageError, check_storage, locate
from tuneclust.tables import read_tables

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "tuneclust-test"
SPEC = """
name: {name}
method: idfd
data: {{name: npz, root: digits.npz}}
budget: {{epochs: {epochs}, eval_every: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 2}}
search:
  tau: {{grid: {taus}}}
max_failures: 2
tracking: {{mlflow: {{uri: "{uri}"}}}}
"""


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; credentials through the environment (inherited by the
    Ray nodes started afterwards, so trials on worker nodes reach it too). Yields the storage URI."""
    with moto_s3(BUCKET) as port:
        yield f"s3://{BUCKET}/studies?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


@pytest.fixture(scope="module")
def cluster(s3):
    """Head (0 CPUs: the driver only) + 2 worker nodes of 1 CPU (:func:`conftest.ray_cluster`)."""
    with ray_cluster("tc") as c:
        yield c, list(c.worker_nodes)


def _spec(tmp_path: Path, name: str, epochs: int, taus: list[float]) -> Path:
    """A spec whose data is ``digits.npz`` relative to the driver's working folder (``work/``): only the
    driver can read it (trials run in Ray's trial folders on other nodes), so the trials' data must come
    through Ray's object store."""
    work = tmp_path / "work"
    work.mkdir()
    ds = load_dataset(DataConfig(name="digits", subsample=200))
    np.savez(work / "digits.npz", X=ds.x.numpy(), y=ds.y)
    p = tmp_path / f"{name}.yaml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p.write_text(SPEC.format(name=name, epochs=epochs, taus=taus, uri=uri))
    return p


def _sweep_cmd(spec: Path, address: str, storage: str, *extra: str) -> list[str]:
    return sweep_command(spec, "--address", address, "--storage", storage, *extra)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "HOME": str(tmp_path / "home"),
    }


def _keys(storage: str, name: str) -> list[str]:
    loc = locate(storage) / name
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    return [i.path[len(loc.path) + 1 :] for i in infos if i.type == pafs.FileType.File]


def _count(storage: str, name: str, sub: str) -> int:
    return len((locate(storage) / name / "tables" / sub).files(".parquet"))


def _wait(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    assert cond(), "the sweep made no progress in time"


def _no_local_results(work: Path) -> None:
    made = [p.name for p in work.rglob("*") if p.name != "digits.npz"]
    assert not made, f"results were written locally: {made}"


def _mlflow_steps(tmp_path: Path, experiment: str) -> dict[str, list[int]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    return {
        r.data.tags["tuneclust.trial_id"]: sorted(
            m.step for m in client.get_metric_history(r.info.run_id, "acc")
        )
        for r in runs
    }


def test_storage_uris_are_checked_without_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert check_storage("s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http")
    with pytest.raises(StorageError, match="unknown storage scheme 'foo'"):
        check_storage("foo://bucket/x")
    good = SPEC.format(name="bad", epochs=1, taus=[1.0], uri="sqlite:///x.db").replace(
        "{name: npz, root: digits.npz}", "{name: digits, subsample: 100}"
    )
    (tmp_path / "ok.yaml").write_text(good)
    (tmp_path / "bad.yaml").write_text(good + "storage: gcsx://b/x\n")
    assert main(["validate", str(tmp_path / "ok.yaml")]) == 0
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "bad.yaml")]) == 2
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    assert main(["sweep", str(tmp_path / "ok.yaml"), "--storage", "nope://b/x"]) == 2
    assert main(["report", "nope://b/x/bad"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all("storage scheme" in e for e in errors), errors
    assert "bad.yaml" in errors[0] and "storage" in errors[0]
    # nothing written: no results, no `s3:`/`gcsx:` folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "ok.yaml"]


@pytest.mark.slow  # a driver in a subprocess, killed and resumed: over a minute (CI runs -m slow)
def test_sweep_on_workers_into_s3_survives_a_killed_driver(cluster, s3, tmp_path):
    c, _ = cluster
    # 6 epochs: long enough that an idle machine is still training when the driver is killed
    spec, work = _spec(tmp_path, "kill", epochs=6, taus=[0.5, 1.0, 2.0, 4.0]), tmp_path / "work"
    cmd, env = _sweep_cmd(spec, c.address, s3), _env(tmp_path)
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait(lambda: _count(s3, "kill", "trials") >= 1, proc)
    time.sleep(3)  # Ray's experiment state is saved every second here
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before, _ = read_tables(locate(s3) / "kill")  # the per-trial parts a killed driver left
    assert 1 <= len(before) < 4
    r = subprocess.run([*cmd, "--resume"], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    trials, epochs = read_tables(locate(s3) / "kill")
    assert len(trials) == 4 and trials["trial_id"].is_unique, trials
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]].to_string()
    kept = trials.set_index("trial_id").loc[before["trial_id"], "wall_time_s"]
    assert (kept.values == before["wall_time_s"].values).all(), "a finished trial was run again"
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == tuple(range(1, 7))).all()
    assert len(epochs) == 24
    keys = _keys(s3, "kill")
    for k in ("spec.yaml", "tuner.pkl", "mlflow.json", "trials.parquet", "epochs.parquet"):
        assert k in keys
    for t in trials["trial_id"]:
        assert f"tables/epochs/{t}.parquet" in keys and f"tables/trials/{t}.parquet" in keys
        assert any(k.startswith(f"{t}/checkpoint_") and k.endswith("trial_state.pt") for k in keys)
    whole = pd.read_parquet(
        pafs.FileSystem.from_uri(s3)[0].open_input_file(f"{BUCKET}/studies/kill/epochs.parquet")
    )
    assert len(whole) == 24  # the consolidated table is complete too
    _no_local_results(work)
    assert main(["report", str(locate(s3) / "kill"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "ranking.csv").exists()


def test_losing_a_worker_node_restarts_its_trials_from_checkpoints(cluster, s3, tmp_path):
    c, workers = cluster
    spec, work = _spec(tmp_path, "node", epochs=3, taus=[0.5, 1.0]), tmp_path / "work"
    cmd, env = _sweep_cmd(spec, c.address, s3), _env(tmp_path)
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait(lambda: _count(s3, "node", "epochs") >= 2, proc)  # both workers are running a trial
    c.remove_node(workers[1])
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    trials, epochs = read_tables(locate(s3) / "node")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == (1, 2, 3)).all()
    failed = [k for k in _keys(s3, "node") if k.endswith("error.txt")]
    assert failed, "no trial was interrupted by the node loss"
    # Both trials had a checkpoint when the node went (each had reported epoch 1): a trial restarted from scratch
    # would report epoch 1 again. (An epoch reported but not yet checkpointed when the node died is trained and
    # reported again; the tables keep the last report of each epoch, MLflow's history shows both.)
    steps = _mlflow_steps(tmp_path, "node")
    assert len(steps) == 2 and all(s.count(1) == 1 and set(s) == {1, 2, 3} for s in steps.values()), steps
    _no_local_results(work)


def test_cluster_yaml_passes_rays_own_validation():
    import ray
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    workers = [t for n, t in config["available_node_types"].items() if n != "head"]
    assert workers and all(t["min_workers"] == 0 for t in workers)
    pinned = (ROOT / "requirements" / "constraints.txt").read_text()
    assert f"ray=={ray.__version__}" in pinned and config["docker"]["image"].startswith(
        f"rayproject/ray:{ray.__version__}-"
    )
    assert "-c requirements/constraints.txt" in " ".join(config["setup_commands"])
    assert {"**/.venv", "**/runs/**", "**/data/**"} <= set(config["rsync_exclude"])


def test_a_deleted_checkpoint_resolves_to_the_registered_one_on_s3(s3):
    """The resume fallback of :func:`available_checkpoint` on object storage (prefixes, not directories)."""
    from tuneclust.trainable import STATE_FILE, available_checkpoint

    fs, root = pafs.FileSystem.from_uri(s3)
    trial = f"{root}/fallback/trial_0"
    for i in (4, 5):
        with fs.open_output_stream(f"{trial}/checkpoint_00000{i}/{STATE_FILE}") as f:
            f.write(b"state")
    assert available_checkpoint(fs, f"{trial}/checkpoint_000004") == f"{trial}/checkpoint_000004"
    assert available_checkpoint(fs, f"{trial}/checkpoint_000003") == f"{trial}/checkpoint_000004"
    marker = fs.get_file_info(f"{trial}/checkpoint_000003/superseded.txt")
    assert marker.type == pafs.FileType.File  # Ray's later delete_dir of checkpoint 3 finds it
    fs.delete_dir(f"{trial}/checkpoint_000003")


@contextlib.contextmanager
def _token_head(tmp_path: Path, token: Path):
    """A one-node Ray (``ray start --head --block`` in its own session and temp dir) with token authentication on;
    yields its address. Started in a subprocess: Ray reads RAY_AUTH_MODE once per process, and this one's Ray
    settings were fixed by the tests before."""
    import shutil
    import tempfile

    from conftest import free_port

    port, tmp = (
        free_port(),
        tempfile.mkdtemp(prefix="tk", dir="/tmp"),
    )  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(tmp_path)}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={tmp}"]  # fmt: skip
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 90
        while time.time() < deadline and head.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert head.poll() is None, "ray start --head failed"
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow  # its own one-node Ray with token authentication on: ~40 s
def test_a_driver_without_the_clusters_token_is_refused_in_one_line(s3, tmp_path):
    # a driver without the token of a cluster that uses token authentication (another HOME, no RAY_AUTH_TOKEN*)
    # used to print a line per connection attempt from Ray's core, then "Failed to connect to Ray cluster at ..."
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    spec = _spec(tmp_path, "auth", epochs=1, taus=[1.0])
    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("RAY_AUTH")}
    with _token_head(tmp_path, token) as address:
        for extra in ({}, {"RAY_AUTH_MODE": "token"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}):
            proc = subprocess.run(
                _sweep_cmd(spec, address, s3), env={**env, **extra}, cwd=tmp_path / "work",
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (extra, proc.stderr[-2000:])
            assert f"could not connect to the Ray cluster at {address}" in lines[0]
            assert "RAY_AUTH_TOKEN" in lines[0], lines[0]  # says how to give the token
    fs, path = pafs.FileSystem.from_uri(s3)
    assert fs.get_file_info(f"{path}/auth").type == pafs.FileType.NotFound  # nothing written
