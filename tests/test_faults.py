"""Bad input and faults (issue 13): a fuzz test of ``validate`` over mutated shipped specs, and start checks."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from conftest import free_port

from tuneclust.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
NUMBER = re.compile(rb"(?<![\w.])\d+(\.\d+)?(?![\w.])")
KEY = re.compile(rb"^(\s*)([a-z_]+):", re.M)


def _sub_random(rng: random.Random, pattern: re.Pattern, data: bytes, new: bytes) -> bytes:
    hits = list(pattern.finditer(data))
    if not hits:
        return data + b"\nx: " + new
    m = rng.choice(hits)
    return data[: m.start()] + new + data[m.end() :]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random mutation of a spec's bytes (the kinds of bad input issue 13 found)."""
    kind = rng.randrange(16)
    pos = rng.randrange(len(data))
    if kind == 0:  # byte flip
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :]
    if kind == 1:  # a byte that is not UTF-8
        return data[:pos] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE])]) + data[pos:]
    if kind == 2:
        return data.decode("utf-8").encode(rng.choice(["utf-16", "utf-32", "latin-1"]), "replace")
    if kind == 3:  # deep nesting
        n = rng.choice([40, 500, 3000])
        return data + b"\nx: " + (b"[" if rng.random() < 0.5 else b"{a: ") * n
    if kind == 4:  # duplicate key
        keys = KEY.findall(data)
        indent, key = rng.choice(keys) if keys else (b"", b"name")
        return data.replace(indent + key + b":", indent + key + b": 1\n" + indent + key + b":", 1)
    if kind == 5:  # NaN / inf in a number field
        return _sub_random(rng, NUMBER, data, rng.choice([b".nan", b".inf", b"-.inf", b".NaN"]))
    if kind == 6:  # huge integers
        return _sub_random(
            rng, NUMBER, data, rng.choice([b"1" + b"0" * 30, b"9223372036854775808", b"9" * 5000])
        )
    if kind == 7:  # wrong types
        return _sub_random(
            rng, NUMBER, data, rng.choice([b"'15'", b"true", b"[1, 2]", b"{a: 1}", b"null", b"~"])
        )
    if kind == 8:  # drop a line
        lines = data.split(b"\n")
        del lines[rng.randrange(len(lines))]
        return b"\n".join(lines)
    if kind == 9:  # rename a key
        return _sub_random(
            rng, KEY, data, b"\n" + rng.choice([b"nmae", b"epoch", b"serach", b"x" * 3000]) + b":"
        )
    if kind == 10:  # truncate
        return data[:pos]
    if kind == 11:  # tags
        tag = rng.choice(
            [b"!!binary aGk=", b"!!python/name:os.system", b"!!set {a}", b"!!timestamp 2001-12-14"]
        )
        return data.replace(b"name: ", b"name: " + tag + b" #", 1)
    if kind == 12:  # alias bomb
        bomb = b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
            b"a%d: &a%d [%s]\n" % (i, i, b", ".join([b"*a%d" % (i - 1)] * 9)) for i in range(1, 10)
        )
        return bomb + data
    if kind == 13:  # an overlong name or value
        return re.sub(rb"name: \S+", b"name: " + b"n" * rng.choice([101, 5000]), data, count=1)
    if kind == 14:  # random bytes spliced in
        return data[:pos] + rng.randbytes(rng.randrange(1, 20)) + data[pos:]
    return data[:pos] + rng.choice([b"\t", b"\x00", b"&", b"*", b"- ", b": ", b"%", b"\r", b"'"]) + data[pos:]


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_specs_never_traceback(tmp_path, capsys, monkeypatch, seed):
    """300 seeded mutations of the shipped specs: exit 0 or 2; on 2 exactly one line <= 300 chars; nothing written."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(seed)
    codes = {0: 0, 2: 0}
    for i in range(50):
        source = rng.choice(SHIPPED)
        data = mutate(rng, source.read_bytes())
        p = tmp_path / "spec.yaml"
        p.write_bytes(data)
        code = main(["validate", str(p), "--set", f"storage={tmp_path / 'runs'}"])
        out, err = capsys.readouterr()
        assert code in (0, 2), (seed, i, code)
        codes[code] += 1
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and len(lines[0]) <= 300, (seed, i, err[:2000])
            assert "unexpected" not in lines[0] and "Traceback" not in err, (seed, i, lines[0])
        else:
            assert out.count("\n") == 1 and err == "", (seed, i, out, err)
        assert sorted(os.listdir(tmp_path)) == ["spec.yaml"], (seed, i)
    assert codes[2] >= 25  # most mutations are bad input


SWEEP = """
name: {name}
method: idfd
data: {{name: digits, subsample: 200}}
budget: {{epochs: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 1}}
storage: {storage}
tracking: {{mlflow: {{uri: "{uri}"}}}}
"""


def _write_sweep(tmp_path: Path, uri: str, storage: Path, name: str = "s", extra: str = "") -> Path:
    p = tmp_path / f"sweep{len(list(tmp_path.glob('sweep*.yaml')))}.yaml"
    p.write_text(SWEEP.format(name=name, storage=storage, uri=uri) + extra)
    return p


def _start_fails(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and len(err[0]) <= 300, err


def test_start_checks_refuse_before_writing(tmp_path, capsys, monkeypatch):
    """Each start check: exit 2 with one line, before Ray starts, and nothing written anywhere."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (_write_sweep(tmp_path, uri, a_file), [], "is a file, expected a folder"),
        (_write_sweep(tmp_path, uri, Path("/proc/tuneclust")), [], "pseudo-filesystem"),
        (_write_sweep(tmp_path, uri, tmp_path / ("x" * 300)), [], "this filesystem allows"),
        (_write_sweep(tmp_path, f"sqlite:///{a_file}/m.db", tmp_path / "runs"), [], "cannot create"),
        (_write_sweep(tmp_path, uri, tmp_path / "runs"), ["--set", "resources.cpu=1000"], "resources.cpu"),
        (_write_sweep(tmp_path, uri, tmp_path / "runs"), ["--set", "resources.gpu=1"], "resources.gpu"),
        (
            _write_sweep(tmp_path, uri, tmp_path / "runs"),
            ["--address", f"127.0.0.1:{free_port()}"],
            "no Ray cluster",
        ),
    ]
    before = sorted(os.listdir(tmp_path))
    for spec, extra, expected in cases:
        _start_fails(capsys, ["sweep", str(spec), *extra], expected)
        assert sorted(os.listdir(tmp_path)) == before and not os.listdir(tmp_path / "db"), expected


def test_cluster_check_names_the_largest_node():
    from tuneclust.preflight import PreflightError, check_cluster
    from tuneclust.spec import validate_spec

    spec = validate_spec(
        {"name": "c", "method": "idfd", "budget": {"epochs": 1}, "resources": {"cpu": 8, "gpu": 1}}
    )
    nodes = [
        {"Alive": True, "Resources": {"CPU": 16.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    with pytest.raises(PreflightError, match="largest node has 16 CPU and 0 GPU"):
        check_cluster(spec, nodes)
    check_cluster(spec, [*nodes, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])


def _rows(sweep: Path) -> int:
    """Finished trials of a running sweep (its per-trial rows; the whole tables are written at the end)."""
    from tuneclust.tables import read_tables

    try:
        return len(read_tables(sweep)[0])
    except Exception:
        return 0


@pytest.mark.slow  # a driver in a subprocess, killed and resumed: over a minute (CI runs -m slow)
def test_ctrl_c_ends_honestly_and_resume_completes(tmp_path):
    """SIGINT after a trial finished: exit 130 naming --resume; MLflow parent and unfinished children KILLED;
    ``--resume`` completes every trial with every epoch recorded once and the parent's summary logged once."""
    import signal
    import subprocess
    import sys
    import time

    import mlflow
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = _write_sweep(tmp_path, uri, tmp_path / "runs", name="i")
    # 12 epochs: the two trials left after the first one take seconds even on an idle machine (actors are reused)
    p.write_text(
        p.read_text().replace("epochs: 1", "epochs: 12") + "search: {tau: {grid: [0.5, 1.0, 2.0]}}\n"
    )
    out = tmp_path / "runs" / "i"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(p), "--quiet", "--set", "max_concurrent=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _rows(out) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    line = next(ln for ln in err.splitlines() if ln.startswith("interrupted:"))
    assert "unfinished — resume with: python -m tuneclust sweep" in line and line.endswith("--resume"), line
    assert "--set max_concurrent=1" in line
    before = pd.read_parquet(out / "trials.parquet")
    assert 1 <= len(before) < 3
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("i")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "KILLED" and not parent.data.metrics
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children), [r.info.status for r in children]
    finished = set(before["trial_id"])
    for r in children:
        expected = "FINISHED" if r.data.tags["tuneclust.trial_id"] in finished else "KILLED"
        assert r.info.status == expected

    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 trials: 3 finished, 0 errored, 0 unfinished" in r.stdout
    after = pd.read_parquet(out / "trials.parquet")
    assert len(after) == 3 and (after["status"] == "TERMINATED").all()
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == tuple(range(1, 13))).all()
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED"
    assert len(client.get_metric_history(parent.info.run_id, "trials")) == 1
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc")]
        if run.info.run_id in {
            r.info.run_id for r in children if r.data.tags["tuneclust.trial_id"] in finished
        }:
            assert sorted(steps) == list(range(1, 13)), steps  # finished before Ctrl-C: not run again
        else:  # an epoch reported after the trial's last registered checkpoint is trained and logged again
            assert set(steps) == set(range(1, 13)), steps


def test_error_line_is_the_exception_not_its_last_line():
    from tuneclust.raycompat import error_line

    text = """Failure # 1 (occurred at 2026-11-23_21-00-00)
ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1, actor_id=x)
  File "/x/trainable.py", line 9, in train
    raise ValueError(msg)
ray.exceptions.RayTaskError(ValueError): ray::ImplicitFunc.train()
ValueError: Input X contains NaN.
KMeans does not accept missing values encoded as NaN natively. For supervised learning, you might want to
consider sklearn.ensemble.HistGradientBoostingClassifier and Regressor which accept missing values.
"""
    assert error_line(text) == "ValueError: Input X contains NaN."
    assert error_line("torch.OutOfMemoryError: " + "x" * 1000).startswith("OutOfMemoryError: xxx")
    assert len(error_line("RuntimeError: " + "x" * 1000)) == 300
    assert error_line("") == "trial failed (no error message recorded)"
